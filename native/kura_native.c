/*
 * kura's native chunking: FastCDC boundaries (exactly those of src/chunker/fastcdc.ts, which
 * stays the reference and is tested against this) and keyed BLAKE3 chunk IDs, a whole segment
 * per call. In JavaScript each chunk cost three calls into a hashing addon, which was most of a
 * nightly backup's time at 4 KiB chunks. The chunking thread cuts one segment while the main
 * thread hashes the one before, so the two cores share the work.
 *
 * cut(data, start, end, final, min, avg, max, maskS, maskL, gear, cuts) -> n
 *   chunks are cut from data[start..end) into cuts, (offset, length) pairs (offsets into data);
 *   gear is the repository's gear table (Int32Array(256)). With `final` the remainder becomes
 *   the last chunk; without, an unfinished chunk at the end (shorter than max) is left for the
 *   caller to carry into the next call.
 *
 * hashChunks(data, cuts, count, key, ids): the keyed BLAKE3 IDs of `count` chunks given as
 *   (offset, length) pairs, 32 bytes each into ids, hashed side by side (hash_batch).
 *
 * hashPrefixed(prefix, data, cuts, count, ids): the (unkeyed) BLAKE3 hashes of prefix || chunk for
 *   `count` chunks given as (offset, length) pairs, 32 bytes each into ids: the IDs of chunk list
 *   blocks (repository/chunklist.ts), a few thousand a snapshot.
 *
 * sealBlob(key, header, id, nonce, body) -> Buffer: header || nonce || AES-256-GCM of body with
 *   AAD header || id || the 16-byte tag: a chunk blob as format.md lays it out (crypto/blob.ts
 *   decides header and body). openBody(key, blob, headerLength, id) -> Buffer | null: the body
 *   of such a blob, null if it does not authenticate. OpenSSL is the one Node itself carries
 *   (its symbols are the node executable's); one cipher context per thread, no object per blob.
 *
 * deltaCompress(src, dict, level) -> Buffer | null: one zstd frame of src compressed against dict
 *   (the concatenated plaintexts of a delta's base chunks), decodable with dict as the dictionary
 *   of ZSTD_decompress_usingDict, as format.md's compression 2 says; null when dict begins with
 *   zstd's dictionary magic (a decoder would take it for a trained dictionary: no delta then).
 *   zstd is the version zstd-napi bundles (its sources are compiled in here), so frames are made
 *   and read by the same code.
 *
 * openBlobs(dataKey, idKey, blobs, ids, dicts) -> Promise<Buffer | number>: opens chunk blobs
 *   (format 1: decrypt, decompress, re-hash against the ID) on a thread of libuv's pool, the
 *   plaintexts back to back in one new Buffer, in order. blobs is an array of Buffers, ids their
 *   32-byte IDs side by side, dicts null or an array with, for each delta, its bases' plaintexts
 *   concatenated, or an array of them (at most 8) that the pool thread joins (anything for the
 *   others). Resolves with the Buffer, or when a blob does not
 *   open with index * 8 + reason (1 not a blob of format 1, 2 does not authenticate, 3 does not
 *   decompress to its length, 4 content does not match its ID, 5 a delta without its bases): the
 *   caller opens that blob again by itself for the full error. A restore runs two of these side
 *   by side while the main thread reads the next segment and writes the last one.
 *
 * sealWhole(dataKey, level, data, offsets, idx, ids, nonces, out, ends) -> Promise<number>: seals
 *   the chunks idx[k] (data[offsets[i]..offsets[i + 1]), ID ids[32i..]) as whole blobs (zstd at
 *   `level` when that makes them smaller, else as they are: BlobSealer's rule) with the nonces
 *   given, back to back into out, blob k ending at ends[k], on a thread of libuv's pool. A batch's
 *   seal worker starts two of these side by side. Resolves with -1, or the position k of the
 *   chunk that could not be sealed (out too small, zstd or OpenSSL failed): the caller seals the
 *   rest itself.
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "blake3.h"
#include "blake3_impl.h"
#define ZSTD_STATIC_LINKING_ONLY
#include "zstd.h"
#include "zstd_errors.h"
#include <openssl/evp.h>
#include <pthread.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

/* Fetch argc arguments; false (with a JS exception pending) if there are not exactly that many. */
static bool args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, const char *what) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != want) {
    napi_throw_error(env, "E_NATIVE", what);
    return false;
  }
  return true;
}

static bool typed(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *len) {
  napi_typedarray_type t;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &t, len, data, &ab, &off) != napi_ok) return false;
  return t == want || (want == napi_uint8_array && t == napi_uint8_clamped_array);
}

static bool u32(napi_env env, napi_value v, uint32_t *out) {
  return napi_get_value_uint32(env, v, out) == napi_ok;
}

/* Length of the chunk starting at p with n bytes available; 0 = needs more input. */
static inline size_t next_cut(const uint8_t *p, size_t n, bool final, uint32_t min, uint32_t avg, uint32_t max,
                              uint32_t maskS, uint32_t maskL, const uint32_t *G) {
  if (n <= min) return final ? n : 0;
  uint32_t h = 0;
  size_t end = n < avg ? n : avg;
  size_t j = min;
  for (; j < end; j++) {
    h = (h << 1) + G[p[j]];
    if ((h & maskS) == 0) return j + 1;
  }
  end = n < max ? n : max;
  for (; j < end; j++) {
    h = (h << 1) + G[p[j]];
    if ((h & maskL) == 0) return j + 1;
  }
  if (n >= max) return max;
  return final ? n : 0;
}

static napi_value cut(napi_env env, napi_callback_info info) {
  napi_value argv[11];
  if (!args(env, info, 11, argv, "kura_native.cut takes 11 arguments")) return NULL;
  uint8_t *data;
  uint32_t *cuts;
  int32_t *gear;
  size_t dataLen, cutsLen, gearLen;
  uint32_t start, end, min, avg, max, maskS, maskL;
  bool final;
  if (!typed(env, argv[0], napi_uint8_array, (void **)&data, &dataLen) || !u32(env, argv[1], &start) || !u32(env, argv[2], &end) ||
      napi_get_value_bool(env, argv[3], &final) != napi_ok || !u32(env, argv[4], &min) || !u32(env, argv[5], &avg) || !u32(env, argv[6], &max) ||
      !u32(env, argv[7], &maskS) || !u32(env, argv[8], &maskL) || !typed(env, argv[9], napi_int32_array, (void **)&gear, &gearLen) ||
      !typed(env, argv[10], napi_uint32_array, (void **)&cuts, &cutsLen)) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.cut: wrong argument types");
    return NULL;
  }
  if (gearLen != 256 || start > end || end > dataLen || !(min < avg && avg < max)) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.cut: argument out of range");
    return NULL;
  }
  const uint32_t *G = (const uint32_t *)gear;
  size_t cap = cutsLen / 2, n = 0, s = start;
  while (s < end && n < cap) {
    size_t len = next_cut(data + s, end - s, final, min, avg, max, maskS, maskL, G);
    if (len == 0) break;
    cuts[2 * n] = (uint32_t)s;
    cuts[2 * n + 1] = (uint32_t)len;
    n++;
    s += len;
  }
  if (n == cap && s < end && (final || end - s >= max)) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.cut: the cuts array is too small");
    return NULL;
  }
  napi_value out;
  if (napi_create_uint32(env, (uint32_t)n, &out) != napi_ok) return NULL;
  return out;
}

