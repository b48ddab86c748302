import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { kuraJson, kuraOk, tempDir } from './support/cli.js';
import { churn, collect, sqlDump } from './support/generate.js';
import { Repository } from '../src/repository/repository.js';
import { chunksPerSegment, restoreStream, restoreTo } from '../src/restorer/restore.js';
import { openingAddon } from '../src/native.js';
import { DeltaOpener } from '../src/restorer/bases.js';
import { readBlobs } from '../src/repository/reader.js';
import { snapshotChunkIds } from '../src/repository/snapshot.js';
import { idsOf } from '../src/repository/chunklist.js';
import { blobInfo, Compression } from '../src/crypto/blob.js';
import { KuraError } from '../src/errors.js';

const MiB = 1 << 20;

/**
 * A reader that takes its time: each chunk is hashed only when the reader acknowledges it, a
 * few milliseconds after it was written, and until then the chunk and those queued behind it stay
 * referenced. A restore that handed a chunk's memory to the next piece before the write was done
 * would show here as other bytes.
 */
class SlowReader extends Writable {
  private readonly hash = createHash('sha256');
  bytes = 0;
  writes = 0;
  constructor() {
    super({ highWaterMark: 4 * MiB });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.writes++;
    setTimeout(() => {
      this.hash.update(chunk);
      this.bytes += chunk.length;
      cb();
    }, 3);
  }
  digest(): string {
    return this.hash.digest('hex');
  }
}

/** Each night backed up in turn from a file beside the repository; their snapshot IDs. */
function backUp(dir: string, repo: string, nights: Buffer[]): string[] {
  return nights.map((night, i) => {
    const file = path.join(dir, `night${i + 1}.sql`);
    writeFileSync(file, night);
    return kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'db', '--file', file, '--json']).id;
  });
}

test('a restore reuses the buffers it opens chunks into only after the reader is done with them: a slow reader gets every byte, plain and delta nights alike', async (t) => {
  assert.ok(openingAddon(), 'the native addon opens blobs off the main thread (the path that pools its buffers)');
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  // 40 MiB: about 20 segments of 2 MiB, so every pooled buffer is taken again many times
  const night1 = await collect(sqlDump(21, 40 * MiB));
  const night2 = churn(night1, 40, 1); // every chunk changed: the second night is all deltas
  const ids = backUp(dir, repo, [night1, night2]);
  const r = await Repository.open(repo, { passphrase: 'correct horse' });
  try {
    // a delta's bases, held (pinned) while a job reads them, keep their bytes though the cache
    // drops them and later bases are opened into pooled buffers: without the pin the first
    // bases' buffer would be taken again and overwritten
    const snap = await r.readSnapshot(ids[1]!);
    const source = (want: Buffer[], what: string) => readBlobs(r, want, what);
    const chunks = [...idsOf(await snapshotChunkIds(snap, source))];
    const blobsOf = async (some: Buffer[]) => {
      const out: Array<{ id: Buffer; blob: Buffer }> = [];
      for await (const b of source(some, 'test')) out.push(b);
      return out;
    };
    const opener = new DeltaOpener(r.keys, source);
    const first = await blobsOf(chunks.slice(0, 16));
    await opener.prepare(first, 'the first 16 chunks');
    const deltas = first.map((b) => blobInfo(b.blob)).filter((info) => (info?.bases.length ?? 0) > 0);
    assert.ok(deltas.length >= 8, `the second night is deltas (${deltas.length} of 16)`);
    const views = deltas.flatMap((info) => opener.basesOf(info)!);
    const copies = views.map((v) => Buffer.from(v));
    const release = opener.pin(deltas);
    for (let at = 16; at < chunks.length; at += 16) await opener.prepare(await blobsOf(chunks.slice(at, at + 16)), `chunks from ${at}`);
    views.forEach((v, i) => assert.ok(v.equals(copies[i]!), `pinned base ${i} kept its bytes while ${chunks.length - 16} more chunks' bases were opened`));
    release();

    for (const [i, want] of [night1, night2].entries()) {
      const reader = new SlowReader();
      const res = await restoreTo(r, ids[i]!, reader);
      await new Promise<void>((resolve, reject) => reader.end((e?: Error | null) => (e ? reject(e) : resolve())));
      assert.equal(res.bytes, want.length);
      assert.equal(reader.bytes, want.length);
      assert.ok(reader.writes >= 20, `written in pieces (${reader.writes})`);
      assert.equal(reader.digest(), createHash('sha256').update(want).digest('hex'), `night ${i + 1} arrives byte for byte`);
    }
  } finally {
    r.close();
  }
});

