import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { kura, kuraJson, kuraOk, tempDir } from './support/cli.js';
import { collect, sha256, sqlDump } from './support/generate.js';
import { Repository } from '../src/repository/repository.js';
import { readBlobs } from '../src/repository/reader.js';
import { blobInfo, Compression } from '../src/crypto/blob.js';
import { referencedChunks } from './support/snapshots.js';

const MiB = 1 << 20;

/** Night 2 of a dump: one row in `every` gets a different income (same length), scattered over the dump. */
function churn(night1: Buffer, every: number, salt: number): Buffer {
  const lines = night1.toString('utf8').split('\n');
  for (let i = 3 + salt; i < lines.length - 1; i += every) lines[i] = lines[i]!.replace(/\t(\d)(\d*)\t/, (_m, a: string, b: string) => `\t${(Number(a) + 1) % 10}${b}\t`);
  return Buffer.from(lines.join('\n'));
}

/** What the snapshot's stored blobs are: how many are deltas, and every delta's bases. */
async function blobKinds(repoDir: string, id: string): Promise<{ deltas: number; whole: number; bases: Set<string> }> {
  const repo = await Repository.open(repoDir, null);
  try {
    const out = { deltas: 0, whole: 0, bases: new Set<string>() };
    const ids = (await referencedChunks(repoDir, id)).filter((c) => repo.catalogue.hasChunk(c));
    for await (const { blob } of readBlobs(repo, ids, id)) {
      const info = blobInfo(blob)!;
      if (info.compression === Compression.DELTA) {
        out.deltas++;
        for (const b of info.bases) out.bases.add(b.toString('hex'));
      } else out.whole++;
    }
    return out;
  } finally {
    repo.close();
  }
}

test('changed chunks are stored as deltas of the previous generation; they restore after prune + gc and after rebuild-index', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  const plain = path.join(dir, 'plain');
  kuraOk(['repo', 'init', '--repo', repo, '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384']);
  kuraOk(['repo', 'init', '--repo', plain, '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384']);
  const nights = [await collect(sqlDump(5, 3 * MiB))];
  nights.push(churn(nights[0]!, 40, 0), churn(churn(nights[0]!, 40, 0), 55, 7));
  const snaps: Array<{ id: string; newBytes: number; sha: string }> = [];
  const plainSnaps: Array<{ id: string; newBytes: number }> = [];
  nights.forEach((data, i) => {
    const file = path.join(dir, `night${i}.sql`);
    writeFileSync(file, data);
    const b = kuraJson<{ id: string; newBytes: number }>(['backup', '--repo', repo, '--name', 'juki', '--file', file]);
    snaps.push({ ...b, sha: sha256(data) });
    plainSnaps.push(kuraJson<{ id: string; newBytes: number }>(['backup', '--repo', plain, '--name', 'juki', '--no-delta', '--file', file]));
  });

  // night 2 and 3: most changed chunks are deltas, and they take far fewer bytes than whole chunks
  const k2 = await blobKinds(repo, snaps[1]!.id);
  assert.ok(k2.deltas > 100, `night 2 stored ${k2.deltas} deltas`);
  assert.ok(snaps[1]!.newBytes * 2 < plainSnaps[1]!.newBytes, `deltas: ${snaps[1]!.newBytes} bytes, whole chunks: ${plainSnaps[1]!.newBytes} bytes`);
  assert.ok(snaps[2]!.newBytes * 2 < plainSnaps[2]!.newBytes, `night 3: ${snaps[2]!.newBytes} against ${plainSnaps[2]!.newBytes}`);
  assert.equal((await blobKinds(plain, plainSnaps[1]!.id)).deltas, 0, '--no-delta stores none');
  // a delta's bases are never deltas (one level to open): night 3's bases are whole chunks of night 1
  const k3 = await blobKinds(repo, snaps[2]!.id);
  assert.ok(k3.deltas > 100);
  const night1Chunks = new Set((await referencedChunks(repo, snaps[0]!.id)).map((c) => c.toString('hex')));
  for (const b of k3.bases) assert.ok(night1Chunks.has(b), `base ${b} of night 3 is a chunk of night 1`);
  for (const s of snaps) assert.equal(sha256(kuraOk(['restore', '--repo', repo, s.id, '--to', '-']).stdout), s.sha);

  // nights 1 and 2 pruned: GC keeps exactly what night 3 needs, its deltas' bases included
  assert.equal(kuraJson<{ removed: number }>(['prune', '--repo', repo, '--keep-last', '1']).removed, 2);
  const gc = kuraJson<{ chunksRemoved: number; problems: string[] }>(['gc', '--repo', repo]);
  assert.ok(gc.chunksRemoved > 0);
  assert.deepEqual(gc.problems, []);
  const needed = await referencedChunks(repo, snaps[2]!.id);
  const db = new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true });
  assert.equal((db.prepare('SELECT count(*) AS n FROM chunks').get() as { n: number }).n, needed.length, 'exactly the chunks night 3 needs remain');
  db.close();
  assert.equal(sha256(kuraOk(['restore', '--repo', repo, snaps[2]!.id, '--to', '-']).stdout), snaps[2]!.sha);
  assert.equal(kuraJson<{ ok: boolean }>(['check', '--repo', repo, '--read-data']).ok, true);
  assert.equal(kuraJson<{ packsWritten: number; chunksRemoved: number }>(['gc', '--repo', repo]).chunksRemoved, 0, 'a second gc finds nothing');

  // the catalogue lost: rebuilt from the packs, the bases are known again and GC keeps them
  rmSync(path.join(repo, 'catalogue.sqlite'));
  rmSync(path.join(repo, 'catalogue.sqlite-wal'), { force: true });
  rmSync(path.join(repo, 'catalogue.sqlite-shm'), { force: true });
  kuraOk(['repo', 'rebuild-index', '--repo', repo]);
  assert.equal(kuraJson<{ chunksRemoved: number }>(['gc', '--repo', repo]).chunksRemoved, 0);
  assert.equal(sha256(kuraOk(['restore', '--repo', repo, snaps[2]!.id, '--to', '-']).stdout), snaps[2]!.sha);

  // a damaged base: the restore of a delta that needs it fails with a coded error, never wrong bytes
  const base = [...k3.bases][0]!;
  const r = await Repository.open(repo, null);
  const loc = r.catalogue.location(Buffer.from(base, 'hex'))!;
  r.close();
  const packFile = path.join(repo, 'packs', loc.pack.slice(0, 2), loc.pack);
  const bytes = readFileSync(packFile);
  bytes[loc.offset + loc.length - 20]! ^= 0xff;
  writeFileSync(packFile, bytes);
  const bad = kura(['restore', '--repo', repo, snaps[2]!.id, '--to', '-']);
  assert.equal(bad.status, 65, bad.stderr);
  assert.match(bad.stderr, /E_CHUNK_CORRUPT/);
});
