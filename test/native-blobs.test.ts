import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { BlobSealer, blobInfo, chunkId, Compression, openBlob } from '../src/crypto/blob.js';
import { nativeAddon } from '../src/native.js';
import { splitByBytes, WholeSealer } from '../src/archiver/seal-whole.js';
import { collect, Prng, sqlDump } from './support/generate.js';

const keys = { dataKey: randomBytes(32), idKey: randomBytes(32) };

/** A batch as the backup hands it to a seal worker: chunks back to back, their offsets and IDs. */
function batch(chunks: Buffer[]) {
  const data = Buffer.concat(chunks);
  const offsets = new Uint32Array(chunks.length + 1);
  chunks.forEach((c, i) => (offsets[i + 1] = offsets[i]! + c.length));
  const ids = Buffer.concat(chunks.map((c) => chunkId(keys.idKey, c)));
  return { data, offsets, ids };
}

test('sealWhole: the blobs BlobSealer makes (but the nonces), on the pool threads, each opening to its chunk', async () => {
  const native = nativeAddon();
  if (!native && process.env.CI === 'true') assert.fail('the native addon is missing under CI=true');
  const whole = WholeSealer.of(native);
  assert.ok(whole, 'this build of the addon has sealWhole');
  const dump = await collect(sqlDump(3, 1 << 20));
  const chunks = [
    dump.subarray(0, 65536), // a dump's text: zstd
    new Prng(1).bytes(65536), // random: stored as it is
    Buffer.alloc(0), // empty
    Buffer.from('x'), // shorter than any zstd frame
    dump.subarray(65536, 65536 + (256 << 10)), // the largest chunk a repository cuts
    Buffer.alloc(70000, 0x20), // blank filler
  ];
  const { data, offsets, ids } = batch(chunks);
  for (const level of [3, 1, 0]) {
    const sealer = new BlobSealer(keys.dataKey, level);
    const idx = Uint32Array.from(chunks.keys());
    const { blobs, release } = await whole.seal(keys.dataKey, level, data, offsets, ids, idx);
    chunks.forEach((c, i) => {
      const id = ids.subarray(32 * i, 32 * (i + 1));
      const got = blobs[i];
      assert.ok(got, `chunk ${i} sealed at level ${level}`);
      const want = sealer.seal(c, id);
      // over 128 KiB the addon lets zstd split no block ahead (kura_native.c, seal_run): its own
      // frame, no larger than BlobSealer's by more than a few bytes in a thousand
      if (c.length <= 128 << 10) assert.equal(got.length, want.length, `chunk ${i} level ${level}: the same size as BlobSealer's`);
      else assert.ok(got.length <= want.length * 1.005 + 64, `chunk ${i} level ${level}: ${got.length} bytes against BlobSealer's ${want.length}`);
      assert.ok(got.subarray(0, 6).equals(want.subarray(0, 6)), `chunk ${i} level ${level}: the same header`);
      assert.ok(openBlob(Buffer.from(got), id, keys).equals(c), `chunk ${i} level ${level} opens to its bytes`);
    });
    if (level === 3) {
      assert.equal(blobInfo(blobs[0]!)!.compression, Compression.ZSTD);
      assert.equal(blobInfo(blobs[1]!)!.compression, Compression.NONE);
      assert.equal(blobInfo(blobs[2]!)!.compression, Compression.NONE);
    }
    // a blob bound to another ID does not open: the tag covers the chunk ID
    assert.throws(() => openBlob(Buffer.from(blobs[0]!), ids.subarray(32, 64), keys), { code: 'E_CHUNK_CORRUPT' });
    release();
  }

  // an output too small: the chunks before the one that did not fit are sealed, the caller seals the rest
  const idx = Uint32Array.from(chunks.keys());
  const out = Buffer.alloc(offsets[2]! + 100);
  const ends = new Uint32Array(chunks.length);
  const bad = await native!.sealWhole!(keys.dataKey, 3, data, offsets, idx, ids, randomBytes(12 * chunks.length), out, ends);
  assert.ok(bad >= 1 && bad < chunks.length, `stopped at ${bad}`);
  assert.ok(openBlob(out.subarray(0, ends[0]), ids.subarray(0, 32), keys).equals(chunks[0]!));
  // arguments that do not fit each other are refused before any thread touches them
  assert.throws(() => native!.sealWhole!(keys.dataKey, 3, data, offsets, Uint32Array.of(chunks.length), ids, randomBytes(12), out, new Uint32Array(1)), /out of range/);
  assert.throws(() => native!.sealWhole!(keys.dataKey, 3, data, offsets, idx, ids, randomBytes(12), out, ends), /out of range/);
});

