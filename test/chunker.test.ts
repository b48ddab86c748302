import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chunkLengths, defaultChunkerParams, FastCdc, gearTable, validateChunkerParams } from '../src/chunker/fastcdc.js';
import { chunkId } from '../src/crypto/blob.js';
import { ChunkPipeline, HELD_MAX } from '../src/chunker/pipeline.js';
import { nativeAddon } from '../src/native.js';
import { IdSet } from '../src/repository/idset.js';
import { FileInput, ReadAhead } from '../src/archiver/input.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createCipheriv, createDecipheriv } from 'node:crypto';
import path from 'node:path';
import { collect, Prng, sha256, sqlDump } from './support/generate.js';

// Golden vectors: chunk boundaries and IDs are part of repository format v1. If one of these
// fails, the format changed: that needs a new format version, not a new vector.
const SEED = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const SMALL = { minSize: 256, avgSize: 1024, maxSize: 4096 };

const GOLDEN_TEXT_LENGTHS = [
  50867, 65683, 87349, 66684, 68767, 69652, 70485, 99229, 81391, 66311, 70723, 52316, 82835, 111497, 70839, 71171, 100258, 68931, 55327, 76972, 70787,
  75277, 66202, 79426, 103559, 76668, 68872, 69385, 105952, 77017, 77470, 74846, 67063, 84311, 17617, 67222, 39210, 91681, 30555, 71592, 70530, 69050,
  71425, 71966, 67468, 75068, 88950, 71904, 79519, 18318, 72785, 68435, 45075, 22143, 71514, 38520, 65669, 65775, 70960, 81626, 5605,
];
const GOLDEN_RANDOM_SMALL = [
  1047, 1420, 455, 1310, 1142, 1311, 1070, 1065, 1044, 931, 591, 1049, 1450, 1173, 1126, 334, 1221, 1025, 1110, 711, 1337, 1026, 1221, 1659, 791, 2063,
  1115, 1313, 433, 1067, 1370, 1518, 802, 454, 1523, 1037, 577, 1390, 1128, 1078, 1680, 1353, 492, 529, 1142, 1220, 1298, 1570, 1076, 1066, 1046, 1131,
  1132, 1651, 1025, 1134, 323, 1267, 428, 1052, 434,
];

test('the gear table is derived from the seed exactly as format v1 says', () => {
  const g = gearTable(SEED);
  assert.deepEqual([g[0]! >>> 0, g[1]! >>> 0, g[255]! >>> 0], [3406632731, 1876509835, 2738993085]);
});

/** The repository default until 256 KiB: the golden vector below was cut with these sizes. */
const AT_64K = { minSize: 16 << 10, avgSize: 64 << 10, maxSize: 256 << 10 };

test('golden vector: boundaries of a SQL-like dump with 16/64/256 KiB parameters', async () => {
  const text = await collect(sqlDump(7, 4 << 20));
  assert.equal(sha256(text), 'b8505b8013b29391a3b2c92bdb382f6f375171fb2f2ce8bb32b5d82bc568bbe3', 'the test input generator changed');
  assert.deepEqual(chunkLengths(text, AT_64K, SEED), GOLDEN_TEXT_LENGTHS);
});

test('golden vector: boundaries of random bytes with 256/1024/4096 parameters', () => {
  assert.deepEqual(chunkLengths(new Prng(42).bytes(64 << 10), SMALL, SEED), GOLDEN_RANDOM_SMALL);
});

test('golden vector: keyed BLAKE3 chunk IDs', async () => {
  const text = await collect(sqlDump(7, 4 << 20));
  const key = Buffer.alloc(32, 7);
  const ids: string[] = [];
  let off = 0;
  for (const len of GOLDEN_TEXT_LENGTHS.slice(0, 3)) {
    ids.push(chunkId(key, text.subarray(off, off + len)).toString('hex'));
    off += len;
  }
  assert.deepEqual(ids, [
    '3961ff990ef0ccda43583da3c2a899431f43becb2ee4d5de6fff3dda7ea2ac0f',
    '4302b2cd9906b15d8e89e92a52dfba1ba5c28d3f77c4f1db409f25042b55ee3c',
    'f8f9ecdbbb5a8ee82f7fb9a43ecd5b032cfe67a53ca7001a5ac79f09fa274997',
  ]);
});

