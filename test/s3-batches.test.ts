import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RemoteBatchSizer } from '../src/archiver/upload-pacing.js';

const MiB = 2 ** 20;

test('packs for an object store are aimed at a few MiB: the input per batch follows the compression the packs get', () => {
  const s = new RemoteBatchSizer(3.75 * MiB, 4 * MiB, 24 * MiB);
  assert.equal(s.next(), Math.round((3.75 * MiB) / 0.3), 'a first guess for a database export');
  // a dump that compresses 3.6:1 (bench/s3's): batches settle where their packs are the target
  for (let i = 0; i < 12; i++) s.seen(s.next(), s.next() / 3.6);
  assert.ok(Math.abs(s.next() / 3.6 - 3.75 * MiB) < 0.05 * MiB, `packs of ${(s.next() / 3.6 / MiB).toFixed(2)} MiB`);
  // incompressible input: batches no larger than the pack target allows, never under the floor
  for (let i = 0; i < 12; i++) s.seen(s.next(), s.next() * 1.001);
  assert.equal(s.next(), 4 * MiB);
  // deltas of a nightly export shrink to almost nothing: batches stop at the ceiling
  for (let i = 0; i < 12; i++) s.seen(s.next(), s.next() / 50);
  assert.equal(s.next(), 24 * MiB);
  s.seen(0, 0); // an empty batch teaches nothing
  assert.equal(s.next(), 24 * MiB);
});
