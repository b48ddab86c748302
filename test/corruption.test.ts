import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { blake3, Blake3Hasher } from '@napi-rs/blake-hash';
import { kura, kuraJson, kuraOk, tempDir, ROOT } from './support/cli.js';
import { churn, collect, sqlDump } from './support/generate.js';
import { referencedChunks } from './support/snapshots.js';
import { agentConfig, sshKey, startVault, vaultSession } from './support/vault.js';
import { KuraError } from '../src/errors.js';
import { idsOf, isListBlob } from '../src/repository/chunklist.js';
import { blobInfo } from '../src/crypto/blob.js';
import { blobDigest, digestVerdicts, DIGEST_BYTES, DIGEST_KEY, runDigests } from '../src/repository/digest.js';
import { PACK_TRAILER, parsePackIndex } from '../src/repository/pack.js';
import { listFetcher, readRuns } from '../src/repository/reader.js';
import { Repository } from '../src/repository/repository.js';
import { check } from '../src/checker/check.js';
import { decodeSnapshot, snapshotChunkIds } from '../src/repository/snapshot.js';
import { Frame } from '../src/protocol/frames.js';
import { isEntryFault } from '../src/relay/relay.js';
import { parseWant } from '../src/relay/transfer.js';

const KiB = 1024;
const SMALL_CHUNKS = ['--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384'];
const NO_KEY = { KURA_PASSPHRASE: undefined };

type BlobKind = 'data' | 'list';

interface Located {
  file: string;
  id: string;
  offset: number;
  length: number;
}

function packFiles(root: string): string[] {
  const out: string[] = [];
  for (const d of readdirSync(path.join(root, 'packs'))) for (const f of readdirSync(path.join(root, 'packs', d))) if (!f.startsWith('.')) out.push(path.join(root, 'packs', d, f));
  return out.sort();
}

/** The blobs of `kind` in these pack files (list blocks are plaintext: byte 0 is 2). */
function blobsIn(files: string[], kind: BlobKind): Located[] {
  const out: Located[] = [];
  for (const file of files) {
    const bytes = readFileSync(file);
    for (const e of parsePackIndex(bytes, bytes.length) ?? []) {
      if (isListBlob(bytes.subarray(e.offset, e.offset + e.length)) === (kind === 'list')) out.push({ file, id: e.id.toString('hex'), offset: e.offset, length: e.length });
    }
  }
  return out;
}

/** One bit of one byte in the middle of the blob rots. */
function flip(b: Located): void {
  const bytes = readFileSync(b.file);
  bytes[b.offset + (b.length >> 1)]! ^= 0x10;
  writeFileSync(b.file, bytes);
}

function backup(env: Record<string, string>, dir: string, source: string, data: Buffer): { id: string; newChunks: number; newBytes: number; damage?: { chunks: string[]; snapshots: string[] } } {
  const f = path.join(dir, `${source}-${Math.random().toString(36).slice(2)}.sql`);
  writeFileSync(f, data);
  return kuraJson(['backup', '--name', source, '--file', f, '--route', 'peer-dc'], { env });
}

function restored(env: Record<string, string>, id: string, from?: string): Buffer {
  return kuraOk(['restore', ...(from ? ['--from', from] : []), id], { env }).stdout;
}

