import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { kura, kuraAsync, kuraJson, kuraOk, tempDir } from './support/cli.js';
import { chunkerFor } from '../src/agent/run.js';
import type { SourceConfig } from '../src/config/schema.js';
import { Prng, sha256 } from './support/generate.js';
import { alignedBases, endPrint, EndIndex, END_BYTES } from '../src/archiver/chunk-ends.js';
import { readCachedList, writeCachedList } from '../src/repository/list-cache.js';
import { nativeAddon } from '../src/native.js';
import { Repository } from '../src/repository/repository.js';
import { defaultChunkerParams } from '../src/chunker/fastcdc.js';

test('a chunk end fingerprint is of its last bytes only', () => {
  const a = Buffer.from('x'.repeat(100) + 'the same last thirty-two bytes!!');
  const b = Buffer.from('y'.repeat(7) + 'the same last thirty-two bytes!!');
  assert.equal(endPrint(a, 0, a.length), endPrint(b, 0, b.length));
  assert.notEqual(endPrint(a, 0, a.length), endPrint(a, 0, a.length - 1));
  // a chunk shorter than the window: all of it, from its own start
  const short = Buffer.from('abcabc');
  assert.equal(endPrint(short, 3, 6), endPrint(Buffer.from('abc'), 0, 3));
  assert.notEqual(endPrint(short, 2, 6), endPrint(short, 3, 6));
  assert.equal(END_BYTES, 32);
});

test('EndIndex finds the old chunk that ended the same way; of several, the nearest to the estimate', () => {
  const ends = Uint32Array.from([10, 20, 30, 20, 40, 20, 0xffffffff]);
  const idx = new EndIndex(ends);
  const table: Array<[fp: number, near: number, want: number]> = [
    [10, 5, 0],
    [30, 0, 2],
    [40, 0, 4],
    [20, 0, 1],
    [20, 3, 3],
    [20, 4, 3],
    [20, 6, 5],
    [0xffffffff, 0, 6],
    [25, 2, -1],
    [0, 0, -1],
  ];
  for (const [fp, near, want] of table) assert.equal(idx.find(fp, near), want, `find(${fp}, near ${near})`);
  assert.equal(new EndIndex(new Uint32Array(0)).find(1, 0), -1);
});

test('alignedBases: the old chunks since the last match, or the match and the one before it', () => {
  const table: Array<[from: number, match: number, want: number[]]> = [
    [5, 5, [5]], // the boundaries held: exactly the old chunk
    [5, 6, [5, 6]], // a boundary vanished: both old chunks
    [5, 7, [5, 6, 7]],
    [5, 9, [8, 9]], // too far apart to be one region: the match and its predecessor
    [5, 2, [1, 2]], // the match lies behind (rows moved back)
    [0, 0, [0]],
    [3, 0, [0]],
  ];
  for (const [from, match, want] of table) assert.deepEqual(alignedBases(from, match), want, `alignedBases(${from}, ${match})`);
});

test('the list cache keeps end fingerprints, and a cache written before them (KURALST2) still serves', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo, '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384']);
  const file = path.join(dir, 'a.sql');
  writeFileSync(file, oltpDump(20_000, new Set()).data);
  const snap = kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'a', '--file', file]);
  const r = await Repository.open(repo, null);
  try {
    const s = await r.readSnapshot(snap.id);
    const v3 = (await readCachedList(repo, s))!;
    assert.ok(v3.ends && v3.ends.length === s.header.chunkCount, 'fingerprints kept');
    // the same list as an older kura wrote it
    const n = s.header.chunkCount;
    const v2 = Buffer.concat([Buffer.from('KURALST2', 'latin1'), Buffer.from(snap.id, 'hex'), v3.ids, Buffer.from(v3.sizes.buffer)]);
    writeFileSync(path.join(repo, 'cache', 'lists', 'a'), v2);
    const old = (await readCachedList(repo, s))!;
    assert.equal(old.ends, null);
    assert.deepEqual([...old.sizes], [...v3.sizes]);
    assert.equal(old.ids.length, n * 32);
    // a truncated v3 file is not believed
    await writeCachedList(repo, 'a', snap.id, v3.ids, Buffer.from(v3.sizes.buffer), Buffer.alloc(4 * n - 4));
    assert.equal(await readCachedList(repo, s), null);
  } finally {
    r.close();
  }
});

