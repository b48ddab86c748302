import { IdSet } from '../repository/idset.js';
import { readCachedList } from '../repository/list-cache.js';
import { listFetcher } from '../repository/reader.js';
import type { Repository } from '../repository/repository.js';
import { snapshotChunkIds } from '../repository/snapshot.js';

/**
 * The chunk IDs of the source's latest snapshot (empty if none or unreadable), and which snapshot
 * that is. Its chunk list is plaintext: it is read while the key is still being derived, before
 * the backup's lock; runBackup keeps it only if the snapshot is still there once the lock is
 * held (then no GC can have removed its chunks, and none can until the backup ends).
 */
export async function previousChunks(repo: Repository, source: string): Promise<Previous & { id: string | null }> {
  const empty = { id: null, ...NO_PREVIOUS };
  const last = repo.catalogue.snapshots({ source }).at(-1);
  if (!last) return empty;
  try {
    const snap = await repo.readSnapshot(last.id);
    const cached = await readCachedList(repo.root, snap);
    if (cached) return { id: last.id, set: new IdSet(cached.ids), blocks: new IdSet(cached.blocks), sizes: cached.sizes, ends: cached.ends };
    const blocks: Buffer[] = [];
    const set = new IdSet(await snapshotChunkIds(snap, listFetcher(repo), (id) => blocks.push(id)));
    return { id: last.id, set, blocks: new IdSet(Buffer.concat(blocks)), sizes: null, ends: null };
  } catch {
    return empty; // unreadable: every lookup goes to the catalogue, as without it
  }
}

/** The previous generation: its chunks in list order, the blocks of its chunk list, and the chunks' sizes and end fingerprints if known. */
export interface Previous {
  set: IdSet;
  blocks: IdSet;
  sizes: Uint32Array | null;
  ends: Uint32Array | null;
}

export const NO_PREVIOUS: Previous = { set: new IdSet(Buffer.alloc(0)), blocks: new IdSet(Buffer.alloc(0)), sizes: null, ends: null };
