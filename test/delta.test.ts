import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { blake3 } from '@napi-rs/blake-hash';
import { kura, kuraAsync, kuraJson, kuraOk, tempDir } from './support/cli.js';
import { agentConfig, sshKey, startVault, vaultSession } from './support/vault.js';
import { Frame } from '../src/protocol/frames.js';
import { KuraError } from '../src/errors.js';
import { churn, collect, Prng, sha256, sqlDump } from './support/generate.js';
import { Repository } from '../src/repository/repository.js';
import { Catalogue } from '../src/repository/catalogue.js';
import { readBlobs } from '../src/repository/reader.js';
import { BlobSealer, blobInfo, chunkId, Compression, openBlob } from '../src/crypto/blob.js';
import { basesWorthTrying, keepDelta, MAX_BASES_PER_CHUNK, REBASE_AT, wholeEstimate, wholeSample, worthTryingWhole } from '../src/crypto/delta-policy.js';
import { referencedChunks } from './support/snapshots.js';

const MiB = 1 << 20;

/** What the snapshot's stored blobs are: how many are deltas, and every delta's bases. */
/** The snapshot's chunks stored whole and as deltas, the deltas' bases, and the largest ratio of a delta's bases' bytes to its own. */
async function blobKinds(repoDir: string, id: string): Promise<{ deltas: number; whole: number; bases: Set<string>; maxBaseRatio: number }> {
  const repo = await Repository.open(repoDir, null);
  try {
    const out = { deltas: 0, whole: 0, bases: new Set<string>(), maxBaseRatio: 0 };
    const plainSize = repo.catalogue.db.prepare('SELECT plain_size FROM chunk_rows WHERE id = ?').pluck();
    const ids = (await referencedChunks(repoDir, id)).filter((c) => repo.catalogue.hasChunk(c));
    for await (const { blob } of readBlobs(repo, ids, id)) {
      const info = blobInfo(blob)!;
      if (info.compression === Compression.DELTA) {
        out.deltas++;
        for (const b of info.bases) out.bases.add(b.toString('hex'));
        const basesPlain = info.bases.reduce((n, b) => n + (plainSize.get(b) as number), 0);
        out.maxBaseRatio = Math.max(out.maxBaseRatio, basesPlain / Math.max(info.plainLength, 1));
      } else out.whole++;
    }
    return out;
  } finally {
    repo.close();
  }
}

/** Tell the catalogue that the chunk `delta` is a delta of `base` (a pack_bases record, as a vault sent a delta of a delta would write). */
function recordDelta(db: Database.Database, delta: string, base: string): void {
  const { pack, offset } = db.prepare('SELECT pack, offset FROM chunk_rows WHERE id = ?').get(Buffer.from(delta, 'hex')) as { pack: number; offset: number };
  const row = db.prepare('SELECT bases, deltas FROM pack_bases WHERE pack = ?').get(pack) as { bases: Buffer; deltas: Buffer } | undefined;
  const bases = row?.bases ?? Buffer.alloc(0);
  const rec = Buffer.alloc(7);
  rec.writeUInt32LE(offset, 0);
  rec[4] = 1;
  rec.writeUInt16LE(bases.length / 8, 5);
  db.prepare('INSERT OR REPLACE INTO pack_bases (pack, bases, deltas) VALUES (?, ?, ?)').run(pack, Buffer.concat([bases, Buffer.from(base, 'hex').subarray(0, 8)]), Buffer.concat([row?.deltas ?? Buffer.alloc(0), rec]));
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

test('GC follows a chain of deltas to its end: a base that is itself a delta keeps its own bases, link after link; a chunk no chain reaches goes', async (t) => {
  // kura never writes a delta of a delta, but a vault may be sent one: the catalogue is told so
  // here (a base of night 3 recorded as a delta of a chunk only night 1 had, that one as a delta
  // of another), and GC must keep the whole chain
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo, '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384']);
  const nights = [await collect(sqlDump(8, 1 * MiB))];
  nights.push(churn(nights[0]!, 20, 1), churn(churn(nights[0]!, 20, 1), 25, 9));
  const snaps = nights.map((data, i) => {
    const file = path.join(dir, `night${i}.sql`);
    writeFileSync(file, data);
    return { ...kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'juki', '--file', file]), sha: sha256(data) };
  });
  const k3 = await blobKinds(repo, snaps[2]!.id);
  assert.ok(k3.bases.size > 0, 'night 3 has deltas');
  const kept = new Set([...(await referencedChunks(repo, snaps[2]!.id)).map((c) => c.toString('hex')), ...k3.bases]);
  const night1Only = (await referencedChunks(repo, snaps[0]!.id)).map((c) => c.toString('hex')).filter((c) => !kept.has(c));
  assert.ok(night1Only.length >= 4, `night 1 has chunks of its own (${night1Only.length})`);
  const [y, z, v, w] = night1Only as [string, string, string, string];
  // (night 3 may hold x itself: then y is marked by the first pass over the marked deltas, and
  // z and v need a link each)
  const x = [...k3.bases][0]!;

  const db = new Database(path.join(repo, 'catalogue.sqlite'));
  recordDelta(db, x, y);
  recordDelta(db, y, z);
  recordDelta(db, z, v);
  recordDelta(db, v, y); // a cycle, which GC must not follow forever
  db.close();

  assert.equal(kuraJson<{ removed: number }>(['prune', '--repo', repo, '--keep-last', '1']).removed, 2);
  const gc = kuraJson<{ chunksRemoved: number; problems: string[] }>(['gc', '--repo', repo]);
  assert.deepEqual(gc.problems, []);
  const cat = new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true });
  const held = (id: string) => cat.prepare('SELECT 1 FROM chunk_rows WHERE id = ?').get(Buffer.from(id, 'hex')) !== undefined;
  assert.ok(held(x), 'the base of night 3 is kept');
  assert.ok(held(y), 'the base of that base is kept');
  assert.ok(held(z), 'and the base of that one');
  assert.ok(held(v), 'and the base of that one (whose base is the first again)');
  assert.ok(!held(w), 'a chunk of night 1 no chain reaches is removed');
  assert.equal((cat.prepare('SELECT count(*) AS n FROM chunk_rows').get() as { n: number }).n, kept.size + 3, 'night 3, its bases and the chain: nothing else');
  cat.close();
  assert.equal(sha256(kuraOk(['restore', '--repo', repo, snaps[2]!.id, '--to', '-']).stdout), snaps[2]!.sha);
});

