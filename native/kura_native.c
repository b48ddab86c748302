/*
 * kura's native chunking: FastCDC boundaries (exactly those of src/chunker/fastcdc.ts, which
 * stays the reference and is tested against this) and keyed BLAKE3 chunk IDs, for a whole
 * buffer in one call. In JavaScript each chunk cost three calls into a hashing addon, which
 * was most of a nightly backup's time at 4 KiB chunks.
 *
 * cutAndHash(data, start, end, final, min, avg, max, maskS, maskL, gear, key, cuts, ids) -> n
 *   data   Uint8Array; chunks are cut from data[start..end)
 *   final  true at the end of the input: the remainder becomes the last chunk
 *   gear   Int32Array(256), the repository's gear table; key: Uint8Array(32), the ID key
 *   cuts   Uint32Array receiving (offset, length) pairs (offsets into data)
 *   ids    Uint8Array receiving 32 bytes per chunk
 * Returns the number of chunks. Without `final`, an unfinished chunk at the end is left
 * (it is shorter than max); the caller carries it into the next call. An empty `key` only cuts
 * (`ids` is then not written).
 *
 * hashChunks(data, cuts, count, key, ids): the keyed BLAKE3 IDs of `count` chunks given as
 * (offset, length) pairs, into ids[32*i..]. The chunking thread cuts while the main thread
 * hashes what was cut before, so the two cores share the work.
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "blake3.h"

#define CHECK(call)                                                         \
  do {                                                                      \
    if ((call) != napi_ok) {                                                \
      napi_throw_error(env, "E_NATIVE", "kura_native: bad arguments");      \
      return NULL;                                                          \
    }                                                                       \
  } while (0)

static bool typed(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *len) {
  napi_typedarray_type t;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &t, len, data, &ab, &off) != napi_ok) return false;
  return t == want || (want == napi_uint8_array && t == napi_uint8_clamped_array);
}

/* Length of the chunk starting at p with n bytes available; 0 = needs more input. */
static inline size_t cut(const uint8_t *p, size_t n, bool final, uint32_t min, uint32_t avg, uint32_t max,
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

static napi_value cut_and_hash(napi_env env, napi_callback_info info) {
  size_t argc = 13;
  napi_value argv[13];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 13) {
    napi_throw_error(env, "E_NATIVE", "kura_native.cutAndHash takes 13 arguments");
    return NULL;
  }
  uint8_t *data, *key, *ids;
  uint32_t *cuts;
  int32_t *gear;
  size_t dataLen, keyLen, idsLen, cutsLen, gearLen;
  uint32_t start, end, min, avg, max, maskS, maskL;
  bool final;
  if (!typed(env, argv[0], napi_uint8_array, (void **)&data, &dataLen) || !typed(env, argv[9], napi_int32_array, (void **)&gear, &gearLen) ||
      !typed(env, argv[10], napi_uint8_array, (void **)&key, &keyLen) || !typed(env, argv[11], napi_uint32_array, (void **)&cuts, &cutsLen) ||
      !typed(env, argv[12], napi_uint8_array, (void **)&ids, &idsLen)) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.cutAndHash: wrong typed array");
    return NULL;
  }
  CHECK(napi_get_value_uint32(env, argv[1], &start));
  CHECK(napi_get_value_uint32(env, argv[2], &end));
  CHECK(napi_get_value_bool(env, argv[3], &final));
  CHECK(napi_get_value_uint32(env, argv[4], &min));
  CHECK(napi_get_value_uint32(env, argv[5], &avg));
  CHECK(napi_get_value_uint32(env, argv[6], &max));
  CHECK(napi_get_value_uint32(env, argv[7], &maskS));
  CHECK(napi_get_value_uint32(env, argv[8], &maskL));
  bool hash = keyLen != 0;
  if (gearLen != 256 || (hash && keyLen != BLAKE3_KEY_LEN) || start > end || end > dataLen || !(min < avg && avg < max)) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.cutAndHash: argument out of range");
    return NULL;
  }
  const uint32_t *G = (const uint32_t *)gear;
  size_t cap = cutsLen / 2;
  if (hash && idsLen / 32 < cap) cap = idsLen / 32;
  size_t n = 0;
  size_t s = start;
  while (s < end && n < cap) {
    size_t len = cut(data + s, end - s, final, min, avg, max, maskS, maskL, G);
    if (len == 0) break;
    if (hash) {
      blake3_hasher h;
      blake3_hasher_init_keyed(&h, key);
      blake3_hasher_update(&h, data + s, len);
      blake3_hasher_finalize(&h, ids + 32 * n, 32);
    }
    cuts[2 * n] = (uint32_t)s;
    cuts[2 * n + 1] = (uint32_t)len;
    n++;
    s += len;
  }
  if (s < end && n == cap && final) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.cutAndHash: output arrays too small");
    return NULL;
  }
  napi_value out;
  CHECK(napi_create_uint32(env, (uint32_t)n, &out));
  return out;
}

static napi_value hash_chunks(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 5) {
    napi_throw_error(env, "E_NATIVE", "kura_native.hashChunks takes 5 arguments");
    return NULL;
  }
  uint8_t *data, *key, *ids;
  uint32_t *cuts;
  size_t dataLen, keyLen, idsLen, cutsLen;
  uint32_t count;
  if (!typed(env, argv[0], napi_uint8_array, (void **)&data, &dataLen) || !typed(env, argv[1], napi_uint32_array, (void **)&cuts, &cutsLen) ||
      !typed(env, argv[3], napi_uint8_array, (void **)&key, &keyLen) || !typed(env, argv[4], napi_uint8_array, (void **)&ids, &idsLen)) {
    napi_throw_type_error(env, "E_NATIVE", "kura_native.hashChunks: wrong typed array");
    return NULL;
  }
  CHECK(napi_get_value_uint32(env, argv[2], &count));
  if (keyLen != BLAKE3_KEY_LEN || (size_t)count * 2 > cutsLen || (size_t)count * 32 > idsLen) {
    napi_throw_range_error(env, "E_NATIVE", "kura_native.hashChunks: argument out of range");
    return NULL;
  }
  for (uint32_t i = 0; i < count; i++) {
    uint64_t off = cuts[2 * i], len = cuts[2 * i + 1];
    if (off + len > dataLen) {
      napi_throw_range_error(env, "E_NATIVE", "kura_native.hashChunks: chunk out of range");
      return NULL;
    }
    blake3_hasher h;
    blake3_hasher_init_keyed(&h, key);
    blake3_hasher_update(&h, data + off, (size_t)len);
    blake3_hasher_finalize(&h, ids + 32 * (size_t)i, 32);
  }
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "cutAndHash", NAPI_AUTO_LENGTH, cut_and_hash, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "cutAndHash", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "hashChunks", NAPI_AUTO_LENGTH, hash_chunks, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "hashChunks", fn) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