/**
 * An OLTP table dumped in heap order: `rows` accounts of ~100 bytes (blank filler). An updated
 * row leaves its place and its new version lands at the end of the table (a full table's first
 * updates go to new pages), so every region of the dump changes a little and everything after it
 * shifts by the rows it lost.
 */
function oltpDump(rows: number, updated: Set<number>): { data: Buffer } {
  const lines: string[] = [];
  const moved: string[] = [];
  for (let id = 1; id <= rows; id++) {
    const line = `${id}\t${1 + Math.floor(id / 10000)}\t${updated.has(id) ? (id * 7919) % 100000 : 0}\t${' '.repeat(84)}\n`;
    (updated.has(id) ? moved : lines).push(line);
  }
  return { data: Buffer.from(lines.concat(moved).join('')) };
}

test('changed chunks whose neighbours all changed still find their old version: by how they end', async (t) => {
  const dir = tempDir(t);
  const rows = 120_000; // ~12 MB
  const night1 = oltpDump(rows, new Set()).data;
  const prng = new Prng(21);
  const updated = new Set<number>();
  while (updated.size < rows / 33) updated.add(1 + (prng.next() % rows));
  const night2 = oltpDump(rows, updated).data;
  const f1 = path.join(dir, 'night1.sql');
  const f2 = path.join(dir, 'night2.sql');
  writeFileSync(f1, night1);
  writeFileSync(f2, night2);

  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo, '--chunk-min', '16384', '--chunk-avg', '65536', '--chunk-max', '262144']);
  kuraJson(['backup', '--repo', repo, '--name', 'accounts', '--file', f1]);
  // the same repository without its list cache: bases found by bytes from the last unchanged chunk
  const walk = path.join(dir, 'walk');
  cpSync(repo, walk, { recursive: true });
  rmSync(path.join(walk, 'cache'), { recursive: true, force: true });
  mkdirSync(path.join(walk, 'cache'));

  const aligned = kuraJson<{ id: string; newBytes: number; newChunks: number; chunks: number }>(['backup', '--repo', repo, '--name', 'accounts', '--file', f2]);
  const byBytes = kuraJson<{ id: string; newBytes: number }>(['backup', '--repo', walk, '--name', 'accounts', '--file', f2]);
  t.diagnostic(`night 2: ${aligned.newBytes} bytes with end fingerprints, ${byBytes.newBytes} by bytes alone`);
  assert.ok(aligned.newBytes * 10 < byBytes.newBytes * 7, `aligned ${aligned.newBytes} bytes, by bytes ${byBytes.newBytes}`);
  assert.equal(sha256(kuraOk(['restore', '--repo', repo, aligned.id, '--to', '-']).stdout), sha256(night2));
});

test('a delta finds a moved row\'s old version in one piece (long-distance matching), on a repetitive chunk', (t) => {
  const native = nativeAddon();
  if (!native) {
    if (process.env.CI === 'true') assert.fail('the native addon is not built');
    t.skip('no native addon');
    return;
  }
  const updated = new Set<number>();
  for (let id = 13; id <= 1200; id += 97) updated.add(id);
  const base = oltpDump(1200, new Set()).data;
  const chunk = oltpDump(1200, updated).data;
  const d = native.deltaCompress(chunk, base, 3)!;
  t.diagnostic(`${chunk.length} bytes, ${updated.size} rows moved: delta ${d.length} bytes`);
  // the fast strategy alone took ~950 bytes for such a chunk: the chunk's own blank runs
  // overwrote the bases' positions in its hash table
  assert.ok(d.length < 400, `delta of ${d.length} bytes`);
});

test('chunkerFor: configured sizes, else a database source keeps its last snapshot\'s, else the repository\'s', () => {
  const pg = { type: 'postgres' } as SourceConfig;
  const files = { type: 'command' } as unknown as SourceConfig;
  const at4k = { minSize: 1024, avgSize: 4096, maxSize: 16384 };
  const table: Array<[string, SourceConfig, Parameters<typeof chunkerFor>[1], number | undefined]> = [
    ['new database source: the repository\'s', pg, undefined, undefined],
    ['database source backed up at 4 KiB keeps them', pg, { chunker: at4k }, 4096],
    ['database source whose last snapshot has no sizes had the old default', pg, {}, 4096],
    ['database source at the repository\'s sizes keeps them', pg, { chunker: { minSize: 16384, avgSize: 65536, maxSize: 262144 } }, 65536],
    ['configured wins', { ...pg, chunkAvg: 8192 } as SourceConfig, { chunker: at4k }, 8192],
    ['other sources: the repository\'s', files, { chunker: at4k }, undefined],
  ];
  for (const [what, src, last, avg] of table) assert.equal(chunkerFor(src, last)?.avgSize, avg, what);
});

