import { blake3, Blake3Hasher } from '@napi-rs/blake-hash';
import { CHUNK_ID_BYTES } from '../crypto/blob.js';
import { packName, type StoreBackend } from '../store/backend.js';

/**
 * Pack file, repository format v1 (docs/format.md). New chunk blobs are written in packs, one
 * per compression batch (~2 MiB of input), so the store holds hundreds of objects per GiB rather
 * than tens of thousands: file creation, listing, GC and S3 requests all scale with packs.
 *
 *   blob_0 | blob_1 | ... | blob_{n-1} | index | u32 n | u32 format | "KURAPACK"
 *   index entry i: chunk ID (32) | u32 offset | u32 length     (little endian)
 *
 * The index is plaintext: chunk IDs are keyed hashes that reveal only equality, and the vault
 * must read them without keys. Pack ID = BLAKE3-256 of the whole file, so anyone can verify it.
 */
export const PACK_MAGIC = Buffer.from('KURAPACK', 'latin1');
export const PACK_FORMAT = 1;
export const PACK_TRAILER = 4 + 4 + PACK_MAGIC.length;
export const PACK_ENTRY = CHUNK_ID_BYTES + 8;

export interface PackEntry {
  id: Buffer;
  offset: number;
  length: number;
}

export function packId(bytes: Uint8Array): string {
  return blake3(bytes).toString('hex');
}

/** Lay out blobs (already sealed) and their index; returns the file bytes and its ID. */
export function encodePack(blobs: readonly Uint8Array[], ids: readonly Uint8Array[]): { id: string; bytes: Buffer; entries: PackEntry[] } {
  const p = packParts(blobs, ids);
  return { id: p.id, bytes: Buffer.concat(p.parts, p.size), entries: p.entries };
}

/** How many bytes of the pack's end hold the index, from its last PACK_TRAILER bytes; null if not a pack. */
export function packIndexLength(trailer: Buffer): number | null {
  if (trailer.length < PACK_TRAILER) return null;
  const t = trailer.subarray(trailer.length - PACK_TRAILER);
  if (!t.subarray(8).equals(PACK_MAGIC) || t.readUInt32LE(4) !== PACK_FORMAT) return null;
  return t.readUInt32LE(0) * PACK_ENTRY + PACK_TRAILER;
}

/**
 * Parse the index from the tail of a pack (at least its index + trailer) given the pack's size.
 * Null when the tail is not a well-formed version 1 index for a file of that size.
 */
export function parsePackIndex(tail: Buffer, packSize: number): PackEntry[] | null {
  const len = packIndexLength(tail);
  if (len === null || len > tail.length || len > packSize) return null;
  const n = (len - PACK_TRAILER) / PACK_ENTRY;
  const dataLen = packSize - len;
  const base = tail.length - len;
  const out: PackEntry[] = new Array(n);
  let expect = 0;
  for (let i = 0; i < n; i++) {
    const o = base + i * PACK_ENTRY;
    const offset = tail.readUInt32LE(o + CHUNK_ID_BYTES);
    const length = tail.readUInt32LE(o + CHUNK_ID_BYTES + 4);
    if (offset !== expect || offset + length > dataLen) return null; // blobs are contiguous, in order
    expect = offset + length;
    out[i] = { id: Buffer.from(tail.subarray(o, o + CHUNK_ID_BYTES)), offset, length };
  }
  if (expect !== dataLen) return null;
  return out;
}

/**
 * Lay out `items` as a pack and store it durably (written, then the store synced) before the
 * caller records its chunks. `beforeWrite` runs once the pack's ID is known (a vault session
 * leases the pack there, so a concurrent GC leaves the file alone).
 */
export async function storePack(
  store: StoreBackend,
  items: ReadonlyArray<{ id: Uint8Array; blob: Uint8Array }>,
  beforeWrite?: (packId: string) => void | Promise<void>,
  blobsHashed?: Blake3Hasher,
): Promise<{ id: string; size: number; entries: PackEntry[] }> {
  const pack = packParts(
    items.map((i) => i.blob),
    items.map((i) => i.id),
    blobsHashed,
  );
  await beforeWrite?.(pack.id);
  await store.put(packName(pack.id), pack.parts);
  await store.sync();
  return { id: pack.id, size: pack.size, entries: pack.entries };
}

/**
 * The same file as encodePack, as the blobs themselves plus one buffer for index and trailer
 * (written with one writev): no copy of the blobs, and the ID hashed piece by piece.
 * `blobsHashed`, if given, has already hashed exactly `blobs`, in order (a vault checking a
 * batch's checksum hashed them on arrival): the pack ID continues from it instead of reading
 * every blob again.
 */
export function packParts(blobs: readonly Uint8Array[], ids: readonly Uint8Array[], blobsHashed?: Blake3Hasher): { id: string; parts: Uint8Array[]; size: number; entries: PackEntry[] } {
  const n = blobs.length;
  const tail = Buffer.allocUnsafe(n * PACK_ENTRY + PACK_TRAILER);
  const entries: PackEntry[] = new Array(n);
  const h = blobsHashed ?? new Blake3Hasher();
  let off = 0;
  for (let i = 0; i < n; i++) {
    const b = blobs[i]!;
    const e = i * PACK_ENTRY;
    tail.set(ids[i]!, e);
    tail.writeUInt32LE(off, e + CHUNK_ID_BYTES);
    tail.writeUInt32LE(b.length, e + CHUNK_ID_BYTES + 4);
    entries[i] = { id: Buffer.from(ids[i]!), offset: off, length: b.length };
    if (!blobsHashed) h.update(Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    off += b.length;
  }
  tail.writeUInt32LE(n, n * PACK_ENTRY);
  tail.writeUInt32LE(PACK_FORMAT, n * PACK_ENTRY + 4);
  PACK_MAGIC.copy(tail, n * PACK_ENTRY + 8);
  h.update(tail);
  return { id: h.digestBuffer().toString('hex'), parts: [...blobs, tail], size: off + tail.length, entries };
}
