import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { Blake3Hasher } from '@napi-rs/blake-hash';
import { createRequire } from 'node:module';
import { KuraError } from '../errors.js';

const require = createRequire(import.meta.url);
// zstd-napi is CommonJS; a native binding without zstd-codec's fixed 16 MiB heap.
const zstd = require('zstd-napi') as typeof import('zstd-napi');

/**
 * Chunk blob, repository format v1 (docs/format.md):
 *   0  u8   format (1)
 *   1  u8   compression (0 none, 1 zstd)
 *   2  u32  plaintext length, little endian
 *   6  12B  AES-GCM nonce (random)
 *   18 ...  ciphertext
 *   -16 16B GCM tag; AAD = bytes 0..6 || chunk ID, so a blob cannot pass for another chunk
 */
export const BLOB_FORMAT = 1;
export const BLOB_HEADER = 6;
export const BLOB_OVERHEAD = BLOB_HEADER + 12 + 16;
export const CHUNK_ID_BYTES = 32;

export const Compression = { NONE: 0, ZSTD: 1 } as const;

export function chunkId(idKey: Buffer, plain: Uint8Array): Buffer {
  return Blake3Hasher.newKeyed(idKey).update(plain).digestBuffer();
}

const NONCE_BATCH = 1024;

export class BlobSealer {
  private readonly compressor: InstanceType<typeof zstd.Compressor> | null;
  // random 96-bit nonces, drawn from the CSPRNG a thousand at a time (one call per nonce showed in profiles)
  private readonly nonces = Buffer.allocUnsafe(12 * NONCE_BATCH);
  private nonceIdx = NONCE_BATCH;

  constructor(private readonly dataKey: Buffer, level: number) {
    if (level > 0) {
      this.compressor = new zstd.Compressor();
      this.compressor.setParameters({ compressionLevel: level });
    } else {
      this.compressor = null;
    }
  }

  seal(plain: Uint8Array, id: Uint8Array): Buffer {
    let body: Uint8Array = plain;
    let compression: number = Compression.NONE;
    if (this.compressor) {
      const z = this.compressor.compress(plain);
      // keep incompressible chunks as they are: no cost on restore, no growth
      if (z.length < plain.length) {
        body = z;
        compression = Compression.ZSTD;
      }
    }
    const header = Buffer.allocUnsafe(BLOB_HEADER);
    header[0] = BLOB_FORMAT;
    header[1] = compression;
    header.writeUInt32LE(plain.length, 2);
    if (this.nonceIdx === NONCE_BATCH) {
      randomFillSync(this.nonces);
      this.nonceIdx = 0;
    }
    const nonce = this.nonces.subarray(this.nonceIdx * 12, ++this.nonceIdx * 12);
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
}

export function blobInfo(blob: Uint8Array): BlobInfo | null {
  // a chunk list block (format 2, repository/chunklist.ts): plaintext IDs, opened there
  if (blob.length >= 6 && blob[0] === 2) {
    const len = Buffer.from(blob.buffer, blob.byteOffset, blob.length).readUInt32LE(2);
    return blob[1] === 0 && len === blob.length - 6 && len % CHUNK_ID_BYTES === 0 ? { compression: 0, plainLength: len } : null;
  }
  if (blob.length < BLOB_OVERHEAD || blob[0] !== BLOB_FORMAT || (blob[1] !== 0 && blob[1] !== 1)) return null;
  return { compression: blob[1]!, plainLength: Buffer.from(blob.buffer, blob.byteOffset, blob.length).readUInt32LE(2) };
}

const decompressor = new zstd.Decompressor();

/** Decrypt, decompress and re-hash; any mismatch is E_CHUNK_CORRUPT naming the chunk. */
export function openBlob(blob: Buffer, id: Buffer, keys: { dataKey: Buffer; idKey: Buffer }): Buffer {
  const hex = id.toString('hex');
  const info = blobInfo(blob);
  if (!info) throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex}: unknown blob format or truncated blob`, { chunk: hex });
  const header = blob.subarray(0, BLOB_HEADER);
  const nonce = blob.subarray(BLOB_HEADER, BLOB_HEADER + 12);
  const tag = blob.subarray(blob.length - 16);
  const d = createDecipheriv('aes-256-gcm', keys.dataKey, nonce);
  d.setAAD(Buffer.concat([header, id]));
  d.setAuthTag(tag);
  let body: Buffer;
  try {
    body = Buffer.concat([d.update(blob.subarray(BLOB_HEADER + 12, blob.length - 16)), d.final()]);
  } catch {
    throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex}: authentication failed (the blob was altered or damaged)`, { chunk: hex });
  }
  let plain: Buffer;
  if (info.compression === Compression.ZSTD) {
    try {
      plain = decompressor.decompress(body);
    } catch {
      throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex}: cannot be decompressed`, { chunk: hex });
    }
  } else {
    plain = body;
  }
  if (plain.length !== info.plainLength || !chunkId(keys.idKey, plain).equals(id)) {
    throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex}: content does not match its ID`, { chunk: hex });
  }
  return plain;
}
