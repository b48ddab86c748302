import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { kura, kuraOk, tempDir } from './support/cli.js';
import { collect, Prng, sqlDump } from './support/generate.js';
import { chunkId, openBlob } from '../src/crypto/blob.js';
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

/**
 * The seal worker takes each chunk from where the batch says it lies: the batch's own buffer, or
 * one of several segments, with gaps between them (chunks the catalogue had), interleaved, and
 * some chunks going the delta way (bases given, none readable: stored whole by the worker's own
 * thread) so the addon's runs have holes. Every blob must open to its chunk's bytes, with the
 * addon and without it.
 */
test('a seal request takes each chunk from its own place: the batch buffer or segments, with gaps, interleaved, some via the delta path', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const r = await Repository.open(repo, { passphrase: 'correct horse' });
  t.after(() => r.close());
  const rng = new Prng(42);
  const segments = [new SharedArrayBuffer(1 << 20), new SharedArrayBuffer(1 << 20)];
  for (const s of segments) Buffer.from(s).set(rng.bytes(s.byteLength));
  const own = Buffer.from(new SharedArrayBuffer(1 << 20));
  // 90 chunks: 0 = copied into the batch's buffer, 1 and 2 = left in segment 1 or 2
  const chunks: Array<{ src: number; at: number; plain: Buffer }> = [];
  const next = [0, 0, 0];
  for (let i = 0; i < 90; i++) {
    const src = [0, 1, 1, 2, 1, 2, 2, 0, 1][i % 9]!;
    const len = 200 + (rng.next() % 3000);
    if (src > 0 && i % 5 === 0) next[src]! += 100 + (rng.next() % 500); // a gap: a chunk skipped there
    const at = next[src]!;
    next[src]! += len;
    let plain: Buffer;
    if (src === 0) {
      own.set(rng.bytes(len), at);
      plain = own.subarray(at, at + len);
    } else plain = Buffer.from(segments[src - 1]!).subarray(at, at + len);
    chunks.push({ src, at, plain: Buffer.from(plain) });
  }
  const offsets = new Uint32Array(chunks.length + 1);
  chunks.forEach((c, i) => (offsets[i + 1] = offsets[i]! + c.plain.length));
  const ids = chunks.map((c) => chunkId(r.keys.idKey, c.plain));
  // every fourth chunk has a base to try (unreadable: it is stored whole, by the worker itself)
  const start = new Uint32Array(chunks.length + 1);
  const refs: number[] = [];
  chunks.forEach((_, i) => {
    if (i % 4 === 3) refs.push(0);
    start[i + 1] = refs.length;
  });
  const bases = { ids: new Uint8Array(32).fill(7), packs: ['0'.repeat(64)], packOf: new Uint32Array([0]), offset: new Float64Array([0]), length: new Uint32Array([100]), start, refs: Uint32Array.from(refs), again: new Uint8Array(chunks.length), blobs: [null] };
  const elsewhere = { buffers: segments, src: Uint8Array.from(chunks.map((c) => c.src)), at: Uint32Array.from(chunks.map((c) => c.at)) };
  for (const native of [true, false]) {
    const was = process.env.KURA_NATIVE;
    if (!native) process.env.KURA_NATIVE = '0'; // the worker starts without the addon
    const pool = new SealPool(r.keys, r.store.local!.root, 1);
    if (!native) process.env.KURA_NATIVE = was;
    try {
      const idBuf = Buffer.concat(ids);
      const res = await pool.seal(3, own.buffer, offsets, idBuf.buffer.slice(idBuf.byteOffset, idBuf.byteOffset + idBuf.length) as ArrayBuffer, bases, elsewhere);
      const pack = Buffer.from(res.pack!, 0, res.packLength);
      chunks.forEach((c, i) => {
        const blob = pack.subarray(res.blobOffsets[i]!, res.blobOffsets[i + 1]!);
        assert.ok(openBlob(blob, ids[i]!, r.keys).equals(c.plain), `chunk ${i} (${c.src === 0 ? 'copied' : `segment ${c.src}`}, ${native ? 'addon' : 'no addon'}) opens to its bytes`);
      });
      assert.equal(res.delta.reduce((a, b) => a + b, 0), 0, 'no base could be read: nothing stored as a delta');
    } finally {
      await pool.close();
    }
  }
});

/**
 * A backup whose packs cannot all be written (fan-out directories of the repository replaced by
 * files: a pack named into one is not written, even by root) fails with E_IO naming the pack and
 * writes no snapshot; with the directories back, the rerun completes and restores byte for byte.
 */