/*
 * Keyed BLAKE3 of many short messages at once. One message at a time, a 4 KiB chunk is only four
 * BLAKE3 chunks: the SIMD code hashes four lanes at best, and a message of 2 or 3 chunks mostly
 * one lane. Here the j-th full BLAKE3 chunk of every message (all but each message's last) is
 * hashed in one blake3_hash_many call across the messages, eight or sixteen lanes wide; each
 * message's last chunk and its parent nodes are then compressed one by one. The tree is the one
 * of the BLAKE3 specification (left subtree: the largest power of two of chunks short of all),
 * so the IDs are exactly those of blake3_hasher (tested against it). Messages of more than
 * BATCH_CHUNKS chunks go through blake3_hasher, which is wide on its own.
 */
#define BATCH_CHUNKS 16

/* The root (is_root) or subtree chaining value of the n chunk CVs at cvs. */
static void tree_cv(const uint8_t *cvs, size_t n, const uint32_t key[8], bool is_root, uint8_t out[32]) {
  if (n == 1) {
    memcpy(out, cvs, 32);
    return;
  }
  size_t left = 1;
  while (left * 2 < n) left *= 2;
  uint8_t block[BLAKE3_BLOCK_LEN];
  tree_cv(cvs, left, key, false, block);
  tree_cv(cvs + 32 * left, n - left, key, false, block + 32);
  uint32_t cv[8];
  memcpy(cv, key, 32);
  blake3_compress_in_place(cv, block, BLAKE3_BLOCK_LEN, 0, KEYED_HASH | PARENT | (is_root ? ROOT : 0));
  store_cv_words(out, cv);
}

/*
 * The CV of a message's last BLAKE3 chunk (chunk number counter, len 1..1024 bytes, or 0 for an
 * empty message), whose full blocks before the final one are already compressed into cv; the
 * root if it is the message's only chunk.
 */
static void finish_last_chunk(uint32_t cv[8], const uint8_t *p, size_t len, uint64_t counter, bool started, bool is_root, uint8_t out[32]) {
  uint8_t block[BLAKE3_BLOCK_LEN] = {0};
  memcpy(block, p, len);
  blake3_compress_in_place(cv, block, (uint8_t)len, counter, KEYED_HASH | (started ? 0 : CHUNK_START) | CHUNK_END | (is_root ? ROOT : 0));
  store_cv_words(out, cv);
}

/* A message's last BLAKE3 chunk: full blocks before its final block (a final block is 1..64 bytes). */
static inline size_t last_len(size_t len, size_t chunks) { return len - (chunks - 1) * BLAKE3_CHUNK_LEN; }
static inline size_t lead_blocks(size_t last) { return last == 0 ? 0 : (last - 1) / BLAKE3_BLOCK_LEN; }

static bool hash_batch(const uint8_t *data, const uint32_t *cuts, uint32_t count, const uint8_t *key, uint8_t *ids) {
  uint32_t key_words[8];
  load_key_words(key, key_words);
  uint8_t *cvs = malloc((size_t)count * BATCH_CHUNKS * 32);
  const uint8_t **inputs = malloc((size_t)count * sizeof(uint8_t *));
  uint32_t *who = malloc((size_t)count * sizeof(uint32_t));
  uint8_t *out = malloc((size_t)count * 32);
  if (!cvs || !inputs || !who || !out) {
    free(cvs), free(inputs), free(who), free(out);
    return false;
  }
  /* the j-th full chunk of every message that has more after it, in one call per j */
  for (size_t j = 0; j + 1 < BATCH_CHUNKS; j++) {
    size_t n = 0;
    for (uint32_t i = 0; i < count; i++) {
      size_t len = cuts[2 * i + 1];
      if (len > (j + 1) * BLAKE3_CHUNK_LEN && len <= BATCH_CHUNKS * BLAKE3_CHUNK_LEN) {
        inputs[n] = data + cuts[2 * i] + j * BLAKE3_CHUNK_LEN;
        who[n++] = i;
      }
    }
    if (n == 0) break;
    blake3_hash_many(inputs, n, BLAKE3_CHUNK_LEN / BLAKE3_BLOCK_LEN, key_words, j, false, KEYED_HASH, CHUNK_START, CHUNK_END, out);
    for (size_t k = 0; k < n; k++) memcpy(cvs + ((size_t)who[k] * BATCH_CHUNKS + j) * 32, out + 32 * k, 32);
  }
  /*
   * the full blocks of every message's last chunk before its final block, side by side for the
   * messages with the same chunk number and count of such blocks (grouped by a counting sort)
   */
  uint32_t groups[BATCH_CHUNKS * BATCH_CHUNKS + 1] = {0};
  for (uint32_t i = 0; i < count; i++) {
    size_t len = cuts[2 * i + 1];
    if (len > BATCH_CHUNKS * BLAKE3_CHUNK_LEN) continue;
    size_t chunks = len == 0 ? 1 : (len + BLAKE3_CHUNK_LEN - 1) / BLAKE3_CHUNK_LEN;
    groups[(chunks - 1) * BATCH_CHUNKS + lead_blocks(last_len(len, chunks)) + 1]++;
  }
  for (size_t g = 1; g <= BATCH_CHUNKS * BATCH_CHUNKS; g++) groups[g] += groups[g - 1];
  uint32_t fill[BATCH_CHUNKS * BATCH_CHUNKS];
  memcpy(fill, groups, sizeof fill);
  for (uint32_t i = 0; i < count; i++) {
    size_t len = cuts[2 * i + 1];
    if (len > BATCH_CHUNKS * BLAKE3_CHUNK_LEN) continue;
    size_t chunks = len == 0 ? 1 : (len + BLAKE3_CHUNK_LEN - 1) / BLAKE3_CHUNK_LEN;
    who[fill[(chunks - 1) * BATCH_CHUNKS + lead_blocks(last_len(len, chunks))]++] = i;
  }
  for (size_t g = 0; g < BATCH_CHUNKS * BATCH_CHUNKS; g++) {
    size_t from = groups[g], n = groups[g + 1] - from;
    size_t counter = g / BATCH_CHUNKS, blocks = g % BATCH_CHUNKS;
    for (size_t k = 0; k < n; k++) {
      uint32_t i = who[from + k];
      inputs[k] = data + cuts[2 * i] + counter * BLAKE3_CHUNK_LEN;
    }
    if (n > 0 && blocks > 0) blake3_hash_many(inputs, n, blocks, key_words, counter, false, KEYED_HASH, CHUNK_START, 0, out);
    for (size_t k = 0; k < n; k++) {
      uint32_t i = who[from + k];
      size_t len = cuts[2 * i + 1];
      uint32_t cv[8];
      if (blocks > 0) {
        for (int w = 0; w < 8; w++) cv[w] = load32(out + 32 * k + 4 * w);
      } else {
        memcpy(cv, key_words, 32);
      }
      const uint8_t *final = inputs[k] + blocks * BLAKE3_BLOCK_LEN;
      size_t finalLen = last_len(len, counter + 1) - blocks * BLAKE3_BLOCK_LEN;
      if (counter == 0) {
        finish_last_chunk(cv, final, finalLen, 0, blocks > 0, true, ids + 32 * (size_t)i);
      } else {
        uint8_t *mine = cvs + (size_t)i * BATCH_CHUNKS * 32;
        finish_last_chunk(cv, final, finalLen, counter, blocks > 0, false, mine + 32 * counter);
        tree_cv(mine, counter + 1, key_words, true, ids + 32 * (size_t)i);
      }
    }
  }
  for (uint32_t i = 0; i < count; i++) {
    size_t len = cuts[2 * i + 1];
    if (len <= BATCH_CHUNKS * BLAKE3_CHUNK_LEN) continue;
    blake3_hasher h;
    blake3_hasher_init_keyed(&h, key);
    blake3_hasher_update(&h, data + cuts[2 * i], len);
    blake3_hasher_finalize(&h, ids + 32 * (size_t)i, 32);
  }
  free(cvs), free(inputs), free(who), free(out);
  return true;
}