test('GC keeps the bases of a delta a vault session holds a lease on, to the end of a chain, though no snapshot uses them', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo, '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384']);
  // two nights of one source, pruned; what is kept is another source's snapshot, sharing nothing
  const nights = [await collect(sqlDump(8, 1 * MiB))];
  nights.push(churn(nights[0]!, 20, 1));
  const snaps = nights.map((data, i) => {
    const file = path.join(dir, `night${i}.sql`);
    writeFileSync(file, data);
    return kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'juki', '--file', file]);
  });
  const otherData = new Prng(77).bytes(64 << 10);
  writeFileSync(path.join(dir, 'other.bin'), otherData);
  const other = kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'other', '--tag', 'keep', '--file', path.join(dir, 'other.bin')]);
  const hex = (b: Buffer) => b.toString('hex');
  const kept = new Set((await referencedChunks(repo, other.id)).map(hex));
  // a delta of night 2, its bases chunks of night 1
  const r = await Repository.open(repo, null);
  let leased: { id: Buffer; bases: string[] } | undefined;
  try {
    const night2 = (await referencedChunks(repo, snaps[1]!.id)).filter((c) => r.catalogue.hasChunk(c));
    for await (const { id, blob } of readBlobs(r, night2, 'night 2')) {
      const bases = blobInfo(blob)!.bases.map(hex);
      if (bases.length > 0) {
        leased = { id: Buffer.from(id), bases };
        break;
      }
    }
  } finally {
    r.close();
  }
  assert.ok(leased, 'night 2 has a delta');
  for (const b of [hex(leased.id), ...leased.bases]) assert.ok(!kept.has(b), 'the kept snapshot shares nothing with it');
  const taken = new Set([hex(leased.id), ...leased.bases]);
  const others = (await referencedChunks(repo, snaps[0]!.id)).map(hex).filter((c) => !taken.has(c));
  assert.ok(others.length >= 2);
  const [further, w] = others as [string, string];

  // the catalogue is told that the delta's base is itself a delta of another chunk of night 1
  const db = new Database(path.join(repo, 'catalogue.sqlite'));
  recordDelta(db, leased.bases[0]!, further);
  db.close();
  // a session was told the delta is present: it is leased for an hour
  const cat = new Catalogue(path.join(repo, 'catalogue.sqlite'));
  cat.vault.hasAndLease('session-1', leased.id, 32, Date.now() + 3_600_000);
  cat.close();

  assert.equal(kuraJson<{ removed: number }>(['prune', '--repo', repo, '--keep-tag', 'keep']).removed, 2);
  const dry = kuraJson<{ chunksRemoved: number; bytesRemoved: number }>(['gc', '--repo', repo, '--dry-run']);
  const gc = kuraJson<{ chunksRemoved: number; bytesRemoved: number; problems: string[] }>(['gc', '--repo', repo]);
  assert.deepEqual(gc.problems, []);
  assert.ok(gc.chunksRemoved > 0);
  assert.deepEqual([dry.chunksRemoved, dry.bytesRemoved], [gc.chunksRemoved, gc.bytesRemoved], 'a dry run tells what the run removes');
  const after = new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true });
  const held = (id: string) => after.prepare('SELECT 1 FROM chunk_rows WHERE id = ?').get(Buffer.from(id, 'hex')) !== undefined;
  assert.ok(held(hex(leased.id)), 'the leased delta is kept');
  for (const b of leased.bases) assert.ok(held(b), `its base ${b} is kept`);
  assert.ok(held(further), 'and the base of its base');
  assert.ok(!held(w), 'a chunk of night 1 nothing reaches is removed');
  after.close();
  assert.equal(sha256(kuraOk(['restore', '--repo', repo, other.id, '--to', '-']).stdout), sha256(otherData));
});