test('a new database source takes the repository\'s chunk sizes; one backed up at 4 KiB keeps them', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'app.db');
  const db = new Database(file);
  db.exec('CREATE TABLE accounts (aid INTEGER PRIMARY KEY, filler TEXT)');
  const ins = db.prepare('INSERT INTO accounts (filler) VALUES (?)');
  db.transaction(() => {
    for (let i = 0; i < 20_000; i++) ins.run(`${i} ${' '.repeat(60)}`);
  })();
  db.close();
  const repo = path.join(dir, 'repo');
  const cfg = path.join(dir, 'kura.yaml');
  writeFileSync(cfg, `repository:\n  path: ${repo}\nsources:\n  app:\n    type: sqlite\n    path: ${file}\n`);
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  // a snapshot of another source at 4 KiB, as an older kura made for database sources
  const old = path.join(dir, 'old.sql');
  writeFileSync(old, oltpDump(2000, new Set()).data);
  kuraOk(['backup', '--name', 'legacy', '--file', old, '--chunk-avg', '4096'], { env });
  writeFileSync(cfg, `repository:\n  path: ${repo}\nsources:\n  app:\n    type: sqlite\n    path: ${file}\n  legacy:\n    type: sqlite\n    path: ${file}\n`);
  for (let night = 0; night < 2; night++) {
    const r = await kuraAsync(['agent', 'run', '--json'], { env });
    assert.equal(r.status, 0, r.stderr);
  }
  const snaps = JSON.parse(kuraOk(['snapshots', '--json'], { env }).out) as Array<{ source: string; chunker?: { avgSize: number }; header?: { chunker?: { avgSize: number } } }>;
  const avg = (source: string) => snaps.filter((s) => s.source === source).map((s) => (s.chunker ?? s.header?.chunker)!.avgSize);
  assert.deepEqual(avg('app'), [defaultChunkerParams.avgSize, defaultChunkerParams.avgSize]);
  assert.deepEqual(avg('legacy'), [4096, 4096, 4096]);
});

test('repo init: 256 KiB chunks by default; --chunk-avg alone sets min and max around it; given sizes are kept; bad ones refused', (t) => {
  const dir = tempDir(t);
  const table: Array<[string, string[], { minSize: number; avgSize: number; maxSize: number } | null]> = [
    ['the default', [], { minSize: 65536, avgSize: 262144, maxSize: 1048576 }],
    ['--chunk-avg alone', ['--chunk-avg', '4096'], { minSize: 1024, avgSize: 4096, maxSize: 16384 }],
    ['--chunk-avg 1MiB', ['--chunk-avg', '1MiB'], { minSize: 262144, avgSize: 1048576, maxSize: 4194304 }],
    ['all three', ['--chunk-min', '16384', '--chunk-avg', '65536', '--chunk-max', '131072'], { minSize: 16384, avgSize: 65536, maxSize: 131072 }],
    ['a maximum alone', ['--chunk-max', '2MiB'], { minSize: 65536, avgSize: 262144, maxSize: 2097152 }],
    ['a minimum above the average', ['--chunk-avg', '4096', '--chunk-min', '8192'], null],
    ['an average that is no power of two', ['--chunk-avg', '5000'], null],
  ];
  table.forEach(([what, args, want], i) => {
    const repo = path.join(dir, `r${i}`);
    if (want === null) {
      const r = kura(['repo', 'init', '--repo', repo, ...args]);
      assert.equal(r.status, 64, `${what}: ${r.stderr}`);
      assert.match(r.stderr, /E_USAGE/, what);
      assert.match(r.stderr, /--chunk-avg alone \(a power of two\) sets min to a quarter/, `${what}: says what to give instead`);
      return;
    }
    const { chunker } = kuraJson<{ chunker: { minSize: number; avgSize: number; maxSize: number } }>(['repo', 'init', '--repo', repo, '--json', ...args]);
    assert.deepEqual({ minSize: chunker.minSize, avgSize: chunker.avgSize, maxSize: chunker.maxSize }, want, what);
  });
});