async function damageScenario(t: import('node:test').TestContext, kind: BlobKind): Promise<void> {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private }) };
  kuraOk(['repo', 'init', ...SMALL_CHUNKS], { env });
  const repo = path.join(dir, 'repo');
  const tenantRepo = path.join(vault.root, 'tenants', 'city-a');
  const [d1, d3, d4, e1, e2] = await Promise.all([31, 32, 33, 41, 42].map((seed) => collect(sqlDump(seed, 1024 * KiB))));

  // night 1 of two sources; then one bit of a blob of the first rots on site
  const before = new Set(packFiles(repo));
  const a1 = backup(env, dir, 'juki', d1!);
  const a1Packs = packFiles(repo).filter((p) => !before.has(p));
  const b1 = backup(env, dir, 'zei', e1!);
  const rotten = blobsIn(a1Packs, kind)[3]!;
  flip(rotten);

  // the next backup of the same data finds the blob damaged before it deduplicates against it,
  // quarantines it and stores it anew: the new snapshot is whole, and so is the old one again
  const a2 = backup(env, dir, 'juki', d1!);
  assert.ok(a2.newBytes > 0, `the damaged ${kind} blob was stored anew (${a2.newBytes} new bytes)`);
  assert.deepEqual(a2.damage?.chunks, [rotten.id], 'the backup says which blob it found damaged');
  assert.deepEqual(a2.damage?.snapshots, [a1.id], 'and which older snapshot referenced it');
  assert.ok(restored(env, a2.id).equals(d1!), 'the new snapshot restores byte-identical');
  assert.ok(restored(env, a1.id).equals(d1!), 'the old one restores again: its chunk exists again');

  // more nights; then a blob only night 3 holds rots after every backup that could have seen it
  const mark = new Set(packFiles(repo));
  const a3 = backup(env, dir, 'juki', d3!);
  const a3Packs = packFiles(repo).filter((p) => !mark.has(p));
  const a4 = backup(env, dir, 'juki', d4!);
  const b2 = backup(env, dir, 'zei', e2!);
  const laterNeed = new Set([...(await referencedChunks(repo, a4.id)), ...(await referencedChunks(repo, b2.id))].map((c) => c.toString('hex')));
  const victim = blobsIn(a3Packs, kind).find((b) => !laterNeed.has(b.id))!;
  assert.ok(victim, `night 3 has a ${kind} blob of its own`);
  flip(victim);

  // the relay verifies every blob before it leaves: night 3 is set aside (its blob quarantined),
  // and the route goes on with the snapshots after it, of both sources, in order
  const sent = kura(['relay', 'once', '--json'], { env });
  assert.equal(sent.status, 65, `relay once says a snapshot was set aside: ${sent.stderr}`);
  const report = JSON.parse(sent.out.trim().split('\n')[0]!) as { state: string; sent: number; left: number; setAside: Array<{ snapshot: string; code: string; message: string }> };
  assert.equal(report.state, 'idle');
  assert.equal(report.sent, 5);
  assert.equal(report.left, 0);
  assert.deepEqual(report.setAside.map((s) => [s.snapshot, s.code]), [[a3.id, 'E_CHUNK_CORRUPT']]);
  assert.match(report.setAside[0]!.message, new RegExp(victim.id));
  const remote = kuraJson<Array<{ id: string; receivedSeq: number }>>(['snapshots', '--from', 'peer-dc'], { env });
  assert.deepEqual(
    remote.sort((x, y) => x.receivedSeq - y.receivedSeq).map((r) => r.id),
    [a1.id, b1.id, a2.id, a4.id, b2.id],
    'every snapshot but the damaged one arrived, oldest first',
  );
  assert.ok(restored(env, a4.id, 'peer-dc').equals(d4!), 'the later snapshot of that source restores from the vault');
  assert.ok(restored(env, b2.id, 'peer-dc').equals(e2!), 'and that of the other source');
  assert.ok(restored(env, a1.id, 'peer-dc').equals(d1!), 'the healed one was sent whole');

  // on site: the snapshot is damaged (kura snapshots, kura status, kura check), its entry set aside
  const local = kuraJson<Array<{ id: string; damaged: boolean; damagedChunks: string[] }>>(['snapshots'], { env });
  assert.deepEqual(local.filter((s) => s.damaged).map((s) => [s.id, s.damagedChunks]), [[a3.id, [victim.id]]]);
  const status = kura(['status', '--json'], { env });
  assert.equal(status.status, 65, status.stderr);
  assert.match(status.stderr, /E_SNAPSHOT_DAMAGED/);
  const st = JSON.parse(status.out) as { setAside: Array<{ snapshot: string; route: string; reason: string }>; damaged: Array<{ snapshot: string }>; routes: Array<{ setAside: number; queued: number }> };
  assert.deepEqual(st.setAside.map((a) => [a.snapshot, a.route]), [[a3.id, 'peer-dc']]);
  assert.match(st.setAside[0]!.reason, /E_CHUNK_CORRUPT/);
  assert.deepEqual(st.damaged.map((d) => d.snapshot), [a3.id]);
  assert.deepEqual(st.routes.map((r) => [r.setAside, r.queued]), [[1, 0]]);
  const chk = kura(['check', '--json'], { env });
  assert.equal(chk.status, 65);
  const problems = (JSON.parse(chk.out) as { problems: Array<{ kind: string; chunk: string; snapshots: string[] }> }).problems;
  assert.deepEqual(problems.map((p) => [p.kind, p.chunk, p.snapshots]), [['chunk-quarantined', victim.id, [a3.id]]]);

  // the vault's operator scrubs the tenant without its key, and finds a bit that rots there
  assert.equal(kuraJson<{ ok: boolean }>(['vault', 'check', '--config', vault.config, '--read-data'], { env: NO_KEY }).ok, true);
  const a4Need = new Set((await referencedChunks(repo, a4.id)).map((c) => c.toString('hex')));
  const atVault = blobsIn(packFiles(tenantRepo), kind).find((b) => a4Need.has(b.id))!;
  flip(atVault);
  for (const args of [['vault', 'check', '--config', vault.config, '--read-data', '--json'], ['check', '--repo', tenantRepo, '--read-data', '--json']]) {
    const scrub = kura(args, { env: NO_KEY });
    assert.equal(scrub.status, 65, `${args.join(' ')}: ${scrub.stderr}`);
    const r = JSON.parse(scrub.out.trim().split('\n')[0]!) as { keyless: boolean; problems: Array<{ kind: string; chunk?: string; snapshots?: string[] }> };
    assert.equal(r.keyless, true);
    const p = r.problems.find((x) => x.kind === 'chunk-corrupt');
    assert.equal(p?.chunk, atVault.id, JSON.stringify(r.problems));
    assert.ok(p.snapshots?.includes(a4.id), 'the problem names the snapshots it damages');
  }
  // repaired there, the next relay of the same data stores the chunk at the vault anew
  const repair = kura(['vault', 'check', '--config', vault.config, '--read-data', '--repair', '--json'], { env: NO_KEY });
  assert.deepEqual((JSON.parse(repair.out.trim()) as { quarantined: Array<{ chunk: string }> }).quarantined.map((q) => q.chunk), [atVault.id]);
  assert.ok(vault.audit().some((e) => e.event === 'check' && Array.isArray(e.quarantined) && (e.quarantined as string[]).includes(atVault.id)), 'the repair is audited');
  const a5 = backup(env, dir, 'juki', d4!);
  assert.equal(kura(['relay', 'once'], { env }).status, 0);
  assert.equal(kuraJson<{ ok: boolean }>(['vault', 'check', '--config', vault.config, '--read-data'], { env: NO_KEY }).ok, true);
  assert.ok(restored(env, a4.id, 'peer-dc').equals(d4!), 'the vault heals from the relay');
  assert.ok(restored(env, a5.id, 'peer-dc').equals(d4!));
}