/* count (offset, length) pairs within cuts, each within data, and count IDs within ids; else a RangeError naming fn. */
static bool chunks_fit(napi_env env, const char *fn, const uint32_t *cuts, size_t cutsLen, uint32_t count, size_t dataLen, size_t idsLen) {
  char msg[96];
  if ((size_t)count * 2 > cutsLen || (size_t)count * 32 > idsLen) {
    snprintf(msg, sizeof msg, "kura_native.%s: argument out of range", fn);
    napi_throw_range_error(env, "E_NATIVE", msg);
    return false;
  }
  for (uint32_t i = 0; i < count; i++) {
    if ((uint64_t)cuts[2 * i] + cuts[2 * i + 1] > dataLen) {
      snprintf(msg, sizeof msg, "kura_native.%s: chunk out of range", fn);
      napi_throw_range_error(env, "E_NATIVE", msg);
      return false;
    }
  }
  return true;
}

static napi_value hash_chunks(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!args(env, info, 5, argv, "kura_native.hashChunks takes 5 arguments")) return NULL;
  uint8_t *data, *key, *ids;
  uint32_t *cuts;
  size_t dataLen, keyLen, idsLen, cutsLen;
  uint32_t count;
  if (!typed(env, argv[0], napi_uint8_array, (void **)&data, &dataLen) || !typed(env, argv[1], napi_uint32_array, (void **)&cuts, &cutsLen) ||
      !u32(env, argv[2], &count) || !typed(env, argv[3], napi_uint8_array, (void **)&key, &keyLen) ||
      !typed(env, argv[4], napi_uint8_array, (void **)&ids, &idsLen)) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.hashChunks: wrong argument types");
    return NULL;
  }
  if (keyLen != BLAKE3_KEY_LEN) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.hashChunks: argument out of range");
    return NULL;
  }
  if (!chunks_fit(env, "hashChunks", cuts, cutsLen, count, dataLen, idsLen)) return NULL;
  if (count > 0 && !hash_batch(data, cuts, count, key, ids)) {
    napi_throw_error(env, "E_NATIVE", "kura_native.hashChunks: out of memory");
    return NULL;
  }
  return NULL;
}

static napi_value hash_prefixed(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!args(env, info, 5, argv, "kura_native.hashPrefixed takes 5 arguments")) return NULL;
  uint8_t *prefix, *data, *ids;
  uint32_t *cuts;
  size_t prefixLen, dataLen, idsLen, cutsLen;
  uint32_t count;
  if (!typed(env, argv[0], napi_uint8_array, (void **)&prefix, &prefixLen) || !typed(env, argv[1], napi_uint8_array, (void **)&data, &dataLen) ||
      !typed(env, argv[2], napi_uint32_array, (void **)&cuts, &cutsLen) || !u32(env, argv[3], &count) || !typed(env, argv[4], napi_uint8_array, (void **)&ids, &idsLen)) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.hashPrefixed: wrong argument types");
    return NULL;
  }
  if (!chunks_fit(env, "hashPrefixed", cuts, cutsLen, count, dataLen, idsLen)) return NULL;
  blake3_hasher start;
  blake3_hasher_init(&start);
  blake3_hasher_update(&start, prefix, prefixLen);
  for (uint32_t i = 0; i < count; i++) {
    blake3_hasher h = start;
    blake3_hasher_update(&h, data + cuts[2 * i], cuts[2 * i + 1]);
    blake3_hasher_finalize(&h, ids + 32 * (size_t)i, 32);
  }
  return NULL;
}

/*
 * Deltas. zstd-napi can only load a dictionary for each delta the expensive way (a dictionary
 * object with tables sized for any input, built and copied per call: ~45 us a 4 KiB chunk against
 * 12 KiB of bases). Here the bases are referenced as the frame's prefix, with parameters for what
 * deltas are: the fast strategy, 7-byte minimum matches (a dump's rows share shorter strings
 * everywhere, longer ones only with their own old version), the window fitted to bases + chunk.
 * On a heavy night's deltas (7283 chunks of a tax recalculation, 4.8 KiB against 13 KiB of bases)
 * this measured 11 us a chunk and 1 977 448 bytes against 48 us and 1 995 997 bytes for level 6
 * through zstd-napi. Long-distance matching is on: the fast strategy keeps one position per hash,
 * and where a chunk repeats itself (blank-padded rows, the same few values) its own recent
 * positions overwrite those in the bases, so a row that moved is found only in pieces; the
 * long-distance matcher finds whole stretches of the old version. On an OLTP table's 118 KiB
 * chunk with a dozen rows changed: 954 -> 158 bytes (zstd's CLI with --patch-from: 162), 61 -> 124
 * us; on a 4 KiB chunk against 12 KiB of bases 44 -> 23 bytes, 8 -> 17 us. The frames are
 * ordinary zstd frames: readers need nothing new. Levels above 9 keep zstd's own parameters for
 * the level (slower, smaller).
 */
typedef struct {
  ZSTD_CCtx *cctx;
  EVP_CIPHER_CTX *enc, *dec;
} Instance;

static void free_instance(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  Instance *in = data;
  ZSTD_freeCCtx(in->cctx);
  EVP_CIPHER_CTX_free(in->enc);
  EVP_CIPHER_CTX_free(in->dec);
  free(in);
}

