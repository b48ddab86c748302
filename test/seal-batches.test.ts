import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { kuraOk, tempDir } from './support/cli.js';
import { sqlDump } from './support/generate.js';
import { Repository } from '../src/repository/repository.js';
import { backup, SealPool } from '../src/archiver/backup.js';

const MiB = 1 << 20;

/**
 * A real pool that notes how many batches it held at once. Each batch starts 30 ms late, so
 * batches back up whether this machine chunks or seals faster: the backup's own bound is all
 * that limits them.
 */
class CountingPool extends SealPool {
  held = 0;
  peak = 0;
  calls = 0;
  override seal(...args: Parameters<SealPool['seal']>): ReturnType<SealPool['seal']> {
    this.calls++;
    this.peak = Math.max(this.peak, ++this.held);
    return new Promise((r) => setTimeout(r, 30))
      .then(() => super.seal(...args))
      .finally(() => this.held--);
  }
}

/**
 * Each seal worker holds two requests, so a third batch waiting in the pool keeps no worker
 * busier; it only holds its batch (4 MiB on a local disk, up to 24 MiB for an object store) and
 * then its output in memory. The rule is the same for every store; a local one is tested here.
 */
test('a backup gives the seal workers as many batches as they hold, and none waits besides', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const r = await Repository.open(repo, { passphrase: 'correct horse' });
  try {
    const pool = new CountingPool(null, r.store.local!.root);
    const res = await backup(r, sqlDump(7, 48 * MiB), { source: 'db', tenant: 'default', pool });
    assert.ok(pool.calls >= 8, `${pool.calls} batches`);
    assert.equal(pool.peak, pool.slots, `${pool.peak} batches held at once by a pool that takes ${pool.slots}`);
    assert.ok(res.header.chunkCount > 0);
  } finally {
    r.close();
  }
});