test('a restore segment holds 8 MiB of chunk capacity: at least two chunks, at most 4096', () => {
  const table: Array<[string, number | undefined, number]> = [
    ['4 KiB repository (16 KiB at most)', 16 << 10, 512],
    ['64 KiB repository (256 KiB at most)', 256 << 10, 32],
    ['the default, 256 KiB (1 MiB at most)', 1 << 20, 8],
    ['1 MiB chunks (4 MiB at most)', 4 << 20, 2],
    ['chunks larger than a segment', 64 << 20, 2],
    ['the smallest chunks (1 KiB at most)', 1024, 4096],
    ['a header without sizes (an older kura: 256 KiB at most)', undefined, 32],
  ];
  for (const [what, max, want] of table) assert.equal(chunksPerSegment(max), want, what);
});

test('a restore that reads many segments ahead, each a pack at a time (as from an object store), writes the bytes one that reads them in turn does; a damaged chunk still fails it, naming the snapshot and the offset', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo, '--chunk-avg', '4096']);
  // 4 KiB chunks, 512 a segment: 8 segments, and a few chunks in each changed each night, so the
  // third night's chunks alternate between the three nights' packs
  const night1 = await collect(sqlDump(33, 16 * MiB));
  const night2 = churn(night1, 1500, 1);
  const nights = [night1, night2, churn(night2, 1100, 7)];
  const ids = backUp(dir, repo, nights);
  const r = await Repository.open(repo, { passphrase: 'correct horse' });
  try {
    const snap = await r.readSnapshot(ids[2]!);
    const chunks = [...idsOf(await snapshotChunkIds(snap, (w, what) => readBlobs(r, w, what)))];
    const inRuns: Array<{ id: Buffer; blob: Buffer }> = [];
    const byPack: Array<{ id: Buffer; blob: Buffer }> = [];
    for await (const b of readBlobs(r, chunks, 'night 3')) inRuns.push(b);
    for await (const b of readBlobs(r, chunks, 'night 3', { byPack: true })) byPack.push(b);
    assert.equal(byPack.length, chunks.length);
    byPack.forEach((b, i) => assert.ok(b.id.equals(inRuns[i]!.id) && b.blob.equals(inRuns[i]!.blob), `blob ${i} of ${chunks.length} read a pack at a time is the one read in runs`));
    const packs = chunks.map((id) => r.catalogue.location(id)!.pack);
    const switches = packs.filter((p, i) => i > 0 && p !== packs[i - 1]).length;
    assert.ok(new Set(packs).size >= 3 && switches >= 10, `the night's chunks lie in ${new Set(packs).size} packs, ${switches} switches between them`);

    const want = createHash('sha256').update(nights[2]!).digest('hex');
    for (const reading of [1, 2, 6]) {
      const reader = new SlowReader();
      const res = await restoreStream(snap, r.keys, (w, what) => readBlobs(r, w, what, { byPack: true }), reader, undefined, { reading });
      await new Promise<void>((resolve, reject) => reader.end((e?: Error | null) => (e ? reject(e) : resolve())));
      assert.equal(res.bytes, nights[2]!.length);
      assert.equal(reader.digest(), want, `${reading} segment(s) read at once: night 3 arrives byte for byte`);
    }

    // a delta of night 3 past its middle damaged: the restore stops there, with where it was
    let offset = 0;
    let at = -1;
    for (let i = 0; i < inRuns.length; i++) {
      const info = blobInfo(inRuns[i]!.blob)!;
      if (i >= inRuns.length / 2 && info.compression === Compression.DELTA && chunks.findIndex((c) => c.equals(chunks[i]!)) === i) {
        at = i;
        break;
      }
      offset += info.plainLength;
    }
    assert.ok(at > 0, 'night 3 holds deltas past its middle');
    const loc = r.catalogue.location(chunks[at]!)!;
    const packFile = path.join(repo, 'packs', loc.pack.slice(0, 2), loc.pack);
    const bytes = readFileSync(packFile);
    bytes[loc.offset + loc.length - 3]! ^= 0x40;
    writeFileSync(packFile, bytes);
    await assert.rejects(restoreStream(snap, r.keys, (w, what) => readBlobs(r, w, what, { byPack: true }), new SlowReader(), undefined, { reading: 6 }), (e: unknown) => {
      assert.ok(e instanceof KuraError && e.code === 'E_CHUNK_CORRUPT', String(e));
      assert.match(e.message, new RegExp(`snapshot ${ids[2]}, offset ${offset}\\)`));
      return true;
    });
  } finally {
    r.close();
  }
});
