import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RemoteBatchSizer } from '../src/archiver/upload-pacing.js';
import { PackMerger } from '../src/archiver/pack-merge.js';
import { CHUNK_ID_BYTES } from '../src/crypto/blob.js';
import { encodePack, parsePackIndex } from '../src/repository/pack.js';
import { Prng } from './support/generate.js';

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

test('small packs gathered for one PUT make the very pack that sealing all their blobs at once would: same bytes, same ID, same index with digests', () => {
  const r = new Prng(21);
  // three batches' packs as their workers lay them out, of 40 + 25 + 60 blobs of 100 B-2 KiB
  const runs = [40, 25, 60].map((n) => {
    const blobs = Array.from({ length: n }, () => r.bytes(100 + (r.next() % 1948)));
    const ids = Array.from({ length: n }, () => r.bytes(CHUNK_ID_BYTES));
    const pack = encodePack(blobs, ids);
    const blobOffsets = Uint32Array.from([...pack.entries.map((e) => e.offset), pack.entries.at(-1)!.offset + pack.entries.at(-1)!.length]);
    const digests = Buffer.concat(pack.entries.map((e) => e.digest!));
    return { blobs, ids, run: { blobs: pack.bytes, blobOffsets, ids, digests } };
  });
  const sizes = runs.map((x) => x.run.blobOffsets.at(-1)!);
  // a target the first two do not reach and the third passes
  const merger = new PackMerger<string>(sizes[0]! + sizes[1]! + 10);
  assert.equal(merger.alone(runs[0]!.run), false, 'a pack under the target is gathered');
  assert.equal(merger.add(runs[0]!.run, 'a'), null);
  assert.equal(merger.add(runs[1]!.run, 'b'), null);
  const m = merger.add(runs[2]!.run, 'c')!;
  assert.ok(m, 'the third passes the target: the pack is taken');
  const whole = encodePack(runs.flatMap((x) => x.blobs), runs.flatMap((x) => x.ids));
  assert.equal(m.id, whole.id);
  assert.ok(Buffer.concat(m.parts).equals(whole.bytes));
  assert.equal(m.size, whole.bytes.length);
  assert.deepEqual(m.members, [{ tag: 'a', at: 0 }, { tag: 'b', at: sizes[0] }, { tag: 'c', at: sizes[0]! + sizes[1]! }]);
  assert.deepEqual(parsePackIndex(whole.bytes, whole.bytes.length), m.entries);
  assert.equal(merger.take(), null, 'nothing is left after a pack is taken');
  // a buffer released is gathered in again; what is left at the end is taken whole
  merger.release(m);
  assert.equal(merger.add(runs[1]!.run, 'd'), null);
  const last = merger.take()!;
  assert.equal(last.buffer, m.buffer, 'the released buffer, not a new one');
  assert.equal(last.id, encodePack(runs[1]!.blobs, runs[1]!.ids).id);
  assert.ok(merger.alone({ blobOffsets: Uint32Array.of(0, merger.target), ids: [r.bytes(CHUNK_ID_BYTES)] }), 'a pack at the target goes alone');
});
