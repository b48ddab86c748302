import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { CHUNK_ID_BYTES } from '../crypto/blob.js';
import { buildListTree } from './chunklist.js';
import type { DecodedSnapshot } from './snapshot.js';

/**
 * The last snapshot's chunk list of each source, flat, kept in the local repository's `cache/`
 * directory: the next backup of the source reads it in one go instead of fetching its list
 * blocks from packs one by one (a 4 KiB-chunk dump of 320 MiB has ~4 700 of them; that took a
 * sixth of a second at start-up, competing with the key derivation). A cache, never trusted:
 * the list tree is rebuilt from it and must give the snapshot's own top IDs and depth, or the
 * blocks are fetched as before. One file per source, replaced after every backup. It also keeps
 * the chunks' plaintext sizes (4 bytes each) and, since "KURALST3", a fingerprint of each chunk's
 * last bytes (archiver/chunk-ends.ts), which guide the choice of delta bases only (a wrong size or
 * fingerprint picks worse bases, never a wrong chunk): the catalogue is not asked for them one by
 * one. A "KURALST2" file is still read (without fingerprints).
 *
 *   "KURALST3" | snapshot ID (32 bytes) | chunk IDs (n × 32) | plaintext sizes (n × u32 LE) | end fingerprints (n × u32 LE)
 *   "KURALST2" | snapshot ID (32 bytes) | chunk IDs (n × 32) | plaintext sizes (n × u32 LE)
 */
const MAGIC = Buffer.from('KURALST3', 'latin1');
const MAGIC_V2 = Buffer.from('KURALST2', 'latin1');

function fileOf(root: string, source: string): string {
  return path.join(root, 'cache', 'lists', encodeURIComponent(source));
}

/** The chunk IDs of `snap` and the IDs of its list blocks, if the cache holds exactly its list. */
export async function readCachedList(root: string | null, snap: DecodedSnapshot): Promise<{ ids: Buffer; blocks: Buffer; sizes: Uint32Array; ends: Uint32Array | null } | null> {
  if (!root) return null;
  let bytes: Buffer;
  try {
    bytes = await fsp.readFile(fileOf(root, snap.header.source));
  } catch {
    return null;
  }
  const head = MAGIC.length + CHUNK_ID_BYTES;
  if (bytes.length < head || bytes.subarray(MAGIC.length, head).toString('hex') !== snap.id) return null;
  const v3 = bytes.subarray(0, MAGIC.length).equals(MAGIC);
  if (!v3 && !bytes.subarray(0, MAGIC.length).equals(MAGIC_V2)) return null;
  const n = snap.header.chunkCount;
  if (bytes.length !== head + n * (CHUNK_ID_BYTES + (v3 ? 8 : 4))) return null;
  const ids = bytes.subarray(head, head + n * CHUNK_ID_BYTES);
  const sizes = new Uint32Array(n);
  Buffer.from(sizes.buffer).set(bytes.subarray(head + n * CHUNK_ID_BYTES, head + n * (CHUNK_ID_BYTES + 4)));
  let ends: Uint32Array | null = null;
  if (v3) {
    ends = new Uint32Array(n);
    Buffer.from(ends.buffer).set(bytes.subarray(head + n * (CHUNK_ID_BYTES + 4)));
  }
  const blocks: Buffer[] = [];
  const tree = buildListTree(ids, (id) => blocks.push(id));
  if (tree.depth !== snap.listDepth || !tree.top.equals(snap.listIds)) return null;
  return { ids, blocks: Buffer.concat(blocks), sizes, ends };
}

/** Keep `ids` (and the chunks' `sizes` and `ends` fingerprints, u32 LE each) as the list of snapshot `id` of `source` (best effort: a cache that cannot be written is not an error). */
export async function writeCachedList(root: string | null, source: string, id: string, ids: Buffer, sizes: Buffer, ends: Buffer): Promise<void> {
  if (!root) return;
  const file = fileOf(root, source);
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    await fsp.mkdir(path.dirname(file), { recursive: true });
    await fsp.writeFile(tmp, Buffer.concat([MAGIC, Buffer.from(id, 'hex'), ids, sizes, ends]));
    await fsp.rename(tmp, file);
  } catch {
    await fsp.rm(tmp, { force: true }).catch(() => {});
  }
}