/* One compression and two cipher contexts per thread (each worker thread has its own env). */
static Instance *instance_of(napi_env env) {
  Instance *in = NULL;
  if (napi_get_instance_data(env, (void **)&in) == napi_ok && in) return in;
  in = calloc(1, sizeof *in);
  if (!in) return NULL;
  in->cctx = ZSTD_createCCtx();
  in->enc = EVP_CIPHER_CTX_new();
  in->dec = EVP_CIPHER_CTX_new();
  if (!in->cctx || !in->enc || !in->dec || EVP_EncryptInit_ex(in->enc, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
      EVP_DecryptInit_ex(in->dec, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 || napi_set_instance_data(env, in, free_instance, NULL) != napi_ok) {
    free_instance(env, in, NULL);
    return NULL;
  }
  return in;
}

static ZSTD_CCtx *cctx_of(napi_env env) {
  Instance *in = instance_of(env);
  return in ? in->cctx : NULL;
}

#define GCM_NONCE 12
#define GCM_TAG 16

static napi_value seal_blob(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!args(env, info, 5, argv, "kura_native.sealBlob takes 5 arguments")) return NULL;
  uint8_t *key, *header, *id, *nonce, *body;
  size_t keyLen, headerLen, idLen, nonceLen, bodyLen;
  if (!typed(env, argv[0], napi_uint8_array, (void **)&key, &keyLen) || !typed(env, argv[1], napi_uint8_array, (void **)&header, &headerLen) ||
      !typed(env, argv[2], napi_uint8_array, (void **)&id, &idLen) || !typed(env, argv[3], napi_uint8_array, (void **)&nonce, &nonceLen) ||
      !typed(env, argv[4], napi_uint8_array, (void **)&body, &bodyLen)) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.sealBlob: wrong argument types");
    return NULL;
  }
  if (keyLen != 32 || nonceLen != GCM_NONCE || bodyLen > INT32_MAX || headerLen > INT32_MAX) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.sealBlob: argument out of range");
    return NULL;
  }
  Instance *in = instance_of(env);
  napi_value buf;
  uint8_t *out;
  if (!in || napi_create_buffer(env, headerLen + GCM_NONCE + bodyLen + GCM_TAG, (void **)&out, &buf) != napi_ok) {
    napi_throw_error(env, "E_NATIVE", "kura_native.sealBlob: out of memory");
    return NULL;
  }
  memcpy(out, header, headerLen);
  memcpy(out + headerLen, nonce, GCM_NONCE);
  uint8_t *ct = out + headerLen + GCM_NONCE;
  int n = 0, m = 0;
  if (EVP_EncryptInit_ex(in->enc, NULL, NULL, key, nonce) != 1 || EVP_EncryptUpdate(in->enc, NULL, &n, header, (int)headerLen) != 1 ||
      EVP_EncryptUpdate(in->enc, NULL, &n, id, (int)idLen) != 1 || EVP_EncryptUpdate(in->enc, ct, &n, body, (int)bodyLen) != 1 ||
      EVP_EncryptFinal_ex(in->enc, ct + n, &m) != 1 || (size_t)(n + m) != bodyLen ||
      EVP_CIPHER_CTX_ctrl(in->enc, EVP_CTRL_GCM_GET_TAG, GCM_TAG, ct + bodyLen) != 1) {
    napi_throw_error(env, "E_NATIVE", "kura_native.sealBlob: encryption failed");
    return NULL;
  }
  return buf;
}

static napi_value open_body(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args(env, info, 4, argv, "kura_native.openBody takes 4 arguments")) return NULL;
  uint8_t *key, *blob, *id;
  size_t keyLen, blobLen, idLen;
  uint32_t headerLen;
  if (!typed(env, argv[0], napi_uint8_array, (void **)&key, &keyLen) || !typed(env, argv[1], napi_uint8_array, (void **)&blob, &blobLen) ||
      !u32(env, argv[2], &headerLen) || !typed(env, argv[3], napi_uint8_array, (void **)&id, &idLen)) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.openBody: wrong argument types");
    return NULL;
  }
  if (keyLen != 32 || blobLen < (size_t)headerLen + GCM_NONCE + GCM_TAG || blobLen > INT32_MAX) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.openBody: argument out of range");
    return NULL;
  }
  Instance *in = instance_of(env);
  size_t bodyLen = blobLen - headerLen - GCM_NONCE - GCM_TAG;
  napi_value buf;
  uint8_t *out;
  if (!in || napi_create_buffer(env, bodyLen, (void **)&out, &buf) != napi_ok) {
    napi_throw_error(env, "E_NATIVE", "kura_native.openBody: out of memory");
    return NULL;
  }
  const uint8_t *nonce = blob + headerLen, *ct = nonce + GCM_NONCE;
  uint8_t tag[GCM_TAG];
  memcpy(tag, blob + blobLen - GCM_TAG, GCM_TAG);
  int n = 0, m = 0;
  bool ok = EVP_DecryptInit_ex(in->dec, NULL, NULL, key, nonce) == 1 && EVP_DecryptUpdate(in->dec, NULL, &n, blob, (int)headerLen) == 1 &&
            EVP_DecryptUpdate(in->dec, NULL, &n, id, (int)idLen) == 1 && EVP_DecryptUpdate(in->dec, out, &n, ct, (int)bodyLen) == 1 &&
            EVP_CIPHER_CTX_ctrl(in->dec, EVP_CTRL_GCM_SET_TAG, GCM_TAG, tag) == 1 && EVP_DecryptFinal_ex(in->dec, out + n, &m) == 1;
  napi_value none;
  if (!ok) return napi_get_null(env, &none) == napi_ok ? none : NULL;
  return buf;
}

static bool zok(size_t r) { return !ZSTD_isError(r); }