test('boundaries do not depend on how the input is split into reads', () => {
  const data = new Prng(5).bytes(200 << 10);
  const whole = chunkLengths(data, SMALL, SEED);
  for (const readSize of [1, 7, 255, 256, 1023, 4096, 65537]) {
    assert.deepEqual(chunkLengths(data, SMALL, SEED, readSize), whole, `read size ${readSize}`);
  }
  // irregular reads
  const r = new Prng(9);
  const cdc = new FastCdc(SMALL, SEED);
  const got: number[] = [];
  for (let o = 0; o < data.length; ) {
    const n = 1 + (r.next() % 5000);
    cdc.push(data.subarray(o, o + n), (c) => got.push(c.length));
    o += n;
  }
  cdc.finish((c) => got.push(c.length));
  assert.deepEqual(got, whole);
});

test('every chunk but the last is within min..max, and they add up to the input', () => {
  for (const data of [new Prng(3).bytes(300 << 10), Buffer.alloc(300 << 10), Buffer.alloc(300 << 10, 0xff)]) {
    const lens = chunkLengths(data, SMALL, SEED);
    assert.equal(lens.reduce((a, b) => a + b, 0), data.length);
    for (const l of lens.slice(0, -1)) assert.ok(l >= SMALL.minSize && l <= SMALL.maxSize, `chunk of ${l}`);
  }
});

test('chunks emitted across pushes carry the right bytes', () => {
  const data = new Prng(11).bytes(50 << 10);
  const cdc = new FastCdc(SMALL, SEED);
  const parts: Buffer[] = [];
  for (let o = 0; o < data.length; o += 333) cdc.push(data.subarray(o, o + 333), (c) => parts.push(Buffer.from(c)));
  cdc.finish((c) => parts.push(Buffer.from(c)));
  assert.ok(Buffer.concat(parts).equals(data));
});

test('empty input yields no chunk; inputs shorter than min yield one', () => {
  assert.deepEqual(chunkLengths(Buffer.alloc(0), SMALL, SEED), []);
  assert.deepEqual(chunkLengths(Buffer.alloc(1), SMALL, SEED), [1]);
  assert.deepEqual(chunkLengths(Buffer.alloc(255), SMALL, SEED), [255]);
});

test('chunker parameters are validated', () => {
  assert.equal(validateChunkerParams(defaultChunkerParams), null);
  assert.match(validateChunkerParams({ minSize: 512, avgSize: 1000, maxSize: 4096 })!, /power of two/);
  assert.match(validateChunkerParams({ minSize: 4096, avgSize: 1024, maxSize: 8192 })!, /min < avg < max/);
});

/** Chunks and IDs as one thread makes them: FastCdc, then keyed BLAKE3 per chunk. */
function reference(data: Buffer, params: typeof SMALL, key: Buffer): Array<[number, string]> {
  let off = 0;
  return chunkLengths(data, params, SEED, 1 << 20).map((len) => {
    const id = chunkId(key, data.subarray(off, off + len)).toString('hex');
    off += len;
    return [len, id];
  });
}

async function* pieces(data: Buffer, sizes: number[]): AsyncGenerator<Buffer> {
  let off = 0;
  for (let i = 0; off < data.length; i++) {
    const n = sizes[i % sizes.length]!;
    yield Buffer.from(data.subarray(off, off + n)); // a fresh buffer, as a stream gives
    off += n;
  }
}

async function viaPipeline(input: AsyncIterable<Uint8Array> | FileInput, params: typeof SMALL, key: Buffer, native: boolean): Promise<{ chunks: Array<[number, string]>; segments: number }> {
  const p = new ChunkPipeline();
  try {
    p.start(params, SEED, key, { native });
    assert.equal(p.native, native, native ? 'the native addon is used' : 'TypeScript is used');
    const chunks: Array<[number, string]> = [];
    let segments = 0;
    await p.run(input, async (s) => {
      for (let i = 0; i < s.cuts.length / 2; i++) chunks.push([s.cuts[2 * i + 1]!, s.ids.subarray(32 * i, 32 * i + 32).toString('hex')]);
      segments++;
    });
    return { chunks, segments };
  } finally {
    await p.close();
  }
}

