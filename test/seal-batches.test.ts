import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { kuraOk, tempDir } from './support/cli.js';
import { collect, sqlDump } from './support/generate.js';
import { Repository } from '../src/repository/repository.js';
import { backup, SealPool } from '../src/archiver/backup.js';
import { FileInput } from '../src/archiver/input.js';

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

/** A real pool that counts where the chunks it is given lie: left in the pipeline's segments, or copied. */
class PlacesPool extends SealPool {
  held = 0;
  copied = 0;
  override seal(...args: Parameters<SealPool['seal']>): ReturnType<SealPool['seal']> {
    const [, , offsets, , , elsewhere] = args;
    const n = offsets.length - 1;
    const inSegments = elsewhere ? elsewhere.src.filter((s) => s > 0).length : 0;
    this.held += inSegments;
    this.copied += n - inSegments;
    // late, so batches back up and the pipeline runs out of segments to hold
    return new Promise((r) => setTimeout(r, 20)).then(() => super.seal(...args));
  }
}

/**
 * The seal workers read the new chunks of a mostly new segment where the pipeline read them, and
 * get a night's few changed chunks copied; both kinds, in one batch too, make snapshots that
 * restore byte for byte (every chunk re-hashed against its ID on the way).
 */
test('new chunks left in their segments and copied ones are stored alike: a first backup, a night of scattered changes and new rows, restored byte for byte', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const db = { minSize: 1024, avgSize: 4096, maxSize: 16384 };
  const night1 = await collect(sqlDump(5, 40 * MiB));
  // night 2: a byte changed every 256 KiB (scattered: copied) and 12 MiB of new rows in the middle (held)
  const changed = Buffer.from(night1);
  for (let at = 1000; at < changed.length; at += 256 << 10) changed[at] = changed[at]! ^ 0x20;
  const night2 = Buffer.concat([changed.subarray(0, 17 * MiB), await collect(sqlDump(99, 12 * MiB)), changed.subarray(17 * MiB)]);
  const pools: PlacesPool[] = [];
  const ids: string[] = [];
  for (const [night, data] of [night1, night2].entries()) {
    const file = path.join(dir, `night${night + 1}.sql`);
    writeFileSync(file, data);
    const r = await Repository.open(repo, { passphrase: 'correct horse' });
    try {
      // four workers take eight batches at once: more segments than the pipeline holds
      const pool = new PlacesPool(null, r.store.local!.root, 4);
      pools.push(pool);
      const res = await backup(r, new FileInput(file), { source: 'db', tenant: 'default', pool, chunker: db });
      ids.push(res.id);
    } finally {
      r.close();
    }
  }
  const [first, second] = pools as [PlacesPool, PlacesPool];
  t.diagnostic(`chunks read where they lie / copied: first backup ${first.held} / ${first.copied}, night 2 ${second.held} / ${second.copied}`);
  assert.ok(first.held > 0 && first.copied > 0, `first backup: ${first.held} chunks read where they lie, ${first.copied} copied once the segments held ran out`);
  // 160 chunks changed by a byte, about 3 000 of new rows
  assert.ok(second.copied >= 100 && second.copied < 1000, `night 2: ${second.copied} scattered changed chunks copied`);
  assert.ok(second.held >= 1500, `night 2: ${second.held} chunks of new rows read where they lie`);
  for (const [night, data] of [night1, night2].entries()) {
    const out = path.join(dir, `restored${night + 1}`);
    kuraOk(['restore', '--repo', repo, ids[night]!, '--to', out], { env: { KURA_PASSPHRASE: 'correct horse' } });
    assert.ok(readFileSync(out).equals(data), `night ${night + 1} restores byte for byte`);
  }
  kuraOk(['check', '--repo', repo, '--read-data'], { env: { KURA_PASSPHRASE: 'correct horse' } });
});
