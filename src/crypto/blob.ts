import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { Blake3Hasher } from '@napi-rs/blake-hash';
import { createRequire } from 'node:module';
import { KuraError } from '../errors.js';
import { nativeAddon } from '../native.js';
import { keepDelta, wholeEstimate, wholeSample, worthTryingWhole } from './delta-policy.js';

const require = createRequire(import.meta.url);
// zstd-napi is CommonJS; a native binding without zstd-codec's fixed 16 MiB heap.
const zstd = require('zstd-napi') as typeof import('zstd-napi');
// its one-shot decompression with a raw dictionary (no dictionary object per delta)
const binding = require('zstd-napi/binding.js') as typeof import('zstd-napi/binding.js');

/**
 * Chunk blob, repository format v1 (docs/format.md):
 *   0  u8   format (1)
 *   1  u8   compression (0 none, 1 zstd, 2 zstd against base chunks)
 *   2  u32  plaintext length, little endian
 *  [6  u8   k, the number of base chunks, then k × 32B base chunk IDs: compression 2 only]
 *   h  12B  AES-GCM nonce (random)
 *   ...     ciphertext
 *   -16 16B GCM tag; AAD = bytes 0..h || chunk ID, so a blob cannot pass for another chunk
 *
 * Compression 2 (a delta): zstd with the concatenated plaintexts of the base chunks as its
 * dictionary. The base IDs are plaintext so that a keyless vault keeps the bases as long as the
 * delta (GC, transfer and commit checks follow them); a base is never itself a delta.
 */
export const BLOB_FORMAT = 1;
export const BLOB_HEADER = 6;
export const BLOB_OVERHEAD = BLOB_HEADER + 12 + 16;
export const CHUNK_ID_BYTES = 32;
/**
 * Without the native addon, deltas are compressed through zstd-napi at this level at least: on
 * 4 KiB chunks of a database dump against 12 KiB of bases, level 6 stored 17 % less than level 3
 * for the same CPU time (level 9: 18 %, a third more time). With the addon, deltas use
 * parameters of their own (kura_native.c), a quarter of the time for slightly fewer bytes.
 */
const DELTA_MIN_LEVEL = 6;
/** At most this many base chunks per delta blob. */
export const MAX_BASES = 8;

export const Compression = { NONE: 0, ZSTD: 1, DELTA: 2 } as const;

/** Header length of a blob: 6, or 7 + 32k for a delta. */
function headerLength(compression: number, bases: number): number {
  return compression === Compression.DELTA ? BLOB_HEADER + 1 + bases * CHUNK_ID_BYTES : BLOB_HEADER;
}

export function chunkId(idKey: Buffer, plain: Uint8Array): Buffer {
  return Blake3Hasher.newKeyed(idKey).update(plain).digestBuffer();
}

/**
 * Bases whose plaintext begins with zstd's dictionary magic would be read back as a trained
 * dictionary, not as the raw content they are: such a chunk is stored whole, never as their delta.
 */
function startsWithDictMagic(b: Uint8Array): boolean {
  return b.length >= 4 && b[0] === 0x37 && b[1] === 0xa4 && b[2] === 0x30 && b[3] === 0xec;
}

const NONCE_BATCH = 1024;

/** Base chunks a chunk may be stored as a delta of: their IDs and their plaintexts, concatenated in that order. */
export interface DeltaBase {
  ids: readonly Uint8Array[];
  plain: Uint8Array;
  /** the bases' stored bytes (their blobs' lengths), when known: what they take judges what the chunk would whole */
  stored?: number;
}

export class BlobSealer {
  private readonly compressor: InstanceType<typeof zstd.Compressor> | null;
  // random 96-bit nonces, drawn from the CSPRNG a thousand at a time (one call per nonce showed in profiles)
  private readonly nonces = Buffer.allocUnsafe(12 * NONCE_BATCH);
  private nonceIdx = NONCE_BATCH;

  private deltaCompressor: InstanceType<typeof zstd.Compressor> | null = null;

  constructor(private readonly dataKey: Buffer, private readonly level: number) {
    if (level > 0) {
      this.compressor = new zstd.Compressor();
      this.compressor.setParameters({ compressionLevel: level });
    } else {
      this.compressor = null;
    }
  }

  /**
   * Seal one chunk. With `base` (the base chunks' IDs and their plaintexts concatenated), the
   * chunk is also compressed against them and stored as a delta when that saves at least a
   * tenth of the stored size; otherwise it is stored whole.
   */
  seal(plain: Uint8Array, id: Uint8Array, base?: DeltaBase): Buffer {
    return this.sealBest(plain, id, base ? [base] : []).blob;
  }