test('splitByBytes: runs of about equal bytes, none empty, covering every chunk in order', () => {
  const offs = (sizes: number[]) => Uint32Array.from([0, ...sizes.map((_, i) => sizes.slice(0, i + 1).reduce((a, b) => a + b, 0))]);
  const table: Array<[number[], number[] | null, number, Array<[number, number]>]> = [
    [[10, 10, 10, 10], null, 2, [[0, 2], [2, 4]]],
    [[30, 10, 10, 10], null, 2, [[0, 1], [1, 4]]],
    [[10], null, 2, [[0, 1]]],
    [[], null, 2, []],
    [[10, 10, 10, 10, 10, 10], [1, 3, 5], 2, [[0, 2], [2, 3]]],
    [[5, 5, 5, 5, 5, 5], null, 3, [[0, 2], [2, 4], [4, 6]]],
    [[1, 1, 100], null, 2, [[0, 3]]],
    [[100, 1, 1], null, 2, [[0, 1], [1, 3]]],
  ];
  for (const [sizes, pick, parts, want] of table) {
    const idx = pick ? Uint32Array.from(pick) : Uint32Array.from(sizes.keys());
    assert.deepEqual(splitByBytes(offs(sizes), idx, parts), want, `${JSON.stringify(sizes)} ${JSON.stringify(pick)} in ${parts}`);
  }
});

test('openBlobs: a delta opens with its bases given as one buffer or as pieces joined on the pool thread; wrong or missing bases fail it', async () => {
  const native = nativeAddon();
  if (!native && process.env.CI === 'true') assert.fail('the native addon is missing under CI=true');
  assert.ok(native);
  const dump = await collect(sqlDump(5, 1 << 20));
  const bases = [dump.subarray(0, 60000), dump.subarray(60000, 130000), dump.subarray(130000, 200000)].map((b) => Buffer.from(b));
  // the chunk: the middle base with a few rows changed
  const chunk = Buffer.from(bases[1]!);
  for (let at = 1000; at < chunk.length; at += 9000) chunk.write('CHANGED', at);
  const baseIds = bases.map((b) => chunkId(keys.idKey, b));
  const id = chunkId(keys.idKey, chunk);
  const { blob, chosen } = new BlobSealer(keys.dataKey, 3).sealBest(chunk, id, [{ ids: baseIds, plain: Buffer.concat(bases) }]);
  assert.equal(chosen, 0);
  assert.equal(blobInfo(blob)!.compression, Compression.DELTA);
  const open = (dicts: Array<Buffer | Buffer[] | null>) => native.openBlobs(keys.dataKey, keys.idKey, [blob], id, dicts);

  const joined = await open([Buffer.concat(bases)]);
  assert.ok(Buffer.isBuffer(joined) && joined.equals(chunk));
  const pieces = await open([bases]);
  assert.ok(Buffer.isBuffer(pieces) && pieces.equals(chunk), 'bases given as pieces');
  // the bases in another order are another dictionary: the delta does not open to its chunk
  const swapped = await open([[bases[1]!, bases[0]!, bases[2]!]]);
  assert.equal(typeof swapped, 'number');
  assert.ok([3, 4].includes((swapped as number) & 7), `reason ${(swapped as number) & 7}`);
  // no bases, or more pieces than a delta can have: a delta without its bases (reason 5)
  assert.equal(await open([null]), 5);
  assert.equal(await open([[]]), 5);
  assert.equal(await open([Array.from({ length: 9 }, () => bases[0]!)]), 5);
});
