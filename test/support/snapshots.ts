import { Repository } from '../../src/repository/repository.js';
import { readBlobs } from '../../src/repository/reader.js';
import { idsOf } from '../../src/repository/chunklist.js';
import { snapshotChunkIds } from '../../src/repository/snapshot.js';

/** Every chunk a snapshot references (its chunk list blocks, then its data chunks), read without keys. */
export async function referencedChunks(repoDir: string, snapshotId: string): Promise<Buffer[]> {
  const repo = await Repository.open(repoDir, null);
  try {
    const snap = await repo.readSnapshot(snapshotId);
    const blocks: Buffer[] = [];
    const data = await snapshotChunkIds(snap, (ids, what) => readBlobs(repo, ids, what), (b) => blocks.push(b));
    return [...blocks, ...[...idsOf(data)].map((b) => Buffer.from(b))];
  } finally {
    repo.close();
  }
}