test('the two-thread pipeline gives the same chunks and IDs as one thread, however the input arrives', async (t) => {
  const key = Buffer.alloc(32, 9);
  const dir = mkdtempSync(path.join(tmpdir(), 'kura-pipeline-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const MiB = 1 << 20;
  const db = { minSize: 1024, avgSize: 4096, maxSize: 16384 };
  const text = await collect(sqlDump(3, 9 * MiB + 12345));
  const cases: Array<[string, Buffer, typeof SMALL]> = [
    ['empty', Buffer.alloc(0), db],
    ['one byte', Buffer.from('x'), db],
    ['exactly one segment (2 MiB)', new Prng(1).bytes(2 * MiB), db],
    ['exactly two segments', new Prng(2).bytes(4 * MiB), db],
    ['a 9 MiB dump, 4 KiB chunks', text, db],
    ['the smallest chunks the format allows (64 B)', new Prng(3).bytes(5 * MiB), { minSize: 64, avgSize: 256, maxSize: 1024 }],
    ['64 KiB chunks', text, AT_64K],
    ['default 256 KiB chunks', text, defaultChunkerParams],
  ];
  const paths = nativeAddon() ? [true, false] : [false];
  for (const [what, data, params] of cases) {
    const want = reference(data, params, key);
    const file = path.join(dir, 'in');
    writeFileSync(file, data);
    for (const native of paths) {
      const how = native ? 'native' : 'TypeScript';
      const fromFile = await viaPipeline(new FileInput(file), params, key, native);
      assert.deepEqual(fromFile.chunks, want, `${what} (${how}): read straight into the segments`);
      assert.equal(fromFile.segments, Math.floor(data.length / (2 * MiB)) + 1, `${what}: segments`);
      for (const sizes of [[65536], [1, 4095, 70000, 4 * MiB + 1]]) {
        const streamed = await viaPipeline(pieces(data, sizes), params, key, native);
        assert.deepEqual(streamed.chunks, want, `${what} (${how}): streamed in pieces of ${sizes.join('/')}`);
      }
    }
  }
});

test('the native addon is built and loads (required under CI=true; elsewhere kura falls back to TypeScript)', (t) => {
  if (process.env.CI !== 'true' && !nativeAddon()) {
    t.diagnostic('native addon not built here: the TypeScript path was tested alone');
    return;
  }
  assert.ok(nativeAddon(), 'build/Release/kura_native.node loads (npm run build makes it)');
  // and it refuses nonsense instead of reading out of bounds
  const n = nativeAddon()!;
  assert.throws(() => n.cut(Buffer.alloc(10), 0, 20, true, 1024, 4096, 16384, 0, 0, new Int32Array(256), new Uint32Array(8)), /out of range/);
  assert.throws(() => n.cut(Buffer.alloc(10), 0, 10, true, 1024, 4096, 16384, 0, 0, new Int32Array(255), new Uint32Array(8)), /out of range/);
});

test('a failing input fails the pipeline run with its own error and stops the stream', async () => {
  const p = new ChunkPipeline();
  p.start({ minSize: 1024, avgSize: 4096, maxSize: 16384 }, SEED, Buffer.alloc(32, 1));
  let closed = false;
  async function* broken(): AsyncGenerator<Buffer> {
    try {
      yield new Prng(4).bytes(6 << 20);
      throw new Error('pg_dump died');
    } finally {
      closed = true;
    }
  }
  await assert.rejects(
    p.run(broken(), () => {}),
    /pg_dump died/,
  );
  await p.close();
  assert.ok(closed, 'the input was closed');
});

test('a held segment keeps its chunks while the pipeline reads on; at most HELD_MAX are held, and released ones are read into again', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kura-hold-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const MiB = 1 << 20;
  const params = { minSize: 1024, avgSize: 4096, maxSize: 16384 };
  const key = Buffer.alloc(32, 3);
  const data = new Prng(11).bytes(40 * MiB + 777); // 21 segments
  const want = reference(data, params, key);
  const file = path.join(dir, 'in');
  writeFileSync(file, data);
  for (const native of nativeAddon() ? [true, false] : [false]) {
    const p = new ChunkPipeline();
    try {
      p.start(params, SEED, key, { native });
      // every other segment is held till the end (as batches waiting to be sealed hold them), the
      // rest for one segment more; each held chunk is checked against its ID when released
      const got: Array<[number, string]> = [];
      const held: Array<{ views: Buffer[]; ids: string[]; release: () => void }> = [];
      let refused = 0;
      let segments = 0;
      const check = (h: (typeof held)[number], what: string) => h.views.forEach((v, i) => assert.equal(chunkId(key, v).toString('hex'), h.ids[i], `${what}: a held chunk was overwritten`));
      let short: (typeof held)[number] | null = null;
      await p.run(new FileInput(file), (s) => {
        const views: Buffer[] = [];
        const ids: string[] = [];
        for (let i = 0; i < s.cuts.length / 2; i++) {
          got.push([s.cuts[2 * i + 1]!, s.ids.subarray(32 * i, 32 * i + 32).toString('hex')]);
          views.push(s.data.subarray(s.cuts[2 * i]!, s.cuts[2 * i]! + s.cuts[2 * i + 1]!));
          ids.push(s.ids.subarray(32 * i, 32 * i + 32).toString('hex'));
        }
        if (short) {
          check(short, `segment ${segments - 1}`);
          short.release();
          short = null;
        }
        const release = s.hold();
        if (!release) refused++;
        else if (segments % 2 === 0) held.push({ views, ids, release });
        else short = { views, ids, release };
        segments++;
      });
      assert.deepEqual(got, want, 'the same chunks and IDs with segments held');
      assert.equal(held.length, HELD_MAX, 'every other segment held till the end, as many as HELD_MAX allows');
      assert.ok(refused > 0, 'holds beyond HELD_MAX are refused (the caller copies instead)');
      for (const h of held) {
        check(h, 'at the end');
        h.release();
        h.release(); // a second release changes nothing
      }
      (short as { release: () => void } | null)?.release();
      // released, they serve the next run (no more holds outstanding)
      const again = await p.run(new FileInput(file), (s) => {
        const r = s.hold();
        assert.ok(r, 'a hold is granted once the earlier ones are released');
        r!();
      });
      assert.equal(again, undefined);
    } finally {
      await p.close();
    }
  }
});

test('IdSet: every listed chunk ID is found, others are not, duplicates are counted once', () => {
  const r = new Prng(11);
  const ids = r.bytes(32 * 5000);
  const withDup = Buffer.concat([ids, ids.subarray(32 * 10, 32 * 20)]);
  const set = new IdSet(withDup);
  assert.equal(set.size, 5000);
  for (let i = 0; i < 5000; i++) assert.ok(set.has(ids.subarray(i * 32, i * 32 + 32)), `member ${i}`);
  const others = r.bytes(32 * 5000);
  for (let i = 0; i < 5000; i++) assert.ok(!set.has(others.subarray(i * 32, i * 32 + 32)), `non-member ${i}`);
  // same first word, different rest: a probe must compare all 32 bytes
  const twin = Buffer.from(ids.subarray(0, 32));
  twin[31] ^= 1;
  assert.ok(!set.has(twin));
  // unaligned IDs (a slice of a bigger buffer) are found too
  const shifted = Buffer.concat([Buffer.alloc(3), ids.subarray(64, 96)]).subarray(3);
  assert.ok(set.has(shifted));
  assert.equal(new IdSet(Buffer.alloc(0)).has(twin), false);
  assert.throws(() => new IdSet(Buffer.alloc(33)), RangeError);
});

test('ReadAhead: reads an export ahead, bounded, in order; errors arrive in place; close() stops the export', async () => {
  const tick = () => new Promise((r) => setImmediate(r));
  // in order, everything
  let produced = 0;
  async function* numbered(n: number, fail = false): AsyncGenerator<Buffer> {
    for (let i = 0; i < n; i++) {
      produced++;
      yield Buffer.alloc(1000, i);
    }
    if (fail) throw new Error('export died');
  }
  const got: number[] = [];
  for await (const b of new ReadAhead(numbered(50), 10_000)) got.push(b[0]!);
  assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => i));
  // it reads before anyone asks, but not more than its bound
  produced = 0;
  const ahead = new ReadAhead(numbered(1000), 10_000);
  for (let i = 0; i < 20; i++) await tick();
  assert.ok(produced >= 10 && produced <= 12, `read ahead ${produced} pieces of 1000 bytes with a bound of 10 000`);
  await ahead.close();
  // an error reaches the consumer after the pieces before it
  const seen: number[] = [];
  await assert.rejects(async () => {
    for await (const b of new ReadAhead(numbered(5, true), 1 << 20)) seen.push(b[0]!);
  }, /export died/);
  assert.deepEqual(seen, [0, 1, 2, 3, 4]);
  // close() without ever consuming stops the source (its finally runs: the export is killed)
  let stopped = false;
  async function* endless(): AsyncGenerator<Buffer> {
    try {
      for (;;) {
        await tick();
        yield Buffer.alloc(10);
      }
    } finally {
      stopped = true;
    }
  }
  const idle = new ReadAhead(endless(), 1 << 20);
  await tick();
  await idle.close();
  assert.ok(stopped, 'the source was stopped');
  // a consumer that stops early stops the source too
  stopped = false;
  for await (const b of new ReadAhead(endless(), 1 << 20)) if (b.length) break;
  assert.ok(stopped);
});

