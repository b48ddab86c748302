import { createRequire } from 'node:module';
import { embeddedManifest, loadEmbeddedAddon } from './sea/embedded.js';

/**
 * kura's native addon (native/kura_native.c, built by `npm run build` with node-gyp): FastCDC
 * boundaries of a whole segment in one call, the keyed BLAKE3 IDs of its chunks in another, and
 * zstd deltas against base chunks. Optional: without it (no C compiler where kura was installed,
 * or KURA_NATIVE=0) the same chunks and IDs are made in TypeScript and deltas through zstd-napi,
 * more slowly. The test suite compares the two.
 */
export interface NativeAddon {
  /** Chunk boundaries of data[start..end) into `cuts` as (offset, length) pairs; returns how many. */
  cut(data: Uint8Array, start: number, end: number, final: boolean, min: number, avg: number, max: number, maskS: number, maskL: number, gear: Int32Array, cuts: Uint32Array): number;
  /** Keyed BLAKE3 IDs of `count` chunks given as (offset, length) pairs, 32 bytes each into `ids`. */
  hashChunks(data: Uint8Array, cuts: Uint32Array, count: number, key: Uint8Array, ids: Uint8Array): void;
  /** BLAKE3 of prefix || chunk for `count` chunks given as (offset, length) pairs, 32 bytes each into `ids`. */
  hashPrefixed(prefix: Uint8Array, data: Uint8Array, cuts: Uint32Array, count: number, ids: Uint8Array): void;
  /** header || nonce || AES-256-GCM(body; AAD = header || id) || tag: a chunk blob. */
  sealBlob(key: Uint8Array, header: Uint8Array, id: Uint8Array, nonce: Uint8Array, body: Uint8Array): Buffer;
  /** The body of a blob sealed so (its header `headerLength` bytes long); null if it does not authenticate. */
  openBody(key: Uint8Array, blob: Uint8Array, headerLength: number, id: Uint8Array): Buffer | null;
  /** One zstd frame of `src` against `dict` (a delta's bases, concatenated) as its prefix, decodable with `dict` as a raw dictionary; null if `dict` begins with zstd's dictionary magic. */
  deltaCompress(src: Uint8Array, dict: Uint8Array, level: number): Buffer | null;
  /**
   * Opens chunk blobs (decrypt, decompress, re-hash against `ids`, 32 bytes each side by side) on a
   * thread of libuv's pool: their plaintexts back to back in one Buffer, or, when one does not open,
   * its index * 8 + a reason (open it alone for the error). `dicts`: for each delta, its bases'
   * plaintexts concatenated, or an array of them (at most 8) that the pool thread joins. `into`: a buffer to open them into when it is large enough (it is
   * then what the promise gives, whole: the plaintexts are its first bytes); the caller does not
   * touch it until the promise settles. `rehash` false: the plaintexts are not re-hashed against
   * their IDs (each blob's tag, whose AAD holds its ID, still authenticates it).
   */
  openBlobs(dataKey: Uint8Array, idKey: Uint8Array, blobs: readonly Uint8Array[], ids: Uint8Array, dicts: ReadonlyArray<Uint8Array | readonly Uint8Array[] | null> | null, into?: Buffer, rehash?: boolean): Promise<Buffer | number>;
  /**
   * Seals chunks idx[k] (data[offsets[i] .. offsets[i+1]), ID ids[32i ..]) as whole blobs (zstd at
   * `level` when smaller, else as they are) with `nonces` (12 bytes each), back to back into `out`,
   * blob k ending at ends[k], on a thread of libuv's pool. Resolves with -1, or the position of the
   * first chunk it could not seal (`out` too small, zstd or OpenSSL failed). Absent from older builds.
   */
  sealWhole?(dataKey: Uint8Array, level: number, data: Uint8Array, offsets: Uint32Array, idx: Uint32Array, ids: Uint8Array, nonces: Uint8Array, out: Uint8Array, ends: Uint32Array): Promise<number>;
  /** Returns the free pages of every malloc arena to the system (glibc); true if any were. Absent from older builds. */
  trimMalloc?(): boolean;
  /** Blocks of `bytes` and more are mapped on their own and unmapped when freed, for the rest of the process (glibc); true if set. Absent from older builds. */
  fixMallocMmapThreshold?(bytes: number): boolean;
}

let cached: NativeAddon | null | undefined;

export function nativeAddon(): NativeAddon | null {
  if (cached !== undefined) return cached;
  if (process.env.KURA_NATIVE === '0') return (cached = null);
  try {
    // the single executable carries its own copy, checked before it is loaded (sea/embedded.ts)
    cached = (embeddedManifest() ? loadEmbeddedAddon('kura_native') : createRequire(import.meta.url)('../../build/Release/kura_native.node')) as NativeAddon;
  } catch {
    cached = null;
  }
  return cached;
}

/** The addon when it can open blobs off the main thread (one built before openBlobs cannot; KURA_RESTORE_THREADS=0 turns it off): else restores open chunks one by one. */
export function openingAddon(): NativeAddon | null {
  const native = process.env.KURA_RESTORE_THREADS === '0' ? null : nativeAddon();
  return typeof native?.openBlobs === 'function' ? native : null;
}