static napi_value delta_compress(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!args(env, info, 3, argv, "kura_native.deltaCompress takes 3 arguments")) return NULL;
  uint8_t *src, *dict;
  size_t srcLen, dictLen;
  uint32_t level;
  if (!typed(env, argv[0], napi_uint8_array, (void **)&src, &srcLen) || !typed(env, argv[1], napi_uint8_array, (void **)&dict, &dictLen) || !u32(env, argv[2], &level)) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.deltaCompress: wrong argument types");
    return NULL;
  }
  if (level < 1 || level > (uint32_t)ZSTD_maxCLevel()) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.deltaCompress: level out of range");
    return NULL;
  }
  if (dictLen >= 4 && load32(dict) == ZSTD_MAGIC_DICTIONARY) {
    napi_value none;
    return napi_get_null(env, &none) == napi_ok ? none : NULL;
  }
  ZSTD_CCtx *c = cctx_of(env);
  if (!c) {
    napi_throw_error(env, "E_NATIVE", "kura_native.deltaCompress: out of memory");
    return NULL;
  }
  bool ok = zok(ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters)) && zok(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level <= 9 ? 1 : (int)level));
  if (ok && level <= 9) {
    /* windowLog is the most allowed: zstd shrinks it (and hashLog) to the bases + chunk pledged;
       targetLength (the fast strategy's acceleration) stays level 1's, 0: measured best */
    int hashLog = 16; /* a slot per ~2 positions of bases + chunk (the fast strategy fills every 3rd), 64 Ki to 1 Mi slots */
    while (hashLog < 20 && ((size_t)1 << hashLog) < (dictLen + srcLen) / 2) hashLog++;
    ok = zok(ZSTD_CCtx_setParameter(c, ZSTD_c_strategy, ZSTD_fast)) && zok(ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, 23)) &&
         zok(ZSTD_CCtx_setParameter(c, ZSTD_c_hashLog, hashLog)) && zok(ZSTD_CCtx_setParameter(c, ZSTD_c_minMatch, 7)) &&
         zok(ZSTD_CCtx_setParameter(c, ZSTD_c_enableLongDistanceMatching, 1));
  }
  ok = ok && zok(ZSTD_CCtx_setPledgedSrcSize(c, srcLen)) && zok(ZSTD_CCtx_refPrefix_advanced(c, dict, dictLen, ZSTD_dct_rawContent));
  size_t cap = ZSTD_compressBound(srcLen);
  uint8_t *out = ok ? malloc(cap) : NULL;
  size_t n = out ? ZSTD_compress2(c, out, cap, src, srcLen) : 0;
  if (!out || ZSTD_isError(n)) {
    char msg[160];
    snprintf(msg, sizeof msg, "kura_native.deltaCompress: %s", out ? ZSTD_getErrorName(n) : "could not set up the compression");
    free(out);
    napi_throw_error(env, "E_NATIVE", msg);
    return NULL;
  }
  napi_value buf;
  napi_status st = napi_create_buffer_copy(env, n, out, NULL, &buf);
  free(out);
  return st == napi_ok ? buf : NULL;
}


/*
 * The zstd and cipher contexts of jobs on libuv's pool (openBlobs, sealWhole), kept from one
 * job to the next with zstd's workspace already faulted in (~1.3 MiB to compress at level 3). A
 * free list, not one set per pool thread: libuv runs a job on any of its (up to 16) threads, and
 * as many sets exist as jobs ever ran at once. Each context is made when a job first needs it.
 */
typedef struct JobCtx {
  EVP_CIPHER_CTX *enc, *dec;
  ZSTD_CCtx *cctx;
  ZSTD_DCtx *dctx;
  struct JobCtx *next;
} JobCtx;
static pthread_mutex_t jobCtxLock = PTHREAD_MUTEX_INITIALIZER;
static JobCtx *jobCtxFree;

static JobCtx *job_ctx_take(void) {
  pthread_mutex_lock(&jobCtxLock);
  JobCtx *c = jobCtxFree;
  if (c) jobCtxFree = c->next;
  pthread_mutex_unlock(&jobCtxLock);
  return c ? c : calloc(1, sizeof *c);
}

static void job_ctx_give(JobCtx *c) {
  pthread_mutex_lock(&jobCtxLock);
  c->next = jobCtxFree;
  jobCtxFree = c;
  pthread_mutex_unlock(&jobCtxLock);
}

/* An AES-256-GCM context for encrypting (or decrypting), made on first use; NULL when it cannot be. */
static EVP_CIPHER_CTX *job_cipher(EVP_CIPHER_CTX **slot, bool encrypt) {
  if (*slot) return *slot;
  EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
  if (x && (encrypt ? EVP_EncryptInit_ex(x, EVP_aes_256_gcm(), NULL, NULL, NULL) : EVP_DecryptInit_ex(x, EVP_aes_256_gcm(), NULL, NULL, NULL)) != 1) {
    EVP_CIPHER_CTX_free(x);
    x = NULL;
  }
  return *slot = x;
}

/* ---- openBlobs: a segment of a restore, opened off the main thread ---- */

#define BLOB_FORMAT 1
#define BLOB_HEADER 6
#define MAX_BLOB_PLAIN (64u << 20)
#define MAX_DICT_PARTS 8 /* a delta has at most 8 bases (format.md) */

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref keep; /* the argument array: its buffers stay alive while the work runs */
  napi_ref outRef;
  uint8_t key[32], idKey[32];
  uint32_t n;
  const uint8_t **blob;
  size_t *blobLen;
  /* blob i's dictionary: parts dictFirst[i] .. + dictCount[i] of part/partLen, concatenated */
  uint32_t *dictFirst, *dictCount;
  const uint8_t **part;
  size_t *partLen;
  uint32_t parts;
  const uint8_t *ids;
  uint8_t *out;
  size_t *outOff; /* n + 1 */
  int64_t bad; /* -1, or index * 8 + reason */
  bool rehash; /* re-hash each plaintext against its ID (false: the GCM tag alone, for a delta's bases) */
} OpenJob;

static void free_job(OpenJob *j) {
  free(j->blob);
  free(j->blobLen);
  free(j->dictFirst);
  free(j->dictCount);
  free(j->part);
  free(j->partLen);
  free(j->outOff);
  free(j);
}