test('a bit rots in a data blob on site: the next backup of the same data stores it anew, the relay sets aside a snapshot whose blob fails its digest and ships the later ones of both sources in order, and a keyless vault check finds a bit rotted at the vault', (t) => damageScenario(t, 'data'));
test('a bit rots in a chunk list block on site: the next backup of the same data stores it anew, the relay sets aside a snapshot whose list block fails its digest and ships the later ones of both sources in order, and a keyless vault check finds a list block rotted at the vault', (t) => damageScenario(t, 'list'));

test('kura relay skip sets a queued snapshot aside by hand: logged with who and why, listed by status, and the route ships the snapshots after it', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private }) };
  kuraOk(['repo', 'init'], { env });
  const first = backup(env, dir, 'juki', Buffer.from('night 1 rows\n'));
  const second = backup(env, dir, 'juki', Buffer.from('night 2 rows\n'));
  const skip = kura(['relay', 'skip', first.id.slice(0, 10), '--reason', 'export known bad', '--json'], { env: { ...env, USER: 'operator-7' } });
  assert.equal(skip.status, 0, skip.stderr);
  assert.deepEqual(JSON.parse(skip.out), { snapshot: first.id, route: 'peer-dc', source: 'juki', setAside: true });
  const logged = skip.stderr.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.event === 'relay-skip');
  assert.deepEqual([logged?.snapshot, logged?.route, logged?.user, logged?.reason], [first.id, 'peer-dc', 'operator-7', 'export known bad']);
  const st = JSON.parse(kura(['status', '--json'], { env }).out) as { setAside: Array<{ snapshot: string; reason: string }>; routes: Array<{ queued: number; setAside: number }> };
  assert.deepEqual(st.setAside.map((a) => [a.snapshot, a.reason]), [[first.id, 'skipped by operator-7: export known bad']]);
  assert.deepEqual(st.routes.map((r) => [r.queued, r.setAside]), [[1, 1]]);
  // an entry that is not waiting (set aside already) cannot be skipped again
  assert.equal(kura(['relay', 'skip', first.id], { env }).status, 66);
  const sent = kura(['relay', 'once', '--json'], { env });
  assert.equal(sent.status, 0, sent.stderr);
  assert.equal((JSON.parse(sent.out) as { sent: number }).sent, 1);
  assert.deepEqual(kuraJson<Array<{ id: string }>>(['snapshots', '--from', 'peer-dc'], { env }).map((s) => s.id), [second.id]);
});