test('deltas cross the tunnel with their bases: the vault refuses a commit without them, keeps them through prune + gc, and restores', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n      retention: { keepLast: 1 }\n`);
  t.after(() => vault.stop());
  const cfg = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init', '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384'], { env });
  const repo = path.join(dir, 'repo');
  const night1 = await collect(sqlDump(8, 2 * MiB));
  const nights = [night1, churn(night1, 40, 0), churn(churn(night1, 40, 0), 55, 7)];
  const snaps: Array<{ id: string; sha: string }> = [];
  for (const [i, data] of nights.entries()) {
    const f = path.join(dir, `night${i}.sql`);
    writeFileSync(f, data);
    snaps.push({ id: kuraJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { env }).id, sha: sha256(data) });
  }
  const k3 = await blobKinds(repo, snaps[2]!.id);
  assert.ok(k3.deltas > 50, `night 3 holds ${k3.deltas} deltas`);

  // a client that sends night 3 without one of its bases: the commit is refused, naming a missing chunk
  const conn = await vaultSession(vault, key.private);
  t.after(() => conn.close());
  const local = await Repository.open(repo, null);
  const withheld = [...k3.bases][0]!;
  const send = (await referencedChunks(repo, snaps[2]!.id)).filter((c) => c.toString('hex') !== withheld);
  for await (const { id, blob } of readBlobs(local, send, 'test')) {
    const frame = Buffer.concat([id, blake3(blob), blob]);
    await conn.send(Frame.PUT, frame);
  }
  local.close();
  await conn.send(Frame.FLUSH, { seq: 1 });
  await conn.expect(Frame.FLUSHED);
  const refused = await conn.request(Frame.COMMIT, readFileSync(path.join(repo, 'snapshots', snaps[2]!.id)), Frame.COMMITTED).catch((e: Error) => e);
  assert.ok(refused instanceof KuraError && refused.code === 'E_CHUNK_MISSING', `commit without a base refused: ${String(refused)}`);
  conn.close();

  // the relay sends what is missing, bases included, in order
  const sent = await kuraAsync(['relay', 'once', '--json'], { env });
  assert.equal(sent.status, 0, sent.stderr);
  for (const s of snaps) assert.equal(sha256((await kuraAsync(['restore', '--from', 'peer-dc', s.id, '--to', '-'], { env })).stdout), s.sha);

  // the vault keeps only night 3; its gc keeps the bases night 3's deltas need, from nights 1 and 2
  await kuraAsync(['vault', 'prune', '--config', vault.config]);
  const gc = JSON.parse((await kuraAsync(['vault', 'gc', '--config', vault.config, '--json'])).out) as { gc: { chunksRemoved: number } };
  assert.ok(gc.gc.chunksRemoved > 0, 'nights 1 and 2 had chunks of their own');
  assert.equal(sha256((await kuraAsync(['restore', '--from', 'peer-dc', snaps[2]!.id, '--to', '-'], { env })).stdout), snaps[2]!.sha);
  const tenantRepo = path.join(vault.root, 'tenants', 'city-a');
  assert.equal(kuraJson<{ ok: boolean; chunksUnreferenced: number }>(['check', '--repo', tenantRepo], { env: { KURA_PASSPHRASE: undefined } }).chunksUnreferenced, 0);
  assert.equal(kuraJson<{ ok: boolean }>(['check', '--repo', tenantRepo], { env: { KURA_PASSPHRASE: undefined } }).ok, true);
});

test('the catalogue records a delta\'s bases by 8-byte ID prefix: all chunks of a prefix count, a prefix no chunk has is missing', (t) => {
  const dir = tempDir(t);
  const cat = new Catalogue(path.join(dir, 'catalogue.sqlite'));
  t.after(() => cat.close());
  const id = (first: number, last: number) => Buffer.concat([Buffer.alloc(8, first), Buffer.alloc(24, last)]);
  const [base, twin, other, gone, delta] = [id(1, 1), id(1, 2), id(2, 1), id(3, 1), id(9, 9)];
  const pack = 'a'.repeat(64);
  cat.addChunks([
    { id: base, pack, offset: 0, storedSize: 10, plainSize: 40 },
    { id: twin, pack, offset: 10, storedSize: 10, plainSize: 40 },
    { id: other, pack, offset: 20, storedSize: 10, plainSize: 40 },
    { id: delta, pack: 'b'.repeat(64), offset: 0, storedSize: 5, plainSize: 40, bases: [base, gone] },
  ]);
  assert.deepEqual(cat.bases.chunksWithPrefix(base.subarray(0, 8)).map((b) => b.toString('hex')).sort(), [base, twin].map((b) => b.toString('hex')).sort());
  const needed = cat.bases.needed([delta]);
  assert.deepEqual(needed.found.map((b) => b.toString('hex')).sort(), [base, twin].map((b) => b.toString('hex')).sort(), 'a shared prefix keeps both chunks (the safe side)');
  assert.deepEqual(needed.missing.map((b) => b.toString('hex')), [gone.subarray(0, 8).toString('hex')]);
  assert.deepEqual(cat.bases.needed([other]), { found: [], missing: [] }, 'a whole chunk needs no bases');
  assert.deepEqual(cat.bases.needed([delta, base, twin]).found, [], 'bases in the list itself are not added again');
});

test('agent sources store deltas by default; `delta: false` in a source stores its changed chunks whole', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  const cfg = path.join(dir, 'kura.yaml');
  const a = path.join(dir, 'a.sql');
  const b = path.join(dir, 'b.sql');
  writeFileSync(
    cfg,
    `tenant: city-a\nrepository:\n  path: ${repo}\nsources:\n  deltas:\n    type: file\n    paths: [${a}]\n    chunkAvg: 4096\n  whole:\n    type: file\n    paths: [${b}]\n    chunkAvg: 4096\n    delta: false\n`,
  );
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  // different data per source: equal chunks would be shared, deltas and all
  const nightsA = [await collect(sqlDump(12, 2 * MiB))];
  const nightsB = [await collect(sqlDump(13, 2 * MiB))];
  nightsA.push(churn(nightsA[0]!, 40, 0));
  nightsB.push(churn(nightsB[0]!, 40, 0));
  const runs: Array<Array<{ source: string; snapshot: string; result: string }>> = [];
  for (let n = 0; n < 2; n++) {
    writeFileSync(a, nightsA[n]!);
    writeFileSync(b, nightsB[n]!);
    const r = await kuraAsync(['agent', 'run', '--json'], { env });
    assert.equal(r.status, 0, r.stderr);
    runs.push(r.out.trim().split('\n').map((l) => JSON.parse(l) as { source: string; snapshot: string; result: string }));
  }
  const second = new Map(runs[1]!.map((l) => [l.source, l.snapshot]));
  assert.ok((await blobKinds(repo, second.get('deltas')!)).deltas > 20, 'the default source stored deltas');
  assert.equal((await blobKinds(repo, second.get('whole')!)).deltas, 0, 'delta: false stored none');
  for (const [source, data] of [['deltas', nightsA[1]!], ['whole', nightsB[1]!]] as const) {
    assert.equal(sha256(kuraOk(['restore', second.get(source)!, '--to', '-'], { env }).stdout), sha256(data));
  }
});

test('a delta opens against its bases whatever their sizes; bases that begin with zstd\'s dictionary magic give no delta (the chunk is stored whole)', () => {
  const keys = { dataKey: Buffer.alloc(32, 3), idKey: Buffer.alloc(32, 4) };
  const sealer = new BlobSealer(keys.dataKey, 3);
  const text = (n: number, salt: number) => Buffer.from(Array.from({ length: n }, (_, i) => `${i * 7919 + salt}\t佐藤\t${(i * 31) % 997}\tresident\n`).join(''));
  for (const [what, size, bases] of [
    ['4 KiB chunk, three 4 KiB bases', 4096, 3],
    ['64 KiB chunk, three 64 KiB bases', 65536, 3],
    ['256 KiB chunk, eight 256 KiB bases (2 MiB of dictionary)', 262144, 8],
  ] as const) {
    const old = text((size * bases) / 24, 0).subarray(0, size * bases);
    const baseList = Array.from({ length: bases }, (_, i) => old.subarray(i * size, (i + 1) * size));
    // the chunk: the middle of the old text with every 50th row changed
    const plain = Buffer.from(old.subarray(Math.floor((size * bases) / 2) - size / 2, Math.floor((size * bases) / 2) + size / 2).toString('utf8').replace(/\t(\d)(\d\d)\tresident/g, (m, a: string, b: string) => (Number(b) % 50 === 0 ? `\t${a}${b}\tmoved` : m)));
    const id = chunkId(keys.idKey, plain);
    const baseIds = baseList.map((b) => chunkId(keys.idKey, b));
    const blob = sealer.seal(plain, id, { ids: baseIds, plain: Buffer.concat(baseList) });
    const info = blobInfo(blob)!;
    assert.equal(info.compression, Compression.DELTA, `${what}: stored as a delta`);
    assert.ok(blob.length < plain.length / 6, `${what}: the delta is small (${blob.length} of ${plain.length} bytes)`);
    assert.ok(openBlob(blob, id, keys, baseList).equals(plain), `${what}: opens to the chunk`);
  }
  const magic = Buffer.concat([Buffer.from([0x37, 0xa4, 0x30, 0xec]), text(200, 1)]).subarray(0, 4096);
  const plain = Buffer.from(magic);
  plain[100] ^= 1;
  const id = chunkId(keys.idKey, plain);
  const blob = sealer.seal(plain, id, { ids: [chunkId(keys.idKey, magic)], plain: magic });
  assert.notEqual(blobInfo(blob)!.compression, Compression.DELTA, 'no delta against a base that looks like a zstd dictionary');
  assert.ok(openBlob(blob, id, keys).equals(plain));
});

test('with and without the native addon (KURA_NATIVE=0) kura reads what the other wrote: deltas, blobs and cached chunk lists', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo, '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384']);
  const nights = [await collect(sqlDump(9, 2 * MiB))];
  nights.push(churn(nights[0]!, 35, 1), churn(churn(nights[0]!, 35, 1), 45, 3), churn(churn(churn(nights[0]!, 35, 1), 45, 3), 50, 5));
  const withAddon = {};
  const without = { KURA_NATIVE: '0' };
  // nights alternate: each is a delta of the one before, made by the other implementation
  const envs = [withAddon, without, withAddon, without];
  const snaps = nights.map((data, i) => {
    const file = path.join(dir, `night${i}.sql`);
    writeFileSync(file, data);
    return { ...kuraJson<{ id: string; newChunks: number }>(['backup', '--repo', repo, '--name', 'juki', '--file', file], { env: envs[i] }), sha: sha256(data) };
  });
  for (const s of snaps.slice(1)) assert.ok((await blobKinds(repo, s.id)).deltas > 20, `snapshot ${s.id.slice(0, 8)} holds deltas`);
  for (const env of [withAddon, without]) {
    for (const s of snaps) assert.equal(sha256(kuraOk(['restore', '--repo', repo, s.id, '--to', '-'], { env }).stdout), s.sha, `${env === without ? 'without' : 'with'} the addon: ${s.id.slice(0, 8)} restores`);
    assert.equal(kuraJson<{ ok: boolean }>(['check', '--repo', repo, '--read-data'], { env }).ok, true);
  }
  // an unchanged night again, each way: nothing new (the cached list and the dedup agree)
  for (const env of [withAddon, without]) assert.ok(kuraJson<{ newChunks: number }>(['backup', '--repo', repo, '--name', 'juki', '--file', path.join(dir, 'night3.sql')], { env }).newChunks <= 1);
});

test('sealBest keeps the delta that costs least with its header: bases that add nothing are left out', () => {
  const keys = { dataKey: Buffer.alloc(32, 5), idKey: Buffer.alloc(32, 6) };
  const sealer = new BlobSealer(keys.dataKey, 3);
  const rows = (salt: number) => Buffer.from(Array.from({ length: 200 }, (_, i) => `${i * 7919 + salt}\t鈴木\t${(i * 31) % 997}\tresident\n`).join('')).subarray(0, 4096);
  const middle = rows(1);
  const plain = Buffer.from(middle.toString('latin1').replace('resident', 'moved'), 'latin1');
  const unrelated = [Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24)), Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 40503 + 7) >>> 9))];
  const idOf = (b: Buffer) => chunkId(keys.idKey, b);
  const id = idOf(plain);
  const all = { ids: [idOf(unrelated[0]!), idOf(middle), idOf(unrelated[1]!)], plain: Buffer.concat([unrelated[0]!, middle, unrelated[1]!]) };
  const one = { ids: [idOf(middle)], plain: middle };
  const { blob, chosen } = sealer.sealBest(plain, id, [all, one]);
  assert.equal(chosen, 1, 'the base that holds the chunk\'s old content alone');
  assert.equal(blobInfo(blob)!.bases.length, 1);
  assert.ok(openBlob(blob, id, keys, [middle]).equals(plain));
  // and a chunk unlike any base is stored whole: chosen -1
  const other = new Prng(77).bytes(4096);
  const whole = sealer.sealBest(other, idOf(other), [all, one]);
  assert.equal(whole.chosen, -1);
  assert.notEqual(blobInfo(whole.blob)!.compression, Compression.DELTA);
});

test('whole or delta (table): a chunk changed for the first time keeps its delta while it costs under 90 % of the chunk whole; one changed again is stored whole once its delta costs half; the chunk is compressed alone only when that may change the choice', () => {
  const rows: Array<{ delta: number; plain: number; estimate: number | null; again: boolean; tryWhole: boolean; whole?: number; keep?: boolean; why: string }> = [
    { delta: 300, plain: 120_000, estimate: 1400, again: true, tryWhole: false, why: 'changed again, a fifth of what its bases take: no compression more' },
    { delta: 600, plain: 120_000, estimate: 1400, again: true, tryWhole: true, whole: 1400, keep: true, why: 'changed again, near half: compressed alone, and the delta still costs less than half' },
    { delta: 900, plain: 120_000, estimate: 1400, again: true, tryWhole: true, whole: 1400, keep: false, why: 'changed again, grown past half: stored whole, so the next nights\' deltas start from it' },
    { delta: 900, plain: 120_000, estimate: 1400, again: true, tryWhole: true, whole: 3700, keep: true, why: 'the bases flattered the chunk: whole it takes 3 700 B, the delta is kept' },
    { delta: 900, plain: 120_000, estimate: 1400, again: false, tryWhole: false, why: 'a first change (a heavy night): a delta under a sixth of the chunk is kept untried' },
    { delta: 900, plain: 120_000, estimate: null, again: true, tryWhole: false, why: 'no estimate (bases of unknown size): kept untried, as a first change' },
    { delta: 800, plain: 4096, estimate: null, again: false, tryWhole: true, whole: 1000, keep: true, why: 'a first change over a sixth of a small chunk: tried, and the delta costs under 90 % of the chunk whole' },
    { delta: 800, plain: 4096, estimate: null, again: false, tryWhole: true, whole: 850, keep: false, why: 'a first change: a delta at 94 % of the chunk whole is not kept' },
    { delta: 600, plain: 4096, estimate: 1000, again: true, tryWhole: true, whole: 1000, keep: false, why: 'a small chunk changed again: whole once the delta costs half' },
    { delta: 100, plain: 4096, estimate: 0, again: true, tryWhole: false, why: 'an estimate of 0 counts as none' },
  ];
  for (const r of rows) {
    assert.equal(worthTryingWhole(r.delta, r.plain, r.estimate, r.again), r.tryWhole, r.why);
    if (r.whole !== undefined) assert.equal(keepDelta(r.delta, r.whole, r.again), r.keep, r.why);
  }
  assert.equal(wholeEstimate(60_000, 2800, 240_000), 700, 'bases of 240 000 B stored in 2 800: a chunk of 60 000 B in ~700');
  assert.equal(wholeEstimate(60_000, undefined, 240_000), null);
  assert.equal(wholeSample(120_000), 16 << 10, 'a large chunk is judged by 16 KiB of it first');
  assert.equal(wholeSample(60_000), null, 'a smaller one is compressed whole');
  assert.equal(REBASE_AT, 0.5);
});

test('bases worth trying (table): a delta is tried against bases of up to 64 times the chunk\'s bytes, which one chunk size never exceeds', () => {
  const KiB = 1024;
  const table: Array<[number, number, boolean, string]> = [
    [4 * KiB, 3 * 4 * KiB, true, 'three bases of its own size'],
    [64 * KiB, 3 * MiB, true, 'the smallest 256 KiB-average chunk beside three of the largest (48 times)'],
    [KiB, 3 * 16 * KiB, true, 'the smallest 4 KiB-average chunk beside three of the largest (48 times)'],
    [4 * KiB, MAX_BASES_PER_CHUNK * 4 * KiB, true, 'exactly 64 times'],
    [4 * KiB, MAX_BASES_PER_CHUNK * 4 * KiB + 1, false, 'a byte beyond'],
    [4 * KiB, 3 * 256 * KiB, false, 'a source lowered from 256 KiB to 4 KiB chunks: its old chunks as bases'],
    [256 * KiB, 3 * 4 * KiB, true, 'a source raised from 4 KiB: small bases cost little'],
    [0, 64, true, 'an empty chunk against 64 bytes'],
    [0, 65, false, 'an empty chunk against more'],
  ];
  for (const [plain, bases, want, why] of table) assert.equal(basesWorthTrying(plain, bases), want, why);
});

test('a source whose chunk size was lowered stores that night whole, not as deltas of its far larger old chunks; the night after makes deltas of its own size', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]); // 256 KiB chunks on average
  const nights = [await collect(sqlDump(6, 4 * MiB))];
  nights.push(churn(nights[0]!, 40, 0), churn(churn(nights[0]!, 40, 0), 55, 7));
  const ids: string[] = [];
  nights.forEach((data, i) => {
    const file = path.join(dir, `night${i}.sql`);
    writeFileSync(file, data);
    ids.push(kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'juki', '--file', file, ...(i > 0 ? ['--chunk-avg', '4096'] : [])]).id);
  });
  const lowered = await blobKinds(repo, ids[1]!);
  // some may be deltas of old chunks near the old minimum (64 KiB) or the old generation's short
  // last chunk: how many depends on the repository's (random) chunk boundaries, 2 to 20 seen;
  // none of bases more than MAX_BASES_PER_CHUNK times its size
  assert.ok(lowered.whole > 500 && lowered.deltas * 10 < lowered.whole, `the night the chunk size went from 256 KiB to 4 KiB stored ${lowered.whole} chunks whole and ${lowered.deltas} as deltas of the old chunks`);
  assert.ok(lowered.maxBaseRatio <= MAX_BASES_PER_CHUNK, `a delta of bases ${lowered.maxBaseRatio.toFixed(1)} times its size`);
  const after = await blobKinds(repo, ids[2]!);
  assert.ok(after.deltas > 50, `the night after stored ${after.deltas} deltas of 4 KiB chunks`);
  nights.forEach((data, i) => assert.equal(sha256(kuraOk(['restore', '--repo', repo, ids[i]!, '--to', '-']).stdout), sha256(data), `night ${i + 1} restores`));
});

test('sealBest stores a chunk changed again whole once its delta costs half of what it takes whole; a small change stays a delta; a first change of the same size keeps its delta', () => {
  const keys = { dataKey: Buffer.alloc(32, 5), idKey: Buffer.alloc(32, 6) };
  const sealer = new BlobSealer(keys.dataKey, 3);
  const r = new Prng(11);
  const values = Array.from({ length: 3000 }, () => r.next() % 1_000_000);
  const text = (vals: number[]) => Buffer.from(vals.map((v, i) => `${i + 1}\t1\t${v}\t${' '.repeat(20)}\n`).join(''));
  const base = text(values);
  const changed = (share: number) => text(values.map((v, i) => ((i * 2654435761) >>> 0) % 1000 < share * 1000 ? (v + 1 + (r.next() % 999_983)) % 1_000_000 : v));
  const idOf = (b: Buffer) => chunkId(keys.idKey, b);
  const baseStored = sealer.sealBest(base, idOf(base), []).blob.length;
  const alternatives = [{ ids: [idOf(base)], plain: base, stored: baseStored }];
  for (const [share, delta] of [[0.05, true], [0.7, false]] as const) {
    const plain = changed(share);
    const again = sealer.sealBest(plain, idOf(plain), alternatives, { again: true });
    assert.equal(blobInfo(again.blob)!.compression === Compression.DELTA, delta, `${share * 100} % of the rows changed`);
    assert.equal(again.chosen, delta ? 0 : -1);
    assert.ok(openBlob(again.blob, idOf(plain), keys, delta ? [base] : undefined).equals(plain));
    if (!delta) {
      const first = sealer.sealBest(plain, idOf(plain), alternatives);
      assert.equal(blobInfo(first.blob)!.compression, Compression.DELTA, 'a first change keeps the delta');
      assert.ok(again.blob.length > first.blob.length, 'whole costs more tonight; the nights after it save');
    }
  }
});

test('a chunk that changes night after night is stored whole once its delta costs half of it, and the next night is a small delta of that; a chunk changed a little each night stays a delta; every night restores', async (t) => {
  const dir = tempDir(t);
  const r = new Prng(23);
  const rows = 120_000;
  // a table whose first half changes heavily every night (70 % of its values) and second half lightly (2 %)
  let values = Array.from({ length: rows }, () => r.next() % 1_000_000);
  const dump = (vals: number[]) => Buffer.from(vals.map((v, i) => `${i + 1}\t${i % 7}\t${v}\t${' '.repeat(30)}\n`).join(''));
  const nights: Buffer[] = [dump(values)];
  for (let n = 1; n <= 3; n++) {
    values = values.map((v, i) => (r.next() % 1000 < (i < rows / 2 ? 700 : 20) ? r.next() % 1_000_000 : v));
    nights.push(dump(values));
  }
  const files = nights.map((data, i) => {
    const file = path.join(dir, `night${i}.sql`);
    writeFileSync(file, data);
    return file;
  });
  /** The nights backed up into a repository of their own; throws what it found wrong. */
  const nightsIn = async (repo: string) => {
    kuraOk(['repo', 'init', '--repo', repo]);
    const snaps = files.map((file) => kuraJson<{ id: string; newBytes: number }>(['backup', '--repo', repo, '--name', 'juki', '--file', file]).id);
    const half = nights[0]!.length / 2;
    /** The kinds of the chunks night k stored anew, in the dump's heavily changed first half and in its second. */
    const stored = async (k: number) => {
      const before = new Set((await referencedChunks(repo, snaps[k - 1]!)).map((c) => c.toString('hex')));
      const ids = await referencedChunks(repo, snaps[k]!);
      const repoObj = await Repository.open(repo, null);
      try {
        const out = { heavy: { deltas: 0, whole: 0 }, light: { deltas: 0, whole: 0 } };
        let at = 0;
        const isNew = ids.map((c) => !before.has(c.toString('hex')));
        const kinds = new Map<string, boolean>();
        for await (const { id, blob } of readBlobs(repoObj, ids.filter((_, i) => isNew[i]), snaps[k]!)) kinds.set(id.toString('hex'), blobInfo(blob)!.compression === Compression.DELTA);
        const sizes = new Map<string, number>();
        for await (const { id, blob } of readBlobs(repoObj, ids, snaps[k]!)) sizes.set(id.toString('hex'), blobInfo(blob)!.plainLength);
        for (const c of ids) {
          const hex = c.toString('hex');
          const side = at < half ? out.heavy : out.light;
          at += sizes.get(hex)!;
          if (!kinds.has(hex)) continue;
          if (kinds.get(hex)) side.deltas++;
          else side.whole++;
        }
        return out;
      } finally {
        repoObj.close();
      }
    };
    const n1 = await stored(1);
    const n2 = await stored(2);
    const n3 = await stored(3);
    t.diagnostic(JSON.stringify({ n1, n2, n3 }));
    assert.ok(n1.heavy.deltas > 5 * Math.max(1, n1.heavy.whole), `night 1, a first change: deltas (${JSON.stringify(n1.heavy)})`);
    assert.ok(n2.heavy.whole > 5 * Math.max(1, n2.heavy.deltas), `night 2, changed again and grown past half: whole (${JSON.stringify(n2.heavy)})`);
    assert.ok(n3.heavy.deltas > 5 * Math.max(1, n3.heavy.whole), `night 3: deltas again, of night 2's whole chunks (${JSON.stringify(n3.heavy)})`);
    for (const n of [n1, n2, n3]) assert.ok(n.light.deltas > 5 * Math.max(1, n.light.whole), `lightly changed: deltas every night (${JSON.stringify(n.light)})`);
    snaps.forEach((id, i) => assert.equal(sha256(kuraOk(['restore', '--repo', repo, id, '--to', '-']).stdout), sha256(nights[i]!)));
  };
  // Each repository cuts with a gear seed of its own (from its random key), and its 6-10 chunks of
  // the heavy half fall differently on the table. A chunk of night 3 next to one that night 2
  // stored as a delta counts as changed again, and may be stored whole. At a few seeds the
  // counts miss the ratios below: night 3 with 6 deltas and 2 whole, 7 and 2, or 2 and 5; night 2
  // with 1 delta and 5 whole (four times in about thirty runs). Up to three repositories are
  // tried; what breaks the rule fails all three.
  const failures: string[] = [];
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      await nightsIn(path.join(dir, `repo${attempt}`));
      return;
    } catch (e) {
      if (!(e instanceof assert.AssertionError)) throw e;
      failures.push(`repository ${attempt}: ${e.message}`);
      t.diagnostic(failures.at(-1)!);
    }
  }
  assert.fail(failures.join('\n'));
});
