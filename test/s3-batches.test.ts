import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RemoteBatchSizer } from '../src/archiver/upload-pacing.js';
import { gathered, GATHERED_BATCH_BLOBS, PackMerger } from '../src/archiver/pack-merge.js';
import { SharedRooms } from '../src/archiver/delta-bases.js';
import { bytesRead } from '../src/store/s3/scavenge.js';
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

test('the bases a batch reads from an object store go into buffers shared with the workers, reused batch after batch, the smallest dropped beyond the number kept', () => {
  const rooms = new SharedRooms(2);
  const a = rooms.take(3 * MiB);
  assert.ok(a.buffer instanceof SharedArrayBuffer, 'shared: a message to a worker names it, and copies nothing');
  assert.equal(a.length, 3 * MiB);
  rooms.give(a);
  const b = rooms.take(1 * MiB);
  assert.equal(b.buffer, a.buffer, 'a smaller batch reads into the same buffer');
  const c = rooms.take(2 * MiB);
  assert.notEqual(c.buffer, a.buffer, 'one in use is not handed out twice');
  const d = rooms.take(5 * MiB);
  rooms.give(b);
  rooms.give(c);
  rooms.give(d);
  const kept = [rooms.take(1), rooms.take(1), rooms.take(1)].map((x) => x.buffer);
  assert.equal(kept[0], a.buffer, 'a small batch takes the smallest room that fits');
  assert.ok(kept.includes(d.buffer) && kept.includes(a.buffer), 'the two largest are kept');
  assert.ok(!kept.includes(c.buffer), 'the smallest was dropped');
});

test('bytes read from sockets have the young generation collected every few MiB: buffers nobody holds are freed without waiting for V8', async () => {
  const answers = () => {
    for (let i = 0; i < 128; i++) Buffer.alloc(64 << 10); // 8 MiB of socket buffers, read and dropped
  };
  let held = 0;
  // V8 may collect on its own meanwhile (other tests' garbage): then once more
  for (let tries = 0; tries < 5 && held <= 7 * MiB; tries++) {
    answers();
    held = process.memoryUsage().arrayBuffers;
  }
  assert.ok(held > 7 * MiB, `V8 left the dead buffers alone (${(held / MiB).toFixed(1)} MiB): what this test is about`);
  for (let i = 0; i < 8; i++) bytesRead(1 * MiB);
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  const after = process.memoryUsage().arrayBuffers;
  assert.ok(held - after > 6 * MiB, `external memory ${(held / MiB).toFixed(1)} MiB, then ${(after / MiB).toFixed(1)} MiB`);
});

/** A PUT costs a round trip, a file on a local disk less than gathering a thousand small blobs on the main thread. */
test('small packs are gathered on an object store whatever their batch, on a local disk only from batches of at most 256 chunks', () => {
  const table: Array<[blobs: number, localDisk: boolean, gathered: boolean]> = [
    [1, true, true],
    [16, true, true],
    [GATHERED_BATCH_BLOBS, true, true],
    [GATHERED_BATCH_BLOBS + 1, true, false],
    [2000, true, false],
    [1, false, true],
    [GATHERED_BATCH_BLOBS + 1, false, true],
    [2000, false, true],
  ];
  for (const [blobs, localDisk, want] of table) assert.equal(gathered(blobs, localDisk), want, `${blobs} blobs on ${localDisk ? 'a local disk' : 'an object store'}`);
});
