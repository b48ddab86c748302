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
 *   (offset, length) pairs, 32 bytes each into ids.
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include "blake3.h"

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
  if (napi_create_function(env, "cut", NAPI_AUTO_LENGTH, cut, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "cut", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "hashChunks", NAPI_AUTO_LENGTH, hash_chunks, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "hashChunks", fn) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