  /**
   * Seal one chunk as the smallest of its deltas against each of `alternatives` (sets of bases,
   * counting the 32 bytes each base adds to the blob's header), kept while it costs under 90 % of
   * the chunk compressed alone (as `seal`); `again`: the chunk's old version was a delta too, and it
   * is stored whole once the delta costs half of that (delta-policy.ts). `chosen` is the alternative the blob is a
   * delta of, -1 if stored whole.
   */
  sealBest(plain: Uint8Array, id: Uint8Array, alternatives: readonly DeltaBase[], opts: { again?: boolean } = {}): { blob: Buffer; chosen: number } {
    const again = opts.again === true;
    let body: Uint8Array = plain;
    let compression: number = Compression.NONE;
    let baseIds: readonly Uint8Array[] = [];
    let delta: Buffer | null = null;
    let chosen = -1;
    // the smallest delta, counting the 32 header bytes of each base
    const cost = (d: Buffer, base: DeltaBase) => d.length + CHUNK_ID_BYTES * base.ids.length;
    for (let i = 0; this.compressor && i < alternatives.length; i++) {
      const base = alternatives[i]!;
      if (base.ids.length === 0 || base.ids.length > MAX_BASES || base.plain.length === 0) continue;
      const d = this.deltaOf(plain, base.plain);
      if (d && (!delta || cost(d, base) < cost(delta, alternatives[chosen]!))) {
        delta = d;
        chosen = i;
      }
    }
    const base = chosen >= 0 ? alternatives[chosen] : undefined;
    // a delta well under what the chunk would take whole is kept without compressing the chunk
    // alone: the common case costs no compression more (delta-policy.ts)
    if (delta && this.keepUntried(cost(delta, base!), plain, base!, again)) {
      body = delta;
      compression = Compression.DELTA;
      baseIds = base!.ids;
    } else if (this.compressor) {
      const z = this.compressor.compress(plain);
      // keep incompressible chunks as they are: no cost on restore, no growth
      if (z.length < plain.length) {
        body = z;
        compression = Compression.ZSTD;
      }
      if (delta && keepDelta(cost(delta, base!), body.length, again)) {
        body = delta;
        compression = Compression.DELTA;
        baseIds = base!.ids;
      }
    }
    if (compression !== Compression.DELTA) chosen = -1;
    return { blob: this.sealed(plain.length, id, compression, baseIds, body), chosen };
  }

  /**
   * Whether a delta is kept without compressing the chunk alone: judged by what its bases take
   * stored and, for a large chunk that may be stored whole, by a sample of it compressed (a
   * chunk's content drifts from its bases': on bench/daily's spread updates a chunk whole took
   * 2-3 times what its bases judged, and compressing every such chunk alone cost 20 % of a night).
   */
  private keepUntried(deltaCost: number, plain: Uint8Array, base: DeltaBase, again: boolean): boolean {
    if (!worthTryingWhole(deltaCost, plain.length, wholeEstimate(plain.length, base.stored, base.plain.length), again)) return true;
    const sample = again && this.compressor ? wholeSample(plain.length) : null;
    if (sample === null) return false;
    const z = this.compressor!.compress(plain.subarray(0, sample)).length;
    return !worthTryingWhole(deltaCost, plain.length, wholeEstimate(plain.length, z, sample), again);
  }

  /** The chunk compressed against `dict` (null when it cannot be a delta of it). */
  private deltaOf(plain: Uint8Array, dict: Uint8Array): Buffer | null {
    const native = nativeAddon();
    if (native) return native.deltaCompress(plain, dict, Math.max(this.level, DELTA_MIN_LEVEL));
    if (startsWithDictMagic(dict)) return null;
    if (!this.deltaCompressor) {
      this.deltaCompressor = new zstd.Compressor();
      this.deltaCompressor.setParameters({ compressionLevel: Math.max(this.level, DELTA_MIN_LEVEL) });
    }
    this.deltaCompressor.loadDictionary(dict);
    return this.deltaCompressor.compress(plain);
  }

  private sealed(plainLength: number, id: Uint8Array, compression: number, baseIds: readonly Uint8Array[], body: Uint8Array): Buffer {
    const header = Buffer.allocUnsafe(headerLength(compression, baseIds.length));
    header[0] = BLOB_FORMAT;
    header[1] = compression;
    header.writeUInt32LE(plainLength, 2);
    if (compression === Compression.DELTA) {
      header[BLOB_HEADER] = baseIds.length;
      baseIds.forEach((b, i) => header.set(b, BLOB_HEADER + 1 + i * CHUNK_ID_BYTES));
    }
    if (this.nonceIdx === NONCE_BATCH) {
      randomFillSync(this.nonces);
      this.nonceIdx = 0;
    }
    const nonce = this.nonces.subarray(this.nonceIdx * 12, ++this.nonceIdx * 12);
    const native = nativeAddon();
    if (native) return native.sealBlob(this.dataKey, header, id, nonce, body);
    const c = createCipheriv('aes-256-gcm', this.dataKey, nonce);
    c.setAAD(Buffer.concat([header, id]));
    const ct = c.update(body);
    const fin = c.final();
    return Buffer.concat([header, nonce, ct, fin, c.getAuthTag()]);
  }
}

export interface BlobInfo {
  compression: number;
  plainLength: number;
  /** the base chunks of a delta (empty otherwise) */
  bases: Buffer[];
  /** bytes before the nonce */
  headerLength: number;
}