test('check --read-data --repair quarantines a damaged blob; the next backup of the same data stores it again, after which the damaged snapshot restores and gc rewrites the pack', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo, ...SMALL_CHUNKS]);
  const data = await collect(sqlDump(51, 512 * KiB));
  const f = path.join(dir, 'night.sql');
  writeFileSync(f, data);
  const first = kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'juki', '--file', f]);
  const rotten = blobsIn(packFiles(repo), 'data')[5]!;
  flip(rotten);
  const found = kura(['check', '--repo', repo, '--read-data', '--json']);
  assert.equal(found.status, 65);
  assert.deepEqual((JSON.parse(found.out) as { problems: Array<{ kind: string; chunk?: string }> }).problems.filter((p) => p.kind === 'chunk-corrupt').map((p) => p.chunk), [rotten.id]);
  const repaired = kura(['check', '--repo', repo, '--read-data', '--repair', '--json']);
  assert.equal(repaired.status, 65, 'the damage is still there, now contained');
  assert.deepEqual((JSON.parse(repaired.out) as { quarantined: Array<{ chunk: string; offset: number }> }).quarantined.map((q) => [q.chunk, q.offset]), [[rotten.id, rotten.offset]]);
  // out of the index: the snapshot is damaged and says why it cannot be restored
  assert.deepEqual(kuraJson<Array<{ id: string; damaged: boolean }>>(['snapshots', '--repo', repo]).map((s) => [s.id, s.damaged]), [[first.id, true]]);
  const cannot = kura(['restore', '--repo', repo, first.id]);
  assert.equal(cannot.status, 65);
  assert.match(cannot.stderr, /E_CHUNK_MISSING.*quarantined/);
  // a second check names the quarantined chunk, without reading it again as if it were whole
  const again = JSON.parse(kura(['check', '--repo', repo, '--read-data', '--json']).out) as { problems: Array<{ kind: string; chunk?: string }> };
  assert.deepEqual(again.problems.map((p) => [p.kind, p.chunk]), [['chunk-quarantined', rotten.id]]);

  // heal: the next backup of the same data stores the chunk anew (whole), and both restore
  const healed = kuraJson<{ id: string; newChunks: number; damage?: unknown }>(['backup', '--repo', repo, '--name', 'juki', '--file', f]);
  assert.equal(healed.newChunks, 1);
  assert.equal(healed.damage, undefined, 'nothing new was found damaged: it was contained already');
  assert.ok(kuraOk(['restore', '--repo', repo, healed.id]).stdout.equals(data));
  assert.ok(kuraOk(['restore', '--repo', repo, first.id]).stdout.equals(data), 'the damaged snapshot restores again');
  assert.deepEqual(kuraJson<Array<{ damaged: boolean }>>(['snapshots', '--repo', repo]).map((s) => s.damaged), [false, false]);
  kuraOk(['check', '--repo', repo, '--read-data']);
  // gc rewrites the pack that held the damaged copy (its other blobs checked against their digests)
  const gc = kuraJson<{ packsRewritten: number; problems: string[] }>(['gc', '--repo', repo]);
  assert.deepEqual([gc.packsRewritten, gc.problems], [1, []]);
  assert.ok(!packFiles(repo).includes(rotten.file), 'the damaged file is gone');
  kuraOk(['check', '--repo', repo, '--read-data']);
  assert.ok(kuraOk(['restore', '--repo', repo, first.id]).stdout.equals(data));
});

