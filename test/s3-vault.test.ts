import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { KURA, ROOT, kuraAsync, type RunResult } from './support/cli.js';
import { collect, Prng, sha256, sqlDump } from './support/generate.js';
import { exitOf, waitFor } from './support/proc.js';
import { LinkProxy, sleep } from './support/proxy.js';
import { rgwOrSkip, type Rgw, useRgw } from './support/rgw.js';
import { OverwritingProxy } from './support/s3proxy.js';
import { BucketView } from './support/s3util.js';
import { agentConfig, freePort, sshKey, startVault, vaultSession, type VaultProcess } from './support/vault.js';
import { referencedChunks } from './support/snapshots.js';
import { Frame, jsonOf } from '../src/protocol/frames.js';

/**
 * A vault whose tenants live in an S3 bucket on a real Ceph RGW (one gateway for the file):
 * relays ship to it, prune and gc run beside uploads, kill -9 mid-upload and mid-gc.
 */
const MiB = 1 << 20;
let rgw: Rgw | null = null;
let top = '';

useRgw('kura-s3v-', (r, d) => {
  rgw = r;
  top = d;
});

function storageYaml(bucket: string): string {
  return `  storage:\n    type: s3\n    endpoint: ${rgw!.endpoint}\n    bucket: ${bucket}\n    prefix: "dc-a/"\n`;
}

async function ok(p: Promise<RunResult>, what: string): Promise<RunResult> {
  const r = await p;
  assert.equal(r.status, 0, `${what}: ${r.stderr}`);
  return r;
}

async function okJson<T>(args: string[], env: Record<string, string | undefined>, what: string): Promise<T> {
  const r = await ok(kuraAsync([...args, '--json'], { env }), what);
  return JSON.parse(r.out.trim().split('\n').pop()!) as T;
}

/** Night n's export: a shared base with the night's own rows spread through it. */
function night(base: Buffer, n: number): Buffer {
  const r = new Prng(100 + n);
  const parts: Buffer[] = [];
  for (let i = 0; i * MiB < base.length; i++) parts.push(base.subarray(i * MiB, (i + 1) * MiB), Buffer.from(`-- night ${n} part ${i}\n`), r.bytes(160 << 10));
  return Buffer.concat(parts);
}

function tenantYaml(key: string, retention = '{ keepLast: 2 }'): string {
  return `    city-a:\n      clients:\n        - key: ${key}\n          role: tenant-admin\n      retention: ${retention}\n`;
}

