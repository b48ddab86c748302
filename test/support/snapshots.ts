import { Repository } from '../../src/repository/repository.js';
import { blobInfo } from '../../src/crypto/blob.js';
import { readBlobs } from '../../src/repository/reader.js';
import { idsOf } from '../../src/repository/chunklist.js';
import { snapshotChunkIds } from '../../src/repository/snapshot.js';

/**
 * Every chunk a snapshot needs: its chunk list blocks, its data chunks, then the base chunks its
 * deltas name in their headers; read without keys.
 */
export async function referencedChunks(repoDir: string, snapshotId: string): Promise<Buffer[]> {
  const repo = await Repository.open(repoDir, null);
  try {
    const snap = await repo.readSnapshot(snapshotId);
    const blocks: Buffer[] = [];
    const data = [...idsOf(await snapshotChunkIds(snap, (ids, what) => readBlobs(repo, ids, what), (b) => blocks.push(b)))].map((b) => Buffer.from(b));
    const seen = new Set([...blocks, ...data].map((b) => b.toString('hex')));
    const bases: Buffer[] = [];
    for await (const { blob } of readBlobs(repo, data, snapshotId)) {
      for (const b of blobInfo(blob)?.bases ?? []) {
        if (seen.has(b.toString('hex'))) continue;
        seen.add(b.toString('hex'));
        bases.push(Buffer.from(b));
      }
    }
    return [...blocks, ...data, ...bases];
  } finally {
    repo.close();
  }
}