test('deltas whose base rots are not reused: the next backup stores their chunks anew, so it and the snapshot before it restore; only the snapshot that held the base stays damaged', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo, ...SMALL_CHUNKS]);
  const night1 = await collect(sqlDump(71, 1024 * KiB));
  // night 2: one row in 40 changes its income (the same length), scattered over the dump
  const lines = night1.toString('utf8').split('\n');
  for (let i = 3; i < lines.length - 1; i += 40) lines[i] = lines[i]!.replace(/\t(\d)(\d*)\t/, (_m, a: string, b: string) => `\t${(Number(a) + 1) % 10}${b}\t`);
  const night2 = Buffer.from(lines.join('\n'));
  const run = (data: Buffer) => {
    const f = path.join(dir, `n-${Math.random().toString(36).slice(2)}.sql`);
    writeFileSync(f, data);
    return kuraJson<{ id: string; newChunks: number; damage?: { chunks: string[]; snapshots: string[] } }>(['backup', '--repo', repo, '--name', 'juki', '--file', f]);
  };
  const n1 = run(night1);
  const before = new Set(packFiles(repo));
  const n2 = run(night2);
  // a base of night 2's deltas (a chunk of night 1 only), and the deltas that need it
  const need = new Map<string, number>();
  for (const d of blobsIn(packFiles(repo).filter((p) => !before.has(p)), 'data')) {
    const blob = readFileSync(d.file).subarray(d.offset, d.offset + d.length);
    for (const b of blobInfo(blob)?.bases ?? []) need.set(b.toString('hex'), (need.get(b.toString('hex')) ?? 0) + 1);
  }
  const local = await Repository.open(repo, null);
  const night2Chunks = new Set([...idsOf(await snapshotChunkIds(await local.readSnapshot(n2.id), listFetcher(local)))].map((c) => c.toString('hex')));
  local.close();
  const [base] = [...need.keys()].filter((b) => !night2Chunks.has(b));
  assert.ok(base, `night 2 has deltas (${need.size} bases)`);
  flip(blobsIn(packFiles(repo), 'data').find((b) => b.id === base)!);
  // check --read-data fetches the bases of a pack's deltas a group at a time: the damage is the
  // base's and named as such, not that of the deltas grouped with the deltas that need it
  const found = JSON.parse(kura(['check', '--repo', repo, '--read-data', '--json']).out) as { chunksRead: number; problems: Array<{ kind: string; chunk?: string }> };
  assert.deepEqual(found.problems.filter((p) => p.chunk).map((p) => [p.kind, p.chunk]), [['chunk-corrupt', base]]);

  // night 2 again: the base is quarantined; the deltas that need it are whole but cannot be
  // opened, so their chunks are stored anew rather than reused
  const n3 = run(night2);
  assert.deepEqual(n3.damage?.chunks, [base]);
  assert.ok(n3.newChunks >= need.get(base)!, `${n3.newChunks} chunks stored anew for ${need.get(base)!} deltas of the lost base`);
  assert.ok(kuraOk(['restore', '--repo', repo, n3.id]).stdout.equals(night2), 'the new snapshot restores');
  assert.ok(kuraOk(['restore', '--repo', repo, n2.id]).stdout.equals(night2), 'night 2 too: its chunks exist again, whole');
  assert.deepEqual(kuraJson<Array<{ id: string; damaged: boolean }>>(['snapshots', '--repo', repo]).map((s) => [s.id, s.damaged]), [[n1.id, true], [n2.id, false], [n3.id, false]]);
  assert.match(kura(['restore', '--repo', repo, n1.id]).stderr, new RegExp(`E_CHUNK_MISSING: chunk ${base} .*quarantined`));
  // night 1 again heals the last one
  run(night1);
  assert.ok(kuraOk(['restore', '--repo', repo, n1.id]).stdout.equals(night1));
  kuraOk(['check', '--repo', repo, '--read-data']);
});

test('check --read-data whose store fails to give a delta\'s base stops with E_IO: the delta is neither passed unverified nor reported damaged', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo, ...SMALL_CHUNKS]);
  const night1 = await collect(sqlDump(73, 512 * KiB));
  for (const [i, data] of [night1, churn(night1, 40, 0)].entries()) {
    const f = path.join(dir, `night${i + 1}.sql`);
    writeFileSync(f, data);
    kuraOk(['backup', '--repo', repo, '--name', 'juki', '--file', f]);
  }
  const bases = new Set<string>();
  for (const d of blobsIn(packFiles(repo), 'data')) for (const b of blobInfo(readFileSync(d.file).subarray(d.offset, d.offset + d.length))?.bases ?? []) bases.add(b.toString('hex'));
  assert.ok(bases.size > 0, 'night 2 holds deltas');
  const r = await Repository.open(repo, { passphrase: 'correct horse' });
  try {
    assert.equal((await check(r, { readData: true })).problems.length, 0, 'the repository is sound');
    // the store answers everything but reads of the bases (a gateway that fails mid-check, say)
    const at = new Set([...bases].map((b) => {
      const loc = r.catalogue.location(Buffer.from(b, 'hex'))!;
      return `${loc.pack}@${loc.offset}`;
    }));
    const store = r.store as { getRanges: typeof r.store.getRanges };
    const inner = store.getRanges.bind(r.store);
    store.getRanges = (name, ranges, into) => {
      if (ranges.some((x) => at.has(`${name.split('/').pop()}@${x.offset}`))) return Promise.reject(new KuraError('E_IO', `cannot read ${name}: the gateway is gone`));
      return inner(name, ranges, into);
    };
    await assert.rejects(check(r, { readData: true }), (e: unknown) => e instanceof KuraError && e.code === 'E_IO');
  } finally {
    r.close();
  }
});