test('a vault tenant on S3: a relay ships 5 nights; vault prune + gc run while a sixth goes up over a slow link; it commits and restores byte-identical; the tenant checks clean and rebuilds its catalogue from the bucket without a key', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'ship');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  const metricsPort = await freePort();
  const vault = await startVault(dir, tenantYaml(key.public), `${storageYaml('vault-ship')}  metrics: { host: 127.0.0.1, port: ${metricsPort} }\n`);
  t.after(() => vault.stop());
  const link = await new LinkProxy(vault.port).start();
  t.after(() => link.close());
  const cfg = agentConfig(dir, { port: link.port, hostKeySha256: vault.hostKeySha256, key: key.private });
  const env = { KURA_CONFIG: cfg };
  await ok(kuraAsync(['repo', 'init'], { env }), 'repo init');
  const base = await collect(sqlDump(31, 4 * MiB));
  const nights: Array<{ id: string; sha: string }> = [];
  const backupNight = async (n: number) => {
    const data = night(base, n);
    const f = path.join(dir, `night${n}.sql`);
    writeFileSync(f, data);
    const b = await okJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], env, `backup night ${n}`);
    nights.push({ id: b.id, sha: sha256(data) });
  };
  for (let n = 0; n < 5; n++) await backupNight(n);
  await ok(kuraAsync(['relay', 'once'], { env }), 'relay once (5 nights)');
  // the store's requests and bytes are on the vault's /metrics
  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const puts = Number(/kura_store_requests_total\{backend="s3",op="put"\} (\d+)/.exec(metrics)?.[1] ?? 0);
  assert.ok(puts > 5, metrics);
  assert.match(metrics, /kura_store_written_bytes_total\{backend="s3"\} [1-9]\d*/);
  const bucket = new BucketView(rgw!, 'vault-ship');
  t.after(() => bucket.close());
  assert.equal((await bucket.keys('dc-a/tenants/city-a/snapshots/')).length, 5);
  assert.ok((await bucket.keys('dc-a/tenants/city-a/packs/')).length > 0);

  // the sixth night goes up at 400 KB/s while the vault prunes to 2 and collects garbage
  await backupNight(5);
  link.setRate(400_000);
  const relay = kuraAsync(['relay', 'once'], { env });
  await waitFor('the sixth upload to be under way', () => link.bytesUp > 300_000, 60_000);
  const pruned = JSON.parse((await ok(kuraAsync(['vault', 'prune', '--config', vault.config, '--json']), 'vault prune')).out) as { prune: { removed: number } };
  assert.equal(pruned.prune.removed, 3);
  const gc = JSON.parse((await ok(kuraAsync(['vault', 'gc', '--config', vault.config, '--json']), 'vault gc')).out) as { gc: { chunksRemoved: number; problems: string[] } };
  assert.ok(gc.gc.chunksRemoved > 0, 'the pruned nights\' own chunks are collected');
  assert.deepEqual(gc.gc.problems, []);
  const upload = await ok(relay, 'relay once (sixth night, slow link)');
  assert.ok(link.bytesUp > 300_000, upload.stderr);
  link.setRate(null);
  const sixth = nights[5]!;
  assert.equal(sha256((await ok(kuraAsync(['restore', '--from', 'peer-dc', sixth.id, '--to', '-'], { env }), 'restore night 6')).stdout), sixth.sha);
  assert.equal(sha256((await ok(kuraAsync(['restore', '--from', 'peer-dc', nights[4]!.id, '--to', '-'], { env }), 'restore night 5')).stdout), nights[4]!.sha);

  const venv = { KURA_CONFIG: vault.config, KURA_PASSPHRASE: undefined };
  const chk = await okJson<{ ok: boolean; chunksUnreferenced: number }>(['check', '--vault-tenant', 'city-a'], venv, 'check the tenant');
  assert.equal(chk.ok, true);
  // usage adds up the tenant's objects from the bucket's listing
  const usage = JSON.parse((await ok(kuraAsync(['vault', 'usage', '--config', vault.config, '--json']), 'vault usage')).out) as { tenants: Array<{ tenant: string; storedBytes: number }> };
  const inBucket = (await bucket.bytes('dc-a/tenants/city-a/packs/')) + (await bucket.bytes('dc-a/tenants/city-a/snapshots/'));
  assert.equal(usage.tenants.find((u) => u.tenant === 'city-a')?.storedBytes, inBucket);
  // the catalogue is a cache of the bucket: rebuilt without any key (vault stopped: it holds the catalogue open)
  await vault.stop();
  rmSync(path.join(vault.root, 'tenants', 'city-a', 'catalogue.sqlite'));
  const rebuilt = await okJson<{ chunks: number; snapshots: number }>(['repo', 'rebuild-index', '--vault-tenant', 'city-a'], venv, 'rebuild-index of the tenant');
  assert.equal(rebuilt.snapshots, 3);
  assert.ok(rebuilt.chunks > 0);
  assert.equal((await okJson<{ ok: boolean }>(['check', '--vault-tenant', 'city-a'], venv, 'check after rebuild')).ok, true);
});