/** What a blob's plaintext header says (no key needed); null if it is no blob of a known format. */
export function blobInfo(blob: Uint8Array): BlobInfo | null {
  const b = Buffer.from(blob.buffer, blob.byteOffset, blob.length);
  // a chunk list block (format 2, repository/chunklist.ts): plaintext IDs, opened there
  if (b.length >= 6 && b[0] === 2) {
    const len = b.readUInt32LE(2);
    return b[1] === 0 && len === b.length - 6 && len % CHUNK_ID_BYTES === 0 ? { compression: 0, plainLength: len, bases: [], headerLength: 6 } : null;
  }
  if (b.length < BLOB_OVERHEAD || b[0] !== BLOB_FORMAT || b[1]! > Compression.DELTA) return null;
  const compression = b[1]!;
  const k = compression === Compression.DELTA ? b[BLOB_HEADER]! : 0;
  if (compression === Compression.DELTA && (k === 0 || k > MAX_BASES)) return null;
  const h = headerLength(compression, k);
  if (b.length < h + 12 + 16) return null;
  const bases: Buffer[] = [];
  for (let i = 0; i < k; i++) bases.push(b.subarray(BLOB_HEADER + 1 + i * CHUNK_ID_BYTES, BLOB_HEADER + 1 + (i + 1) * CHUNK_ID_BYTES));
  return { compression, plainLength: b.readUInt32LE(2), bases, headerLength: h };
}

const decompressor = new zstd.Decompressor();
const deltaDctx = new binding.DCtx();
const baseDctx = new binding.DCtx();

/** The decrypted body of a blob, null if it is too short or does not authenticate. */
function openBody(blob: Buffer, id: Buffer, dataKey: Buffer, info: BlobInfo): Buffer | null {
  if (blob.length < info.headerLength + 28) return null;
  const native = nativeAddon();
  if (native) return native.openBody(dataKey, blob, info.headerLength, id);
  const d = createDecipheriv('aes-256-gcm', dataKey, blob.subarray(info.headerLength, info.headerLength + 12));
  d.setAAD(Buffer.concat([blob.subarray(0, info.headerLength), id]));
  d.setAuthTag(blob.subarray(blob.length - 16));
  try {
    return Buffer.concat([d.update(blob.subarray(info.headerLength + 12, blob.length - 16)), d.final()]);
  } catch {
    return null;
  }
}

/**
 * Open a blob that is not a delta straight into `out` (exactly its plaintext length), without
 * checking the plaintext's hash: for delta bases, which only shape a delta (the delta's own
 * restore re-hashes what it produces). False if it does not authenticate or decompress.
 */
export function openBaseInto(blob: Buffer, id: Buffer, keys: { dataKey: Buffer }, info: BlobInfo, out: Buffer): boolean {
  if (info.compression === Compression.DELTA || out.length !== info.plainLength) return false;
  const body = openBody(blob, id, keys.dataKey, info);
  if (!body) return false;
  if (info.compression === Compression.NONE) {
    if (body.length !== out.length) return false;
    out.set(body);
    return true;
  }
  try {
    return baseDctx.decompress(out, body) === out.length;
  } catch {
    return false;
  }
}

/**
 * Decrypt, decompress and re-hash; any mismatch is E_CHUNK_CORRUPT naming the chunk. A delta
 * needs the plaintexts of its bases (`blobInfo(blob).bases`), in that order.
 */
export function openBlob(blob: Buffer, id: Buffer, keys: { dataKey: Buffer; idKey: Buffer }, bases?: readonly Buffer[], opts: { rehash?: boolean } = {}): Buffer {
  const hex = id.toString('hex');
  const info = blobInfo(blob);
  if (!info || blob[0] !== BLOB_FORMAT) throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex}: unknown blob format or truncated blob`, { chunk: hex });
  const body = openBody(blob, id, keys.dataKey, info);
  if (!body) throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex}: authentication failed (the blob was altered or damaged)`, { chunk: hex });
  let plain: Buffer;
  if (info.compression === Compression.DELTA) {
    if (!bases || bases.length !== info.bases.length) throw new Error(`chunk ${hex} is a delta: its ${info.bases.length} base chunk(s) are needed to open it`);
    try {
      plain = Buffer.allocUnsafe(info.plainLength);
      const n = deltaDctx.decompressUsingDict(plain, body, bases.length === 1 ? bases[0]! : Buffer.concat(bases));
      if (n !== info.plainLength) throw new Error('short');
    } catch {
      throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex}: cannot be decompressed against its base chunks`, { chunk: hex });
    }
  } else if (info.compression === Compression.ZSTD) {
    try {
      plain = decompressor.decompress(body);
    } catch {
      throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex}: cannot be decompressed`, { chunk: hex });
    }
  } else {
    plain = body;
  }
  if (plain.length !== info.plainLength || (opts.rehash !== false && !chunkId(keys.idKey, plain).equals(id))) {
    throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex}: content does not match its ID`, { chunk: hex });
  }
  return plain;
}