test('a repository written by kura with pack format 1 (no digests) is still read, restored and checked, with and without the key; new packs beside it carry digests, and the relay ships its old blobs saying they were unverified', async (t) => {
  const dir = tempDir(t);
  execFileSync('tar', ['-xzf', path.join(ROOT, 'fixtures', 'repo-format1.tar.gz'), '-C', dir]);
  const repo = path.join(dir, 'repo');
  // the inputs, made again as fixtures/repo-format1.md says
  const night1 = readFileSync(path.join(ROOT, 'fixtures', 'sample.sql')).subarray(0, 400000);
  const night2 = Buffer.from(night1.toString('latin1').split('\n').map((l, i) => (i % 37 === 0 ? l.replaceAll('1', '7') : l)).join('\n'), 'latin1');
  const notes = Buffer.from('format 1 fixture: a second source\n'.repeat(50));
  const snaps = kuraJson<Array<{ id: string; source: string; damaged: boolean }>>(['snapshots', '--repo', repo]);
  assert.deepEqual(snaps.map((s) => s.id.slice(0, 8)), ['eb09fa76', '2862c2e8', 'e5af472c']);
  for (const [s, want] of [[snaps[0]!, night1], [snaps[1]!, night2], [snaps[2]!, notes]] as const) assert.ok(kuraOk(['restore', '--repo', repo, s.id]).stdout.equals(want), `${s.id} restores`);
  const db = new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true });
  assert.equal(db.prepare(`SELECT value FROM meta WHERE key = 'schema'`).pluck().get(), '6', 'the catalogue was migrated');
  assert.equal(db.prepare(`SELECT count(*) FROM sqlite_master WHERE name = 'leases'`).pluck().get(), 0, 'its leases became sets');
  assert.equal(db.prepare('SELECT count(*) FROM chunk_rows WHERE digest IS NOT NULL').pluck().get(), 0, 'old blobs have no digest');
  db.close();
  const withKey = kuraJson<{ ok: boolean; chunksRead: number; chunksUnverified: number }>(['check', '--repo', repo, '--read-data']);
  assert.deepEqual([withKey.ok, withKey.chunksUnverified], [true, 0], 'with the key every blob is verified, as before');
  const keyless = kuraJson<{ ok: boolean; chunksRead: number; chunksUnverified: number; keyless: boolean }>(['check', '--repo', repo, '--read-data'], { env: NO_KEY });
  assert.equal(keyless.ok, true);
  assert.ok(keyless.keyless && keyless.chunksUnverified > 0 && keyless.chunksUnverified < keyless.chunksRead, `without it, data blobs are checked for their structure only (${keyless.chunksUnverified} of ${keyless.chunksRead}); list blocks by their IDs`);

  // a format 1 pack that rots: found by pack ID without the key, located and quarantined with it
  const old = packFiles(repo);
  const victim = blobsIn(old, 'data').find((b) => b.length > 1000)!;
  flip(victim);
  const blind = JSON.parse(kura(['check', '--repo', repo, '--read-data', '--json'], { env: NO_KEY }).out) as { problems: Array<{ kind: string; pack?: string }> };
  assert.deepEqual(blind.problems.map((p) => [p.kind, p.pack]), [['pack-corrupt', path.basename(victim.file)]]);
  const seen = JSON.parse(kura(['check', '--repo', repo, '--read-data', '--repair', '--json']).out) as { quarantined: Array<{ chunk: string }>; damagedSnapshots: string[] };
  assert.deepEqual(seen.quarantined.map((q) => q.chunk), [victim.id]);
  assert.ok(seen.damagedSnapshots.includes(snaps[0]!.id), 'the snapshots it damages are named');

  // night 1 again heals it (stored anew, whole, in a format 2 pack); then a new night: the deltas
  // of night 2 that needed the damaged chunk as their base are whole again too
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    default:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private, tenant: 'default' }) };
  const again = backup(env, dir, 'db', night1);
  assert.ok(again.newChunks >= 1);
  for (const [s, want] of [[snaps[0]!, night1], [snaps[1]!, night2]] as const) assert.ok(kuraOk(['restore', '--repo', repo, s.id]).stdout.equals(want), `${s.id} restores again`);
  const night3 = Buffer.concat([night2, Buffer.from('-- night 3\n')]);
  const b = backup(env, dir, 'db', night3);
  const fresh = packFiles(repo).filter((p) => !old.includes(p));
  assert.ok(fresh.length >= 1);
  for (const p of fresh) assert.equal(readFileSync(p).readUInt32LE(readFileSync(p).length - PACK_TRAILER + 4), 2, 'new packs are format 2');
  for (const p of old) assert.equal(readFileSync(p).readUInt32LE(readFileSync(p).length - PACK_TRAILER + 4), 1, 'old packs are left as they are');
  assert.ok(kuraOk(['restore', '--repo', repo, b.id]).stdout.equals(night3));
  kuraOk(['check', '--repo', repo, '--read-data']);
  // the relay ships old blobs it cannot verify without the key, and says so; the vault records their digests
  const sent = kura(['relay', 'once'], { env });
  assert.equal(sent.status, 0, sent.stderr);
  assert.match(sent.stderr, /had no recorded digest \(written before pack format 2\)/);
  const atVault = kuraJson<{ ok: boolean; chunksUnverified: number }>(['check', '--repo', path.join(vault.root, 'tenants', 'default'), '--read-data'], { env: NO_KEY });
  assert.deepEqual([atVault.ok, atVault.chunksUnverified], [true, 0]);
  assert.ok(kuraOk(['restore', '--from', 'peer-dc', b.id], { env }).stdout.equals(night3));
  assert.ok(kuraOk(['restore', '--from', 'peer-dc', again.id], { env }).stdout.equals(night1));
});