test('kill -9 of a vault on S3 mid-upload and of its gc mid-run: the tenant stays consistent and reruns finish', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'kill');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  let vault: VaultProcess = await startVault(dir, tenantYaml(key.public), storageYaml('vault-kill'));
  t.after(() => vault.stop());
  let link = await new LinkProxy(vault.port).start();
  t.after(() => link.close());
  let cfg = agentConfig(dir, { port: link.port, hostKeySha256: vault.hostKeySha256, key: key.private });
  await ok(kuraAsync(['repo', 'init'], { env: { KURA_CONFIG: cfg } }), 'repo init');
  const base = await collect(sqlDump(41, 4 * MiB));
  const nights: Array<{ id: string; sha: string }> = [];
  for (let n = 0; n < 4; n++) {
    const data = night(base, n);
    const f = path.join(dir, `night${n}.sql`);
    writeFileSync(f, data);
    nights.push({ id: (await okJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { KURA_CONFIG: cfg }, `backup ${n}`)).id, sha: sha256(data) });
  }
  // mid-upload: the vault dies with part of the nights sent
  link.setRate(600_000);
  const relay = kuraAsync(['relay', 'once'], { env: { KURA_CONFIG: cfg } });
  await waitFor('the upload to be under way', () => link.bytesUp > 1.5 * MiB, 60_000);
  vault.child.kill('SIGKILL');
  await exitOf(vault.child);
  const cut = await relay;
  assert.notEqual(cut.status, 0, 'the relay saw the vault go');
  // restarted (a new port: a new link and route)
  vault = await startVault(dir, tenantYaml(key.public), storageYaml('vault-kill'));
  await link.close();
  link = await new LinkProxy(vault.port).start();
  cfg = agentConfig(dir, { port: link.port, hostKeySha256: vault.hostKeySha256, key: key.private });
  await ok(kuraAsync(['relay', 'once'], { env: { KURA_CONFIG: cfg } }), 'relay once after the restart');
  for (const n of nights) assert.equal(sha256((await ok(kuraAsync(['restore', '--from', 'peer-dc', n.id, '--to', '-'], { env: { KURA_CONFIG: cfg } }), 'restore')).stdout), n.sha);
  const venv = { KURA_CONFIG: vault.config, KURA_PASSPHRASE: undefined };
  assert.equal((await okJson<{ ok: boolean }>(['check', '--vault-tenant', 'city-a'], venv, 'check after the kill')).ok, true);

  // mid-gc: prune to the last 2, a gc killed at a random moment, then a rerun
  await ok(kuraAsync(['vault', 'prune', '--config', vault.config]), 'vault prune');
  const r = new Prng(5);
  const gc = spawn(process.execPath, [KURA, 'vault', 'gc', '--config', vault.config], { cwd: ROOT, env: { ...process.env, KURA_LOG_FORMAT: 'json' }, stdio: 'ignore' });
  // killed once it holds the tenant's gc lock (it has opened the catalogue), a little later at random
  const Db = (await import('better-sqlite3')).default;
  const gcHolds = () => {
    try {
      const db = new Db(path.join(vault.root, 'tenants', 'city-a', 'catalogue.sqlite'), { readonly: true, fileMustExist: true });
      try {
        return db.prepare(`SELECT 1 FROM locks WHERE kind = 'gc'`).get() !== undefined;
      } finally {
        db.close();
      }
    } catch {
      return false;
    }
  };
  await waitFor('the gc to start', () => gcHolds() || gc.exitCode !== null, 60_000, 5);
  await sleep(r.next() % 300);
  const stillRunning = gc.exitCode === null;
  gc.kill('SIGKILL');
  await exitOf(gc);
  t.diagnostic(`the gc was ${stillRunning ? 'killed mid-run' : 'already done when killed'}`);
  for (const n of nights.slice(2)) assert.equal(sha256((await ok(kuraAsync(['restore', '--from', 'peer-dc', n.id, '--to', '-'], { env: { KURA_CONFIG: cfg } }), 'restore after the killed gc')).stdout), n.sha);
  const rerun = JSON.parse((await ok(kuraAsync(['vault', 'gc', '--config', vault.config, '--json']), 'vault gc rerun')).out) as { gc: { problems: string[] } };
  assert.deepEqual(rerun.gc.problems, []);
  const chk = await okJson<{ ok: boolean; chunksUnreferenced: number }>(['check', '--vault-tenant', 'city-a'], venv, 'check after gc');
  assert.equal(chk.ok, true); // (chunks the killed session was told of stay leased for leaseTtl: unreferenced, kept)
  // nothing condemned is left behind, and every pack the catalogue uses is in the bucket (a pack
  // the killed vault's session had leased may stay until its lease ends)
  const bucket = new BucketView(rgw!, 'vault-kill');
  t.after(() => bucket.close());
  const inBucket = (await bucket.keys('dc-a/tenants/city-a/packs/')).map((k) => k.slice(k.lastIndexOf('/') + 1)).sort();
  const Database = (await import('better-sqlite3')).default;
  await vault.stop();
  const db = new Database(path.join(vault.root, 'tenants', 'city-a', 'catalogue.sqlite'), { readonly: true });
  try {
    const used = (db.prepare('SELECT DISTINCT pack FROM chunks ORDER BY pack').pluck().all() as string[]).sort();
    for (const p of used) assert.ok(inBucket.includes(p), `pack ${p} is in the bucket`);
    const left = db.prepare('SELECT c.pack, c.since, c.claimed, l.session, l.expires FROM condemned_packs c LEFT JOIN pack_leases l ON l.pack = c.pack').all();
    assert.deepEqual(left, [], 'no condemned pack is left');
  } finally {
    db.close();
  }
});