static void open_execute(napi_env env, void *data) {
  (void)env;
  OpenJob *j = data;
  JobCtx *c = job_ctx_take();
  uint8_t *scratch = NULL, *joined = NULL;
  size_t scratchLen = 0, joinedLen = 0;
  j->bad = -1;
  EVP_CIPHER_CTX *dec = c ? job_cipher(&c->dec, false) : NULL;
  ZSTD_DCtx *dctx = c ? (c->dctx ? c->dctx : (c->dctx = ZSTD_createDCtx())) : NULL;
  if (!dec || !dctx) {
    j->bad = 2; /* reported for the first blob: the caller's own open says what is wrong */
    if (c) job_ctx_give(c);
    return;
  }
  for (uint32_t i = 0; i < j->n; i++) {
    const uint8_t *b = j->blob[i];
    size_t len = j->blobLen[i];
    uint8_t comp = b[1];
    size_t hdr = comp == 2 ? BLOB_HEADER + 1 + (size_t)b[BLOB_HEADER] * 32 : BLOB_HEADER;
    size_t bodyLen = len - hdr - GCM_NONCE - GCM_TAG; /* the header was checked in open_blobs */
    size_t plainLen = j->outOff[i + 1] - j->outOff[i];
    uint8_t *dst = j->out + j->outOff[i];
    const uint8_t *id = j->ids + 32 * (size_t)i;
    uint8_t *body;
    if (comp == 0) {
      if (bodyLen != plainLen) { j->bad = (int64_t)i * 8 + 3; break; }
      body = dst;
    } else {
      if (scratchLen < bodyLen) {
        free(scratch);
        scratchLen = bodyLen < 65536 ? 65536 : bodyLen;
        scratch = malloc(scratchLen);
        if (!scratch) { scratchLen = 0; j->bad = (int64_t)i * 8 + 3; break; }
      }
      body = scratch;
    }
    const uint8_t *nonce = b + hdr, *ct = nonce + GCM_NONCE;
    uint8_t tag[GCM_TAG];
    memcpy(tag, b + len - GCM_TAG, GCM_TAG);
    int n = 0, m = 0;
    bool ok = EVP_DecryptInit_ex(dec, NULL, NULL, j->key, nonce) == 1 && EVP_DecryptUpdate(dec, NULL, &n, b, (int)hdr) == 1 &&
              EVP_DecryptUpdate(dec, NULL, &n, id, 32) == 1 && (bodyLen == 0 || EVP_DecryptUpdate(dec, body, &n, ct, (int)bodyLen) == 1) &&
              EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_GCM_SET_TAG, GCM_TAG, tag) == 1 && EVP_DecryptFinal_ex(dec, body + n, &m) == 1;
    if (!ok) { j->bad = (int64_t)i * 8 + 2; break; }
    if (comp == 1) {
      size_t r = ZSTD_decompressDCtx(dctx, dst, plainLen, body, bodyLen);
      if (ZSTD_isError(r) || r != plainLen) { j->bad = (int64_t)i * 8 + 3; break; }
    } else if (comp == 2) {
      if (j->dictCount[i] == 0) { j->bad = (int64_t)i * 8 + 5; break; }
      /* bases given as pieces are joined here, off the main thread */
      const uint8_t *dict = j->part[j->dictFirst[i]];
      size_t dictLen = j->partLen[j->dictFirst[i]];
      if (j->dictCount[i] > 1) {
        dictLen = 0;
        for (uint32_t k = 0; k < j->dictCount[i]; k++) dictLen += j->partLen[j->dictFirst[i] + k];
        if (joinedLen < dictLen) {
          free(joined);
          joinedLen = dictLen;
          joined = malloc(joinedLen);
          if (!joined) { joinedLen = 0; j->bad = (int64_t)i * 8 + 5; break; }
        }
        size_t at = 0;
        for (uint32_t k = 0; k < j->dictCount[i]; k++) {
          memcpy(joined + at, j->part[j->dictFirst[i] + k], j->partLen[j->dictFirst[i] + k]);
          at += j->partLen[j->dictFirst[i] + k];
        }
        dict = joined;
      }
      size_t r = ZSTD_decompress_usingDict(dctx, dst, plainLen, body, bodyLen, dict, dictLen);
      if (ZSTD_isError(r) || r != plainLen) { j->bad = (int64_t)i * 8 + 3; break; }
    }
    if (!j->rehash) continue;
    blake3_hasher h;
    blake3_hasher_init_keyed(&h, j->idKey);
    blake3_hasher_update(&h, dst, plainLen);
    uint8_t got[32];
    blake3_hasher_finalize(&h, got, 32);
    if (memcmp(got, id, 32) != 0) { j->bad = (int64_t)i * 8 + 4; break; }
  }
  free(scratch);
  free(joined);
  job_ctx_give(c);
}

static void open_complete(napi_env env, napi_status status, void *data) {
  OpenJob *j = data;
  napi_value result = NULL;
  if (status == napi_ok && j->bad < 0) napi_get_reference_value(env, j->outRef, &result);
  else napi_create_int64(env, status == napi_ok ? j->bad : 2, &result);
  napi_resolve_deferred(env, j->deferred, result);
  napi_delete_reference(env, j->keep);
  napi_delete_reference(env, j->outRef);
  napi_delete_async_work(env, j->work);
  free_job(j);
}