/** The native addon; without it the test is skipped, except under CI=true where that fails. */
function addonOrSkip(t: { skip: (why: string) => void }): ReturnType<typeof nativeAddon> {
  const n = nativeAddon();
  if (!n) {
    if (process.env.CI === 'true') assert.fail('the native addon is required under CI=true');
    t.skip('native addon not built here');
  }
  return n;
}

test('native hashChunks: keyed BLAKE3 of many chunks side by side equals one chunk at a time, at every length class', (t) => {
  const n = addonOrSkip(t);
  if (!n) return;
  const key = Buffer.alloc(32, 7);
  const r = new Prng(21);
  // around every BLAKE3 chunk (1 KiB) and block (64 B) edge up to the 16-chunk batch limit and past it
  const lengths = [0, 1, 63, 64, 65, 1023, 1024, 1025, 1088, 2047, 2048, 2049, 3072, 4095, 4096, 4097, 15360, 16383, 16384, 16385, 17408, 65536, 100_001];
  for (let i = 0; i < 2000; i++) lengths.push(1 + (r.next() % 20000));
  const total = lengths.reduce((a, b) => a + b, 0);
  const data = r.bytes(total + 5);
  const cuts = new Uint32Array(lengths.length * 2);
  let at = 5; // unaligned
  lengths.forEach((len, i) => {
    cuts[2 * i] = at;
    cuts[2 * i + 1] = len;
    at += len;
  });
  const ids = Buffer.alloc(lengths.length * 32);
  n.hashChunks(data, cuts, lengths.length, key, ids);
  lengths.forEach((len, i) => {
    assert.equal(ids.subarray(32 * i, 32 * i + 32).toString('hex'), chunkId(key, data.subarray(cuts[2 * i]!, cuts[2 * i]! + len)).toString('hex'), `a chunk of ${len} bytes`);
  });
  assert.throws(() => n.hashChunks(data, Uint32Array.of(total, 10), 1, key, Buffer.alloc(32)), /out of range/);
});