test('the gc lease invariant on S3: a session told chunks are present commits after a prune removed their last snapshot and a gc ran; once unleased they are collected and their pack objects deleted', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'lease');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, tenantYaml(key.public, '{ keepLast: 0 }'), storageYaml('vault-lease'));
  t.after(() => vault.stop());
  const cfg = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private });
  const env = { KURA_CONFIG: cfg };
  await ok(kuraAsync(['repo', 'init'], { env }), 'repo init');
  const data = await collect(sqlDump(21, 3 * MiB));
  const f = path.join(dir, 'juki.sql');
  writeFileSync(f, data);
  const a = await okJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], env, 'backup A');
  await ok(kuraAsync(['relay', 'once'], { env }), 'relay once');
  // the next night's export is the same: every chunk of B is in the vault, used only by A
  const b = await okJson<{ id: string }>(['backup', '--name', 'juki', '--file', f], env, 'backup B');
  const { readFileSync } = await import('node:fs');
  const bBytes = readFileSync(path.join(dir, 'repo', 'snapshots', b.id));
  const ids = Buffer.concat(await referencedChunks(path.join(dir, 'repo'), b.id));
  const conn = await vaultSession(vault, key.private);
  t.after(() => conn.close());
  const reply = (await conn.request(Frame.HAS, ids, Frame.HAS_REPLY)).payload;
  const n = ids.length / 32;
  for (let i = 0; i < n; i++) assert.ok(reply[i >> 3]! & (1 << (i & 7)), `chunk ${i} reported present`);

  const pruned = JSON.parse((await ok(kuraAsync(['vault', 'prune', '--config', vault.config, '--json']), 'vault prune')).out) as { prune: { removed: number; decisions: Array<{ id: string; keep: boolean }> } };
  assert.deepEqual(pruned.prune.decisions.filter((d) => !d.keep).map((d) => d.id), [a.id]);
  const gc = JSON.parse((await ok(kuraAsync(['vault', 'gc', '--config', vault.config, '--json']), 'vault gc')).out) as { gc: { chunksRemoved: number; snapshots: number } };
  assert.equal(gc.gc.snapshots, 0);
  assert.equal(gc.gc.chunksRemoved, 0, 'leased chunks are not garbage');
  const bucket = new BucketView(rgw!, 'vault-lease');
  t.after(() => bucket.close());
  assert.ok((await bucket.keys('dc-a/tenants/city-a/packs/')).length > 0, 'the leased chunks\' packs are still there');

  const committed = jsonOf<{ id: string; existed: boolean }>(await conn.request(Frame.COMMIT, bBytes, Frame.COMMITTED));
  assert.equal(committed.id, b.id);
  conn.close();
  assert.equal(sha256((await ok(kuraAsync(['restore', '--from', 'peer-dc', b.id, '--to', '-'], { env }), 'restore B from the vault')).stdout), sha256(data));

  // control: once B is pruned too and no session holds them, the same chunks are collected
  await ok(kuraAsync(['vault', 'prune', '--config', vault.config]), 'vault prune');
  const gc2 = JSON.parse((await ok(kuraAsync(['vault', 'gc', '--config', vault.config, '--json']), 'vault gc')).out) as { gc: { chunksRemoved: number; packsDeleted: number } };
  assert.equal(gc2.gc.chunksRemoved, new Set(Array.from({ length: n }, (_, i) => ids.subarray(i * 32, i * 32 + 32).toString('hex'))).size);
  assert.deepEqual(await bucket.keys('dc-a/tenants/city-a/packs/'), [], 'every pack object is gone');
});

test('vault stdio, one process per SSH session, proves conditional creates as vault serve does: a store behind a gateway that ignores If-None-Match is refused (E_STORE_UNSAFE) before the session starts', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'stdio');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  const proxy = await new OverwritingProxy(rgw!).start();
  t.after(() => proxy.stop());
  const configFor = (name: string, endpoint: string) => {
    const file = path.join(dir, `${name}.yaml`);
    writeFileSync(file, `vault:\n  root: ${path.join(dir, name)}\n  storage:\n    type: s3\n    endpoint: ${endpoint}\n    bucket: vault-stdio\n    prefix: "${name}/"\n  tenants:\n${tenantYaml(key.public)}`);
    return file;
  };
  const stdio = async (config: string) => {
    const child = spawn(process.execPath, [KURA, 'vault', 'stdio', '--config', config, '--tenant', 'city-a'], { cwd: ROOT, env: { ...process.env, KURA_LOG_FORMAT: 'json' }, stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.stdout.resume();
    child.stdin.end(); // the SSH client hangs up at once: a session that started ends cleanly
    const { code } = await exitOf(child);
    return { code, err };
  };
  const unsafe = await stdio(configFor('unsafe', proxy.endpoint));
  assert.equal(unsafe.code, 78, unsafe.err);
  assert.match(unsafe.err, /E_STORE_UNSAFE/);
  assert.ok(proxy.conditionalPutsIgnored >= 2, 'the probe went through the proxy');
  const bucket = new BucketView(rgw!, 'vault-stdio');
  t.after(() => bucket.close());
  assert.deepEqual(await bucket.keys('unsafe/'), [], 'nothing written for the tenant, no probe object left');
  const safe = await stdio(configFor('safe', rgw!.endpoint));
  assert.equal(safe.code, 0, safe.err);
  assert.doesNotMatch(safe.err, /E_STORE_UNSAFE/);
});
