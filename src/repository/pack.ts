import { blake3, Blake3Hasher } from '@napi-rs/blake-hash';
import { CHUNK_ID_BYTES } from '../crypto/blob.js';
import { packName, type StoreBackend } from '../store/backend.js';
import { blobDigest, DIGEST_BYTES, runDigests } from './digest.js';

/**
 * Pack file, pack format 2 (docs/format.md). New chunk blobs are written in packs, one
 * per compression batch (4 MiB of input), or on an object store gathered to a few MiB from the
 * batches (archiver/pack-merge.ts), so the store holds hundreds of objects per GiB rather
 * than tens of thousands: file creation, listing, GC and S3 requests all scale with packs.
 *
 *   blob_0 | blob_1 | ... | blob_{n-1} | index | u32 n | u32 format | "KURAPACK"
 *   index entry i: chunk ID (32) | u32 offset | u32 length | digest (16)    (little endian)
 *
 * The index is plaintext: chunk IDs are keyed hashes that reveal only equality, and the vault
 * must read them without keys. Pack ID = BLAKE3-256 of the whole file, so anyone can verify it.
 * Pack format 2 adds each blob's digest (digest.ts) to its entry, so a keyless reader can verify
 * one blob without reading its whole pack; format 1 packs (40-byte entries, no digest) are still
 * read, and their entries have `digest` null.
 */
export const PACK_MAGIC = Buffer.from('KURAPACK', 'latin1');
export const PACK_FORMAT = 2;
export const PACK_TRAILER = 4 + 4 + PACK_MAGIC.length;
/** bytes of an index entry in the packs written now (format 2) */
export const PACK_ENTRY = CHUNK_ID_BYTES + 8 + DIGEST_BYTES;
const ENTRY_BYTES: Record<number, number> = { 1: CHUNK_ID_BYTES + 8, 2: PACK_ENTRY };

export interface PackEntry {
  id: Buffer;
  offset: number;
  length: number;
  /** the blob's digest as recorded in the index; null in a format 1 pack */
  digest: Buffer | null;
}

export function packId(bytes: Uint8Array): string {
  return blake3(bytes).toString('hex');
}

/**
 * Lay out blobs (already sealed) and their index in one buffer; returns the file bytes and its
 * ID. The blobs' digests are computed side by side in one native call (runDigests). `into`: a
 * buffer to lay the pack out in from its start, when it is large enough (packs handed from
 * thread to thread reuse a few buffers rather than each allocating its own).
 */
export function encodePack(blobs: readonly Uint8Array[], ids: readonly Uint8Array[], into?: ArrayBufferLike | null): { id: string; bytes: Buffer; entries: PackEntry[] } {
  const n = blobs.length;
  const lengths = blobs.map((b) => b.length);
  const data = lengths.reduce((a, b) => a + b, 0);
  const size = data + n * PACK_ENTRY + PACK_TRAILER;
  const bytes = into && into.byteLength >= size ? Buffer.from(into, 0, size) : Buffer.allocUnsafe(size);
  let off = 0;
  for (const b of blobs) {
    bytes.set(b, off);
    off += b.length;
  }
  const digests = runDigests(bytes.subarray(0, data), lengths);
  const entries = writeIndex(bytes.subarray(data), ids, lengths, (i) => digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES));
  return { id: packId(bytes), bytes, entries };
}

/** The index and trailer of a format 2 pack into `tail` (n × PACK_ENTRY + PACK_TRAILER bytes); the entries. */
function writeIndex(tail: Buffer, ids: readonly Uint8Array[], lengths: readonly number[], digestOf: (i: number) => Uint8Array): PackEntry[] {
  const n = ids.length;
  const entries: PackEntry[] = new Array(n);
  let off = 0;
  for (let i = 0; i < n; i++) {
    const e = i * PACK_ENTRY;
    const digest = Buffer.from(digestOf(i));
    tail.set(ids[i]!, e);
    tail.writeUInt32LE(off, e + CHUNK_ID_BYTES);
    tail.writeUInt32LE(lengths[i]!, e + CHUNK_ID_BYTES + 4);
    digest.copy(tail, e + CHUNK_ID_BYTES + 8);
    entries[i] = { id: Buffer.from(ids[i]!), offset: off, length: lengths[i]!, digest };
    off += lengths[i]!;
  }
  tail.writeUInt32LE(n, n * PACK_ENTRY);
  tail.writeUInt32LE(PACK_FORMAT, n * PACK_ENTRY + 4);
  PACK_MAGIC.copy(tail, n * PACK_ENTRY + 8);
  return entries;
}

/** How many bytes of the pack's end hold the index, from its last PACK_TRAILER bytes; null if not a pack. */
export function packIndexLength(trailer: Buffer): number | null {
  if (trailer.length < PACK_TRAILER) return null;
  const t = trailer.subarray(trailer.length - PACK_TRAILER);
  const entry = t.subarray(8).equals(PACK_MAGIC) ? ENTRY_BYTES[t.readUInt32LE(4)] : undefined;
  if (entry === undefined) return null;
  return t.readUInt32LE(0) * entry + PACK_TRAILER;
}