test('native AES-256-GCM blobs: sealed natively they open with node:crypto, sealed with node:crypto they open natively; altered ones do not', (t) => {
  const n = addonOrSkip(t);
  if (!n) return;
  const r = new Prng(31);
  const key = r.bytes(32);
  for (const size of [0, 1, 15, 16, 17, 4096, 100_000]) {
    const header = r.bytes(1 + (size % 40));
    const id = r.bytes(32);
    const nonce = r.bytes(12);
    const body = r.bytes(size);
    const blob = n.sealBlob(key, header, id, nonce, body);
    assert.equal(blob.length, header.length + 12 + size + 16);
    assert.ok(blob.subarray(0, header.length).equals(header) && blob.subarray(header.length, header.length + 12).equals(nonce));
    const d = createDecipheriv('aes-256-gcm', key, nonce);
    d.setAAD(Buffer.concat([header, id]));
    d.setAuthTag(blob.subarray(blob.length - 16));
    assert.ok(Buffer.concat([d.update(blob.subarray(header.length + 12, blob.length - 16)), d.final()]).equals(body), `${size} bytes: node:crypto opens it`);
    const c = createCipheriv('aes-256-gcm', key, nonce);
    c.setAAD(Buffer.concat([header, id]));
    const theirs = Buffer.concat([header, nonce, c.update(body), c.final(), c.getAuthTag()]);
    assert.ok(theirs.equals(blob), `${size} bytes: the same bytes as node:crypto makes`);
    assert.ok(n.openBody(key, theirs, header.length, id)!.equals(body), `${size} bytes: opens natively`);
    const altered = Buffer.from(blob);
    altered[header.length + 12 + Math.floor(size / 2)] ^= size > 0 ? 1 : 0;
    altered[altered.length - 1] ^= size > 0 ? 0 : 1;
    assert.equal(n.openBody(key, altered, header.length, id), null, `${size} bytes: an altered blob does not open`);
    assert.equal(n.openBody(key, blob, header.length, Buffer.alloc(32)), null, `${size} bytes: not under another chunk's ID`);
    assert.equal(n.openBody(r.bytes(32), blob, header.length, id), null, `${size} bytes: not with another key`);
  }
});
