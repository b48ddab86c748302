import { blake3 } from '@napi-rs/blake-hash';
import { KuraError } from '../errors.js';
import { CHUNK_ID_BYTES } from '../crypto/blob.js';
import { nativeAddon } from '../native.js';

/**
 * A snapshot's chunk list, deduplicated between generations (snapshot format 2).
 *
 * Small chunks find more of a database dump unchanged, but a snapshot lists 32 bytes per chunk:
 * at 4 KiB chunks the list of a 1 GiB dump is 8 MiB, every night. So the list is itself cut into
 * content-defined blocks, each stored once like a chunk: a block ends after an ID whose last
 * byte has its low 4 bits clear (IDs are hashes, so blocks average 16 IDs), with at least 4 and
 * at most 64 IDs. A change in the data changes the few blocks around it; the others are the
 * previous night's. The IDs of the blocks form the next level, cut the same way, until a level
 * has at most 64 IDs: that top level is stored in the snapshot file.
 *
 * List blocks are not encrypted: they hold only chunk IDs (keyed hashes that reveal nothing but
 * equality, like a pack index), and the keyless vault must read them to check commits and to
 * collect garbage. A list blob is `u8 2 | u8 0 | u32 length | IDs`; its ID is the BLAKE3 hash of
 * "kura chunk list v1\0" followed by the IDs, which anyone can verify.
 */
export const LIST_BLOB_FORMAT = 2;
export const LIST_BLOB_HEADER = 6;
const DOMAIN = Buffer.from('kura chunk list v1\0', 'latin1');
const MIN_IDS = 4;
const MAX_IDS = 64;
const BOUNDARY_MASK = 0x0f;
export const TOP_MAX_IDS = 64;

export function listBlockId(content: Uint8Array): Buffer {
  return blake3(Buffer.concat([DOMAIN, content]));
}

export function sealListBlock(content: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(LIST_BLOB_HEADER + content.length);
  out[0] = LIST_BLOB_FORMAT;
  out[1] = 0;
  out.writeUInt32LE(content.length, 2);
  out.set(content, LIST_BLOB_HEADER);
  return out;
}

export function isListBlob(blob: Uint8Array): boolean {
  return blob.length >= LIST_BLOB_HEADER && blob[0] === LIST_BLOB_FORMAT;
}

/** The IDs in a list blob, verified against its ID (no key needed). */
export function openListBlob(blob: Buffer, id: Buffer): Buffer {
  const hex = id.toString('hex');
  if (!isListBlob(blob) || blob[1] !== 0 || blob.readUInt32LE(2) !== blob.length - LIST_BLOB_HEADER || (blob.length - LIST_BLOB_HEADER) % CHUNK_ID_BYTES !== 0) {
    throw new KuraError('E_CHUNK_CORRUPT', `chunk list block ${hex}: not a list blob or truncated`, { chunk: hex });
  }
  const content = blob.subarray(LIST_BLOB_HEADER);
  if (!listBlockId(content).equals(id)) throw new KuraError('E_CHUNK_CORRUPT', `chunk list block ${hex}: content does not match its ID`, { chunk: hex });
  return content;
}

/** Content-defined blocks of a sequence of IDs. */
export function* splitIds(ids: Buffer): Generator<Buffer> {
  const n = ids.length / CHUNK_ID_BYTES;
  let start = 0;
  for (let i = 0; i < n; i++) {
    const len = i - start + 1;
    if ((len >= MIN_IDS && (ids[i * CHUNK_ID_BYTES + CHUNK_ID_BYTES - 1]! & BOUNDARY_MASK) === 0) || len >= MAX_IDS) {
      yield ids.subarray(start * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES);
      start = i + 1;
    }
  }
  if (start < n) yield ids.subarray(start * CHUNK_ID_BYTES);
}

/**
 * Cut the chunk list into levels of blocks; `emit` receives every block's ID and content (a view
 * into the level, valid during the call; sealListBlock makes its blob). A level's blocks are
 * hashed in one call to the native addon where it is built.
 */
export function buildListTree(ids: Buffer, emit: (id: Buffer, block: Buffer) => void): { top: Buffer; depth: number } {
  let level = ids;
  let depth = 0;
  const native = nativeAddon();
  while (level.length / CHUNK_ID_BYTES > TOP_MAX_IDS) {
    const blocks = [...splitIds(level)];
    const next = Buffer.allocUnsafe(blocks.length * CHUNK_ID_BYTES);
    if (native) {
      const cuts = new Uint32Array(blocks.length * 2);
      blocks.forEach((b, i) => {
        cuts[2 * i] = b.byteOffset - level.byteOffset;
        cuts[2 * i + 1] = b.length;
      });
      native.hashPrefixed(DOMAIN, level, cuts, blocks.length, next);
    } else blocks.forEach((b, i) => next.set(listBlockId(b), i * CHUNK_ID_BYTES));
    blocks.forEach((b, i) => emit(next.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES), b));
    level = next;
    depth++;
  }
  return { top: level, depth };
}

/** Anything that yields stored blobs by ID, in order: the local store, pack indexes, a vault. */
export type BlobFetcher = (ids: Buffer[], what: string) => AsyncIterable<{ id: Buffer; blob: Buffer }>;

export function* idsOf(list: Buffer): Generator<Buffer> {
  for (let o = 0; o < list.length; o += CHUNK_ID_BYTES) yield list.subarray(o, o + CHUNK_ID_BYTES);
}

/**
 * The data chunk IDs (n × 32 bytes) of a list tree; `onBlock` sees every list block ID (GC and
 * check count them as referenced too).
 */
export async function expandListTree(top: Buffer, depth: number, fetch: BlobFetcher, what: string, onBlock?: (id: Buffer) => void): Promise<Buffer> {
  let level = top;
  for (let d = depth; d > 0; d--) {
    const ids = [...idsOf(level)];
    if (onBlock) for (const id of ids) onBlock(id);
    const parts: Buffer[] = [];
    let k = 0;
    for await (const { id, blob } of fetch(ids, `the chunk list of ${what}`)) {
      if (!id.equals(ids[k]!)) throw new KuraError('E_CHUNK_MISSING', `chunk list block ${ids[k]!.toString('hex')} of ${what} was not delivered`);
      parts.push(openListBlob(blob, id));
      k++;
    }
    if (k !== ids.length) throw new KuraError('E_CHUNK_MISSING', `chunk list block ${ids[k]!.toString('hex')} of ${what} is missing`, { chunk: ids[k]!.toString('hex') });
    level = Buffer.concat(parts);
  }
  return level;
}