static napi_value open_blobs(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  size_t argc = 7;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.openBlobs takes 5 to 7 arguments");
    return NULL;
  }
  /* the 7th, optional: false to skip the re-hash (the tag still authenticates every blob) */
  bool rehash = true;
  napi_valuetype rt = napi_undefined;
  if (argc >= 7 && napi_typeof(env, argv[6], &rt) == napi_ok && rt == napi_boolean) napi_get_value_bool(env, argv[6], &rehash);
  /* the 6th, optional: a buffer to open into (at least the plaintexts' total), reused by the caller */
  napi_valuetype ot = napi_undefined;
  if (argc >= 6 && napi_typeof(env, argv[5], &ot) != napi_ok) return NULL;
  uint8_t *given = NULL;
  size_t givenLen = 0;
  if (ot != napi_undefined && ot != napi_null && !typed(env, argv[5], napi_uint8_array, (void **)&given, &givenLen)) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.openBlobs: the output is not a Buffer");
    return NULL;
  }
  uint8_t *key, *idKey, *ids;
  size_t keyLen, idKeyLen, idsLen;
  uint32_t n = 0;
  bool isArr = false, dictArr = false;
  napi_valuetype dt;
  if (!typed(env, argv[0], napi_uint8_array, (void **)&key, &keyLen) || !typed(env, argv[1], napi_uint8_array, (void **)&idKey, &idKeyLen) ||
      napi_is_array(env, argv[2], &isArr) != napi_ok || !isArr || napi_get_array_length(env, argv[2], &n) != napi_ok ||
      !typed(env, argv[3], napi_uint8_array, (void **)&ids, &idsLen) || napi_typeof(env, argv[4], &dt) != napi_ok ||
      (dt != napi_null && (napi_is_array(env, argv[4], &dictArr) != napi_ok || !dictArr))) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.openBlobs: wrong argument types");
    return NULL;
  }
  if (keyLen != 32 || idKeyLen != 32 || idsLen != 32 * (size_t)n) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.openBlobs: argument out of range");
    return NULL;
  }
  OpenJob *j = calloc(1, sizeof *j);
  if (j) {
    j->n = n;
    j->blob = calloc(n ? n : 1, sizeof *j->blob);
    j->blobLen = calloc(n ? n : 1, sizeof *j->blobLen);
    j->dictFirst = calloc(n ? n : 1, sizeof *j->dictFirst);
    j->dictCount = calloc(n ? n : 1, sizeof *j->dictCount);
    j->part = calloc(n ? (size_t)n * MAX_DICT_PARTS : 1, sizeof *j->part);
    j->partLen = calloc(n ? (size_t)n * MAX_DICT_PARTS : 1, sizeof *j->partLen);
    j->outOff = calloc((size_t)n + 1, sizeof *j->outOff);
  }
  if (!j || !j->blob || !j->blobLen || !j->dictFirst || !j->dictCount || !j->part || !j->partLen || !j->outOff) {
    if (j) free_job(j);
    napi_throw_error(env, "E_NATIVE", "kura_native.openBlobs: out of memory");
    return NULL;
  }
  memcpy(j->key, key, 32);
  memcpy(j->idKey, idKey, 32);
  j->rehash = rehash;
  j->ids = ids;
  int64_t bad = -1;
  size_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    uint8_t *b;
    size_t len;
    if (napi_get_element(env, argv[2], i, &el) != napi_ok || !typed(env, el, napi_uint8_array, (void **)&b, &len)) {
      free_job(j);
      napi_throw_type_error(env, "E_NATIVE", "kura_native.openBlobs: a blob is not a Buffer");
      return NULL;
    }
    j->blob[i] = b;
    j->blobLen[i] = len;
    uint32_t plain = 0;
    size_t hdr = 0;
    if (len >= BLOB_HEADER + 1 && b[0] == BLOB_FORMAT && b[1] <= 2) {
      hdr = b[1] == 2 ? BLOB_HEADER + 1 + (size_t)b[BLOB_HEADER] * 32 : BLOB_HEADER;
      plain = (uint32_t)b[2] | (uint32_t)b[3] << 8 | (uint32_t)b[4] << 16 | (uint32_t)b[5] << 24;
    }
    if (hdr == 0 || (b[1] == 2 && (b[BLOB_HEADER] == 0 || b[BLOB_HEADER] > 8)) || len < hdr + GCM_NONCE + GCM_TAG || len > INT32_MAX || plain > MAX_BLOB_PLAIN) {
      bad = (int64_t)i * 8 + 1;
      plain = 0;
    }
    if (bad < 0) total += plain;
    j->outOff[i + 1] = total;
    if (bad < 0 && b[1] == 2 && dictArr) {
      /* a delta's dictionary: one Buffer, or an array of its bases' Buffers to join */
      napi_value d = NULL, el2 = NULL;
      uint8_t *dp;
      size_t dl;
      bool pieces = false;
      uint32_t m = 1;
      j->dictFirst[i] = j->parts;
      if (napi_get_element(env, argv[4], i, &d) == napi_ok && napi_is_array(env, d, &pieces) == napi_ok && pieces && napi_get_array_length(env, d, &m) != napi_ok) m = 0;
      for (uint32_t k = 0; k < m && m <= MAX_DICT_PARTS; k++) {
        if (pieces ? (napi_get_element(env, d, k, &el2) != napi_ok || !typed(env, el2, napi_uint8_array, (void **)&dp, &dl)) : !typed(env, d, napi_uint8_array, (void **)&dp, &dl)) break;
        j->part[j->parts] = dp;
        j->partLen[j->parts++] = dl;
        j->dictCount[i]++;
      }
      if (j->dictCount[i] != m) j->dictCount[i] = 0; /* reported as a delta without its bases */
    }
    if (bad >= 0) break;
  }
  napi_value promise, keep, outBuf, name;
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok) {
    free_job(j);
    return NULL;
  }
  if (bad >= 0) {
    napi_value r;
    napi_create_int64(env, bad, &r);
    napi_resolve_deferred(env, j->deferred, r);
    free_job(j);
    return promise;
  }
  bool made;
  if (given && givenLen >= total) {
    j->out = given;
    outBuf = argv[5];
    made = true;
  } else made = napi_create_buffer(env, total, (void **)&j->out, &outBuf) == napi_ok;
  if (!made || napi_create_array_with_length(env, 5, &keep) != napi_ok) {
    free_job(j);
    napi_throw_error(env, "E_NATIVE", "kura_native.openBlobs: out of memory");
    return NULL;
  }
  for (uint32_t i = 0; i < 5; i++) napi_set_element(env, keep, i, argv[i]);
  if (napi_create_reference(env, keep, 1, &j->keep) != napi_ok || napi_create_reference(env, outBuf, 1, &j->outRef) != napi_ok ||
      napi_create_string_utf8(env, "kura_native.openBlobs", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, open_execute, open_complete, j, &j->work) != napi_ok || napi_queue_async_work(env, j->work) != napi_ok) {
    napi_throw_error(env, "E_NATIVE", "kura_native.openBlobs: could not start the work");
    return NULL;
  }
  return promise;
}

/* ---- sealWhole: chunks stored whole (compression 0 or 1), sealed off the main thread ---- */

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref keep; /* the argument array: its buffers stay alive while the work runs */
  uint8_t key[32];
  int level;
  const uint8_t *data;
  const uint32_t *offsets, *idx;
  uint32_t count;
  const uint8_t *ids, *nonces;
  uint8_t *out;
  size_t outLen;
  uint32_t *ends;
  int64_t bad; /* -1, or the position in idx of the chunk that could not be sealed */
} SealJob;

static void seal_run(SealJob *j, JobCtx *c);

static void seal_execute(napi_env env, void *data) {
  (void)env;
  SealJob *j = data;
  j->bad = 0;
  JobCtx *c = job_ctx_take();
  if (!c) return;
  seal_run(j, c);
  job_ctx_give(c);
}

static void seal_run(SealJob *j, JobCtx *c) {
  EVP_CIPHER_CTX *enc = job_cipher(&c->enc, true);
  ZSTD_CCtx *cctx = j->level > 0 ? (c->cctx ? c->cctx : (c->cctx = ZSTD_createCCtx())) : NULL;
  if (!enc || (j->level > 0 && !cctx)) return;
  if (cctx && (!zok(ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters)) || !zok(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, j->level)))) return;
  /* up to level 4 (zstd's fast and double-fast strategies) a 128 KiB block is not split in front:
     a chunk of dumped rows compressed 15 % faster (0.29 against 0.34 s of CPU for 488 MB) to the
     same bytes, one of binaries and documents 0.09 % larger (measured, zstd 1.5.7) */
#ifdef ZSTD_c_blockSplitterLevel
  if (cctx && j->level <= 4 && !zok(ZSTD_CCtx_setParameter(cctx, ZSTD_c_blockSplitterLevel, 1))) return;
#endif
  size_t at = 0;
  for (uint32_t k = 0; k < j->count; k++) {
    j->bad = k;
    uint32_t i = j->idx[k];
    const uint8_t *plain = j->data + j->offsets[i];
    size_t plainLen = j->offsets[i + 1] - j->offsets[i];
    if (at + BLOB_HEADER + GCM_NONCE + plainLen + GCM_TAG > j->outLen) return;
    uint8_t *b = j->out + at, *body = b + BLOB_HEADER + GCM_NONCE;
    size_t bodyLen = plainLen;
    uint8_t comp = 0;
    /* as BlobSealer: zstd when the frame is smaller than the chunk, the chunk as it is otherwise */
    if (cctx && plainLen > 0) {
      size_t z = ZSTD_compress2(cctx, body, plainLen - 1, plain, plainLen);
      if (!ZSTD_isError(z)) {
        comp = 1;
        bodyLen = z;
      } else if (ZSTD_getErrorCode(z) != ZSTD_error_dstSize_tooSmall) return;
    }
    if (comp == 0) memcpy(body, plain, plainLen);
    b[0] = BLOB_FORMAT;
    b[1] = comp;
    b[2] = (uint8_t)plainLen, b[3] = (uint8_t)(plainLen >> 8), b[4] = (uint8_t)(plainLen >> 16), b[5] = (uint8_t)(plainLen >> 24);
    memcpy(b + BLOB_HEADER, j->nonces + GCM_NONCE * (size_t)k, GCM_NONCE);
    int n = 0, m = 0;
    if (EVP_EncryptInit_ex(enc, NULL, NULL, j->key, b + BLOB_HEADER) != 1 || EVP_EncryptUpdate(enc, NULL, &n, b, BLOB_HEADER) != 1 ||
        EVP_EncryptUpdate(enc, NULL, &n, j->ids + 32 * (size_t)i, 32) != 1 || (n = 0, bodyLen > 0 && EVP_EncryptUpdate(enc, body, &n, body, (int)bodyLen) != 1) ||
        EVP_EncryptFinal_ex(enc, body + n, &m) != 1 || EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_GCM_GET_TAG, GCM_TAG, body + bodyLen) != 1)
      return;
    at += BLOB_HEADER + GCM_NONCE + bodyLen + GCM_TAG;
    j->ends[k] = (uint32_t)at;
  }
  j->bad = -1;
}