test('the vault stores nothing of a batch whose blob does not hash to the digest it was written with (protocol 4), though its checksum matches what was sent', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private }) };
  kuraOk(['repo', 'init', ...SMALL_CHUNKS], { env });
  const { id } = backup(env, dir, 'juki', await collect(sqlDump(61, 1024 * KiB)));
  const bytes = readFileSync(path.join(dir, 'repo', 'snapshots', id));
  assert.ok(decodeSnapshot(bytes, id).listDepth >= 1);
  const local = await Repository.open(path.join(dir, 'repo'), null);
  t.after(() => local.close());
  const conn = await vaultSession(vault, key.private, 'city-a', 4);
  t.after(() => conn.close());
  assert.equal(conn.protocol, 4);
  const asked = parseWant((await conn.request(Frame.WANT, bytes, Frame.WANT_REPLY)).payload).ids;
  // the list blocks as a sender that read one of them rotten: the batch checksum covers what is
  // sent, the digests are those recorded when the blocks were written
  const sum = new Blake3Hasher();
  const digests = new Blake3Hasher();
  let first = true;
  for await (const run of readRuns(local, asked, 'test')) {
    let off = 0;
    for (let i = 0; i < run.ids.length; i++) {
      const blob = Buffer.from(run.bytes.subarray(off, (off += run.lengths[i]!)));
      if (first) blob[blob.length - 1]! ^= 1;
      first = false;
      sum.update(blob);
      digests.update(run.digests[i]!);
      await conn.send(Frame.PUT_NEXT, blob);
    }
  }
  await conn.send(Frame.FLUSH, { seq: 1, sum: sum.digest('hex'), digests: digests.digest('hex') });
  const refused = await conn.expect(Frame.FLUSHED).catch((e: Error) => e);
  assert.ok(refused instanceof KuraError && refused.code === 'E_CHUNK_CORRUPT' && /digest recorded when it was written/.test(refused.message), String(refused));
  const again = await vaultSession(vault, key.private);
  t.after(() => again.close());
  assert.equal(parseWant((await again.request(Frame.WANT, bytes, Frame.WANT_REPLY)).payload).ids.length, asked.length, 'nothing of the batch was stored');
  assert.ok(vault.audit().some((e) => e.outcome === 'refused' && e.code === 'E_CHUNK_CORRUPT'));
  // and the relay itself, reading whole blobs, sends and commits
  assert.equal(kura(['relay', 'once'], { env }).status, 0);
  assert.deepEqual(kuraJson<Array<{ id: string }>>(['snapshots', '--from', 'peer-dc'], { env }).map((s) => s.id), [id]);
});