/**
 * Parse the index from the tail of a pack (at least its index + trailer) given the pack's size.
 * Null when the tail is not a well-formed format 1 or 2 index for a file of that size.
 */
export function parsePackIndex(tail: Buffer, packSize: number): PackEntry[] | null {
  const len = packIndexLength(tail);
  if (len === null || len > tail.length || len > packSize) return null;
  const format = tail.readUInt32LE(tail.length - PACK_TRAILER + 4);
  const entryBytes = ENTRY_BYTES[format]!;
  const n = (len - PACK_TRAILER) / entryBytes;
  const dataLen = packSize - len;
  const base = tail.length - len;
  const out: PackEntry[] = new Array(n);
  let expect = 0;
  for (let i = 0; i < n; i++) {
    const o = base + i * entryBytes;
    const offset = tail.readUInt32LE(o + CHUNK_ID_BYTES);
    const length = tail.readUInt32LE(o + CHUNK_ID_BYTES + 4);
    if (offset !== expect || offset + length > dataLen) return null; // blobs are contiguous, in order
    expect = offset + length;
    const digest = format >= 2 ? Buffer.from(tail.subarray(o + CHUNK_ID_BYTES + 8, o + CHUNK_ID_BYTES + 8 + DIGEST_BYTES)) : null;
    out[i] = { id: Buffer.from(tail.subarray(o, o + CHUNK_ID_BYTES)), offset, length, digest };
  }
  if (expect !== dataLen) return null;
  return out;
}

/**
 * Lay out `items` as a pack and store it durably (written, then the store synced) before the
 * caller records its chunks. `beforeWrite` runs once the pack's ID is known (a vault session
 * leases the pack there, so a concurrent GC leaves the file alone). An item's `digest` is the
 * one recorded when the blob was first written (a copy must not certify bytes that rotted since);
 * without one it is computed from the blob.
 */
export async function storePack(
  store: StoreBackend,
  items: ReadonlyArray<{ id: Uint8Array; blob: Uint8Array; digest?: Uint8Array | null }>,
  beforeWrite?: (packId: string) => void | Promise<void>,
  blobsHashed?: Blake3Hasher,
): Promise<{ id: string; size: number; entries: PackEntry[] }> {
  const pack = packParts(
    items.map((i) => i.blob),
    items.map((i) => i.id),
    blobsHashed,
    items.map((i) => i.digest ?? null),
  );
  await beforeWrite?.(pack.id);
  await store.put(packName(pack.id), pack.parts);
  await store.sync();
  return { id: pack.id, size: pack.size, entries: pack.entries };
}

/**
 * The same file as encodePack, for blobs already lying side by side at the start of `buf` (the
 * first `dataLength` bytes; their lengths in order) with their digests already known
 * (DIGEST_BYTES each, in order). The index and trailer follow them in `buf` when it has room
 * (one part, so an upload need not join parts), else in a part of their own; the pack ID hashes
 * the blobs in one call rather than blob by blob.
 */
export function packOfRun(buf: Buffer, dataLength: number, lengths: readonly number[], ids: readonly Uint8Array[], digests: Uint8Array): { id: string; parts: Uint8Array[]; size: number; entries: PackEntry[] } {
  const n = ids.length;
  const tailLength = n * PACK_ENTRY + PACK_TRAILER;
  const inPlace = buf.length >= dataLength + tailLength;
  const tail = inPlace ? buf.subarray(dataLength, dataLength + tailLength) : Buffer.allocUnsafe(tailLength);
  const entries = writeIndex(tail, ids, lengths, (i) => digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES));
  const data = buf.subarray(0, dataLength);
  const h = new Blake3Hasher();
  h.update(data);
  h.update(tail);
  return { id: h.digestBuffer().toString('hex'), parts: inPlace ? [buf.subarray(0, dataLength + tailLength)] : [data, tail], size: dataLength + tailLength, entries };
}

/**
 * The same file as encodePack, as the blobs themselves plus one buffer for index and trailer
 * (written with one writev): no copy of the blobs, and the ID hashed piece by piece.
 * `blobsHashed`, if given, has already hashed exactly `blobs`, in order (a vault checking a
 * batch's checksum hashed them on arrival): the pack ID continues from it instead of reading
 * every blob again.
 */
export function packParts(
  blobs: readonly Uint8Array[],
  ids: readonly Uint8Array[],
  blobsHashed?: Blake3Hasher,
  digests?: ReadonlyArray<Uint8Array | null>,
): { id: string; parts: Uint8Array[]; size: number; entries: PackEntry[] } {
  const n = blobs.length;
  const tail = Buffer.allocUnsafe(n * PACK_ENTRY + PACK_TRAILER);
  const h = blobsHashed ?? new Blake3Hasher();
  let size = 0;
  for (const b of blobs) {
    if (!blobsHashed) h.update(b);
    size += b.length;
  }
  const entries = writeIndex(tail, ids, blobs.map((b) => b.length), (i) => digests?.[i] ?? blobDigest(blobs[i]!));
  h.update(tail);
  return { id: h.digestBuffer().toString('hex'), parts: [...blobs, tail], size: size + tail.length, entries };
}