static void seal_complete(napi_env env, napi_status status, void *data) {
  SealJob *j = data;
  napi_value result = NULL;
  napi_create_int64(env, status == napi_ok ? j->bad : 0, &result);
  napi_resolve_deferred(env, j->deferred, result);
  napi_delete_reference(env, j->keep);
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value seal_whole(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  if (!args(env, info, 9, argv, "kura_native.sealWhole takes 9 arguments")) return NULL;
  uint8_t *key, *data, *ids, *nonces, *out;
  uint32_t *offsets, *idx, *ends, level;
  size_t keyLen, dataLen, idsLen, noncesLen, outLen, offLen, idxLen, endsLen;
  if (!typed(env, argv[0], napi_uint8_array, (void **)&key, &keyLen) || !u32(env, argv[1], &level) || !typed(env, argv[2], napi_uint8_array, (void **)&data, &dataLen) ||
      !typed(env, argv[3], napi_uint32_array, (void **)&offsets, &offLen) || !typed(env, argv[4], napi_uint32_array, (void **)&idx, &idxLen) ||
      !typed(env, argv[5], napi_uint8_array, (void **)&ids, &idsLen) || !typed(env, argv[6], napi_uint8_array, (void **)&nonces, &noncesLen) ||
      !typed(env, argv[7], napi_uint8_array, (void **)&out, &outLen) || !typed(env, argv[8], napi_uint32_array, (void **)&ends, &endsLen)) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.sealWhole: wrong argument types");
    return NULL;
  }
  bool ok = keyLen == 32 && level <= (uint32_t)ZSTD_maxCLevel() && offLen >= 1 && idsLen == 32 * (offLen - 1) && noncesLen == GCM_NONCE * idxLen && endsLen == idxLen;
  for (size_t k = 0; ok && k < idxLen; k++) ok = idx[k] < offLen - 1 && offsets[idx[k]] <= offsets[idx[k] + 1] && offsets[idx[k] + 1] <= dataLen && offsets[idx[k] + 1] - offsets[idx[k]] <= MAX_BLOB_PLAIN;
  if (!ok) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.sealWhole: argument out of range");
    return NULL;
  }
  SealJob *j = calloc(1, sizeof *j);
  napi_value promise, keep, name;
  if (!j || napi_create_promise(env, &j->deferred, &promise) != napi_ok || napi_create_array_with_length(env, 9, &keep) != napi_ok) {
    free(j);
    napi_throw_error(env, "E_NATIVE", "kura_native.sealWhole: out of memory");
    return NULL;
  }
  memcpy(j->key, key, 32);
  j->level = (int)level;
  j->data = data, j->offsets = offsets, j->idx = idx, j->count = (uint32_t)idxLen;
  j->ids = ids, j->nonces = nonces, j->out = out, j->outLen = outLen, j->ends = ends;
  for (uint32_t i = 0; i < 9; i++) napi_set_element(env, keep, i, argv[i]);
  if (napi_create_reference(env, keep, 1, &j->keep) != napi_ok || napi_create_string_utf8(env, "kura_native.sealWhole", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, seal_execute, seal_complete, j, &j->work) != napi_ok || napi_queue_async_work(env, j->work) != napi_ok) {
    napi_throw_error(env, "E_NATIVE", "kura_native.sealWhole: could not start the work");
    return NULL;
  }
  return promise;
}

/* trimMalloc(): returns the free pages of every malloc arena to the system (malloc_trim(0) releases
 * whole free pages inside the arenas too, not only their tops); true if it released any. */
static napi_value trim_malloc(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value r;
#if defined(__GLIBC__)
  napi_get_boolean(env, malloc_trim(0) == 1, &r);
#else
  napi_get_boolean(env, false, &r);
#endif
  return r;
}

/* fixMallocMmapThreshold(bytes): blocks from `bytes` up are mapped on their own and unmapped when
 * freed, for the rest of the process. glibc otherwise raises that threshold to the size of each
 * mapped block freed (up to 32 MiB), and later blocks below it land in the arenas; true if set. */
static napi_value fix_malloc_mmap_threshold(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], r;
  double bytes = 0;
  bool ok = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == 1 && napi_get_value_double(env, argv[0], &bytes) == napi_ok && bytes >= 0 && bytes <= 32.0 * 1024 * 1024) {
#if defined(__GLIBC__)
    ok = mallopt(M_MMAP_THRESHOLD, (int)bytes) == 1;
#endif
  }
  napi_get_boolean(env, ok, &r);
  return r;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
#if defined(__GLIBC__)
  /* Two malloc arenas for the process. glibc gives threads that allocate at once arenas of their
   * own, up to eight per core, each kept at its high-water mark; kura runs 16 threads in libuv's
   * pool beside V8's. bin/kura loads the addon before those threads first allocate. Measured on
   * a restore of 485 MiB of 256 KiB deltas (3 runs each): peak RSS 158-168 MiB against 196-202,
   * 1.16-1.24 s against 1.38-1.52 s; a night's backup of the same 190-191 MiB against 193-195. */
  mallopt(M_ARENA_MAX, 2);
#endif
  if (napi_create_function(env, "cut", NAPI_AUTO_LENGTH, cut, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "cut", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "hashChunks", NAPI_AUTO_LENGTH, hash_chunks, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "hashChunks", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "hashPrefixed", NAPI_AUTO_LENGTH, hash_prefixed, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "hashPrefixed", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "sealBlob", NAPI_AUTO_LENGTH, seal_blob, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "sealBlob", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "openBody", NAPI_AUTO_LENGTH, open_body, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "openBody", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "deltaCompress", NAPI_AUTO_LENGTH, delta_compress, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "deltaCompress", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "openBlobs", NAPI_AUTO_LENGTH, open_blobs, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "openBlobs", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "sealWhole", NAPI_AUTO_LENGTH, seal_whole, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "sealWhole", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "trimMalloc", NAPI_AUTO_LENGTH, trim_malloc, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "trimMalloc", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "fixMallocMmapThreshold", NAPI_AUTO_LENGTH, fix_malloc_mmap_threshold, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "fixMallocMmapThreshold", fn) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