test('blob digests: one at a time and side by side agree with BLAKE3 keyed by "kura blob digest v1", a changed byte changes the verdict, blobs without one are unrecorded', () => {
  assert.ok(DIGEST_KEY.equals(blake3('kura blob digest v1')));
  const blobs = [Buffer.alloc(0), Buffer.from('x'), Buffer.alloc(1024, 1), Buffer.alloc(1025, 2), Buffer.alloc(17 * 1024, 3), Buffer.alloc(300, 4)];
  const run = runDigests(Buffer.concat(blobs), blobs.map((b) => b.length));
  blobs.forEach((b, i) => {
    const reference = Blake3Hasher.newKeyed(DIGEST_KEY).update(b).digestBuffer().subarray(0, DIGEST_BYTES);
    assert.ok(blobDigest(b).equals(reference), `blob ${i} of ${b.length} bytes, alone`);
    assert.ok(run.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES).equals(reference), `blob ${i} of ${b.length} bytes, side by side`);
  });
  const recorded = blobs.map((b, i) => (i === 1 ? null : blobDigest(b)));
  const rotten = blobs.map((b) => Buffer.from(b));
  rotten[3]![700]! ^= 0x80;
  const verdicts = digestVerdicts(recorded, runDigests(Buffer.concat(rotten), rotten.map((b) => b.length)));
  assert.deepEqual(verdicts, ['ok', 'unrecorded', 'ok', 'damaged', 'ok', 'ok']);
});

test('which relay errors set one entry aside and which concern the route', () => {
  const table: Array<[string, KuraError | Error, boolean]> = [
    ['a local blob that fails its digest', new KuraError('E_CHUNK_CORRUPT', 'x', { damaged: [] }), true],
    ['a local chunk quarantined or missing', new KuraError('E_CHUNK_MISSING', 'x'), true],
    ['a damaged local snapshot file', new KuraError('E_SNAPSHOT_CORRUPT', 'x'), true],
    ['a queued snapshot no longer on site', new KuraError('E_SNAPSHOT_NOT_FOUND', 'x'), true],
    ['the vault refusing a damaged batch', new KuraError('E_CHUNK_CORRUPT', 'vault: x', { fromVault: true }), false],
    ['the vault refusing a commit', new KuraError('E_CHUNK_MISSING', 'vault: x', { fromVault: true }), false],
    ['the line', new KuraError('E_LINK_DOWN', 'x'), false],
    ['the quota', new KuraError('E_QUOTA', 'vault: x', { fromVault: true }), false],
    ['a key the vault does not know', new KuraError('E_AUTH_DENIED', 'x'), false],
    ['a bug', new Error('x'), false],
  ];
  for (const [what, e, aside] of table) assert.equal(isEntryFault(e), aside, what);
});

test('pack indexes of format 1 and 2 both parse; only format 2 entries carry digests', () => {
  const blobs = [Buffer.from('first blob'), Buffer.from('second, longer blob')];
  const ids = [Buffer.alloc(32, 1), Buffer.alloc(32, 2)];
  // format 1, as kura wrote it before: 40-byte entries
  const v1 = Buffer.alloc(blobs[0]!.length + blobs[1]!.length + 2 * 40 + PACK_TRAILER);
  let o = 0;
  for (const b of blobs) o += b.copy(v1, o);
  let off = 0;
  blobs.forEach((b, i) => {
    ids[i]!.copy(v1, o);
    v1.writeUInt32LE(off, o + 32);
    v1.writeUInt32LE(b.length, o + 36);
    o += 40;
    off += b.length;
  });
  v1.writeUInt32LE(2, o);
  v1.writeUInt32LE(1, o + 4);
  v1.write('KURAPACK', o + 8, 'latin1');
  assert.deepEqual(parsePackIndex(v1, v1.length)!.map((e) => [e.id[0], e.offset, e.length, e.digest]), [[1, 0, 10, null], [2, 10, 19, null]]);
  // the same claimed as format 2 no longer adds up: refused, not misread
  const bad = Buffer.from(v1);
  bad.writeUInt32LE(2, o + 4);
  assert.equal(parsePackIndex(bad, bad.length), null);
  assert.equal(parsePackIndex(Buffer.from(v1).fill(9, v1.length - 12, v1.length - 8), v1.length), null, 'an unknown format is refused');
});