async function failedPackWrite(t: import('node:test').TestContext, o: { seed: number; bytes: number; args: string[]; blocked: (i: number) => boolean }): Promise<void> {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const file = path.join(dir, 'dump.sql');
  const dump = await collect(sqlDump(o.seed, o.bytes));
  writeFileSync(file, dump);
  const packs = path.join(repo, 'packs');
  const blocked = readdirSync(packs).filter((_, i) => o.blocked(i));
  for (const d of blocked) {
    rmSync(path.join(packs, d), { recursive: true });
    writeFileSync(path.join(packs, d), 'not a directory');
  }
  const backupArgs = ['backup', '--repo', repo, '--name', 'db', '--file', file, ...o.args];
  const failed = kura(backupArgs);
  assert.notEqual(failed.status, 0, 'the backup failed');
  assert.match(failed.stderr, /E_IO[^]*cannot write packs\//, failed.stderr);
  assert.deepEqual(readdirSync(path.join(repo, 'snapshots')), [], 'no snapshot was written');
  for (const d of blocked) {
    rmSync(path.join(packs, d));
    mkdirSync(path.join(packs, d));
  }
  const id = kuraOk(backupArgs).stdout.toString().trim();
  const out = path.join(dir, 'restored');
  kuraOk(['restore', '--repo', repo, id, '--to', out]);
  assert.ok(readFileSync(out).equals(dump), 'the rerun restores byte for byte');
  kuraOk(['check', '--repo', repo, '--read-data']);
}

/**
 * A pack that cannot be written fails the backup while other batches hold segments of the
 * pipeline (it does not hang on the segments those batches keep). Half the fan-out directories
 * are files: 16 packs of 4 KiB chunks all landing in the other half has odds of 1 in 65 536.
 */
test('a pack that cannot be written fails the backup with E_IO and no snapshot while segments are held; the rerun completes', (t) =>
  failedPackWrite(t, { seed: 8, bytes: 64 * MiB, args: ['--chunk-avg', '4096'], blocked: (i) => i % 2 === 0 }));

/** The same for a pack gathered from batches answered long before (every fan-out directory is a file). */
test('a gathered pack that cannot be written fails the backup with E_IO and no snapshot; the rerun completes', (t) =>
  failedPackWrite(t, { seed: 13, bytes: 32 * MiB, args: [], blocked: () => true }));

const packFiles = (repo: string) => readdirSync(path.join(repo, 'packs')).flatMap((d) => readdirSync(path.join(repo, 'packs', d)).filter((f) => !f.startsWith('.tmp-')));

/** A real pool that counts the batches it seals. */
class BatchesPool extends SealPool {
  batches = 0;
  override seal(...args: Parameters<SealPool['seal']>): ReturnType<SealPool['seal']> {
    this.batches++;
    return super.seal(...args);
  }
}

/**
 * On a local disk the small packs of batches of large chunks (a dump that compresses well) are
 * gathered into packs of about 3.8 MiB, one file each rather than one per 4 MiB batch; a batch of
 * small chunks (more than 256) keeps a pack of its own, and so does a batch whose pack is large
 * (data that does not compress). All of them restore byte for byte and pass a check.
 */
test('on a local disk small packs are gathered into one file; batches of small chunks and large packs are stored alone; all restore', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const runs: Array<{ source: string; data: Buffer; chunker?: { minSize: number; avgSize: number; maxSize: number } }> = [
    { source: 'big', data: await collect(sqlDump(11, 48 * MiB)) },
    { source: 'small', data: await collect(sqlDump(12, 12 * MiB)), chunker: { minSize: 1024, avgSize: 4096, maxSize: 16384 } },
    { source: 'random', data: new Prng(14).bytes(24 * MiB) },
  ];
  const ids: string[] = [];
  const made: Array<{ batches: number; packs: number; stored: number }> = [];
  for (const run of runs) {
    const file = path.join(dir, `${run.source}.sql`);
    writeFileSync(file, run.data);
    const before = packFiles(repo).length;
    const r = await Repository.open(repo, { passphrase: 'correct horse' });
    try {
      const pool = new BatchesPool(null, r.store.local!.root);
      const res = await backup(r, new FileInput(file), { source: run.source, tenant: 'default', pool, ...(run.chunker ? { chunker: run.chunker } : {}) });
      ids.push(res.id);
      // the list blocks' pack aside
      made.push({ batches: pool.batches, packs: packFiles(repo).length - before - 1, stored: res.header.newBytes });
    } finally {
      r.close();
    }
  }
  const [big, small, random] = made as [(typeof made)[0], (typeof made)[0], (typeof made)[0]];
  t.diagnostic(`default chunks: ${big.batches} batches, ${big.packs} packs for ${big.stored} bytes; 4 KiB chunks: ${small.batches} batches, ${small.packs} packs; random: ${random.batches} batches, ${random.packs} packs`);
  assert.ok(big.batches >= 12, `${big.batches} batches of 4 MiB`);
  // every pack but the last holds at least 3.8 MiB
  assert.ok(big.packs <= Math.ceil(big.stored / (3.8 * MiB)), `${big.packs} packs for ${big.stored} bytes stored`);
  assert.ok(big.packs < big.batches / 2, `${big.packs} packs from ${big.batches} batches`);
  // all batches of more than 256 chunks keep their packs (the last one may be shorter and gathered)
  assert.ok(small.packs >= small.batches - 1 && small.batches >= 2, `${small.packs} packs from ${small.batches} batches of 4 KiB chunks`);
  assert.ok(random.packs >= random.batches - 1 && random.batches >= 6, `${random.packs} packs from ${random.batches} batches that do not compress`);
  for (const [k, run] of runs.entries()) {
    const out = path.join(dir, `restored-${run.source}`);
    kuraOk(['restore', '--repo', repo, ids[k]!, '--to', out], { env: { KURA_PASSPHRASE: 'correct horse' } });
    assert.ok(readFileSync(out).equals(run.data), `${run.source} restores byte for byte`);
  }
  kuraOk(['check', '--repo', repo, '--read-data'], { env: { KURA_PASSPHRASE: 'correct horse' } });
});

