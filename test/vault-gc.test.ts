import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import Database from 'better-sqlite3';
import { kuraAsync, kuraJson, kuraOk, tempDir, type RunResult } from './support/cli.js';
import { collect, Prng, sha256, sqlDump } from './support/generate.js';
import { sleep } from './support/proxy.js';
import { agentConfig, sshKey, startVault, vaultSession } from './support/vault.js';
import { Frame, jsonOf } from '../src/protocol/frames.js';
import { referencedChunks } from './support/snapshots.js';
import { largestRemainder, percentShares } from '../src/vault/maintenance.js';
import { RECORD_EVERY, TransferAccounting } from '../src/vault/transfer-accounting.js';
import type { TransferBytes } from '../src/repository/catalogue.js';

const MiB = 1 << 20;

async function ok(p: Promise<RunResult>, what: string): Promise<RunResult> {
  const r = await p;
  assert.equal(r.status, 0, `${what}: ${r.stderr}`);
  return r;
}

function tenantCounts(root: string, tenant: string): { chunks: number; snapshots: number } {
  const db = new Database(path.join(root, 'tenants', tenant, 'catalogue.sqlite'), { readonly: true });
  try {
    return {
      chunks: (db.prepare('SELECT count(*) AS n FROM chunks').get() as { n: number }).n,
      snapshots: (db.prepare('SELECT count(*) AS n FROM snapshots').get() as { n: number }).n,
    };
  } finally {
    db.close();
  }
}

test('a session told chunks are present commits after a prune removed their last snapshot and a gc ran; unleased garbage is collected', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n      retention: { keepLast: 0 }\n`);
  t.after(() => vault.stop());
  const cfg = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  const data = await collect(sqlDump(21, 3 * MiB));
  const f = path.join(dir, 'juki.sql');
  writeFileSync(f, data);
  const a = kuraJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { env });
  await ok(kuraAsync(['relay', 'once'], { env }), 'relay once');
  // the next night's export is the same: every chunk of B is in the vault, used only by A
  const b = kuraJson<{ id: string }>(['backup', '--name', 'juki', '--file', f], { env });
  const bBytes = readFileSync(path.join(dir, 'repo', 'snapshots', b.id));
  const ids = Buffer.concat(await referencedChunks(path.join(dir, 'repo'), b.id));

  const conn = await vaultSession(vault, key.private);
  t.after(() => conn.close());
  const reply = (await conn.request(Frame.HAS, ids, Frame.HAS_REPLY)).payload;
  const n = ids.length / 32;
  for (let i = 0; i < n; i++) assert.ok(reply[i >> 3]! & (1 << (i & 7)), `chunk ${i} reported present`);

  // meanwhile on the vault: A falls out of retention and a gc runs
  const pruned = JSON.parse((await ok(kuraAsync(['vault', 'prune', '--config', vault.config, '--json']), 'vault prune')).out) as { prune: { removed: number; decisions: Array<{ id: string; keep: boolean }> } };
  assert.equal(pruned.prune.removed, 1);
  assert.deepEqual(pruned.prune.decisions.filter((d) => !d.keep).map((d) => d.id), [a.id]);
  assert.equal(tenantCounts(vault.root, 'city-a').snapshots, 0);
  const gc = JSON.parse((await ok(kuraAsync(['vault', 'gc', '--config', vault.config, '--json']), 'vault gc')).out) as { gc: { chunksRemoved: number; snapshots: number } };
  assert.equal(gc.gc.snapshots, 0);
  assert.equal(gc.gc.chunksRemoved, 0, 'leased chunks are not garbage');

  const committed = jsonOf<{ id: string; existed: boolean }>(await conn.request(Frame.COMMIT, bBytes, Frame.COMMITTED));
  assert.equal(committed.id, b.id);
  conn.close();
  const restored = await ok(kuraAsync(['restore', '--from', 'peer-dc', b.id, '--to', '-'], { env }), 'restore B from the vault');
  assert.equal(sha256(restored.stdout), sha256(data));
  assert.equal(kuraJson<{ ok: boolean }>(['check', '--repo', path.join(vault.root, 'tenants', 'city-a')], { env: { KURA_PASSPHRASE: undefined } }).ok, true);

  // control: once B is pruned too and no session holds them, the same chunks are collected
  await ok(kuraAsync(['vault', 'prune', '--config', vault.config]), 'vault prune');
  const gc2 = JSON.parse((await ok(kuraAsync(['vault', 'gc', '--config', vault.config, '--json']), 'vault gc')).out) as { gc: { chunksRemoved: number } };
  assert.equal(gc2.gc.chunksRemoved, n > 0 ? new Set(Array.from({ length: n }, (_, i) => ids.subarray(i * 32, i * 32 + 32).toString('hex'))).size : 0);
  assert.equal(tenantCounts(vault.root, 'city-a').chunks, 0);
  const packs = readdirSync(path.join(vault.root, 'tenants', 'city-a', 'packs'), { recursive: true, withFileTypes: true }).filter((e) => e.isFile());
  assert.equal(packs.length, 0, 'every pack file is gone');
});

test('quota: an upload over it is refused (E_QUOTA), the route shows quota-exceeded and keeps its queue; usage reports per tenant', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const other = sshKey(dir, 'other');
  const tenants = (quota: string) =>
    `    city-a:\n      quota: ${quota}\n      clients:\n        - key: ${key.public}\n          role: backup\n    town-b:\n      clients:\n        - key: ${other.public}\n          role: backup\n`;
  let vault = await startVault(dir, tenants('1MiB'));
  t.after(() => vault.stop());
  const cfg = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  const r = new Prng(5);
  const small = path.join(dir, 'small');
  writeFileSync(small, r.bytes(300_000));
  const big = path.join(dir, 'big');
  writeFileSync(big, r.bytes(3 * MiB));
  kuraOk(['backup', '--name', 'small', '--file', small, '--route', 'peer-dc'], { env });
  const bigSnap = kuraJson<{ id: string }>(['backup', '--name', 'big', '--file', big, '--route', 'peer-dc'], { env });

  const once = await kuraAsync(['relay', 'once', '--json'], { env });
  assert.equal(once.status, 75, once.stderr);
  const report = JSON.parse(once.out.split('\n')[0]!) as { state: string; sent: number; left: number; error: { code: string } };
  assert.equal(report.state, 'quota-exceeded');
  assert.equal(report.sent, 1, 'what fits was sent');
  assert.equal(report.left, 1);
  assert.equal(report.error.code, 'E_QUOTA');
  assert.match(once.stderr, /E_QUOTA: route peer-dc: vault: tenant city-a would exceed its quota of 1048576 bytes/);
  const status = kuraJson<{ routes: Array<{ route: string; state: string; queued: number }> }>(['status'], { env });
  assert.equal(status.routes.find((x) => x.route === 'peer-dc')?.state, 'quota-exceeded');
  assert.ok(vault.audit().some((e) => e.code === 'E_QUOTA' && e.tenant === 'city-a'), 'the refusal is audited');

  const usage = JSON.parse((await ok(kuraAsync(['vault', 'usage', '--config', vault.config, '--json']), 'usage')).out) as {
    period: string;
    totalStoredBytes: number;
    tenants: Array<{ tenant: string; storedBytes: number; logicalBytes: number; snapshots: number; chunks: number; receivedBytes: number; quota: number | null; sharePercent: number; wireInBytes: number; transferSharePercent: number }>;
  };
  const a = usage.tenants.find((x) => x.tenant === 'city-a')!;
  const tb = usage.tenants.find((x) => x.tenant === 'town-b')!;
  assert.equal(usage.period, new Date().toISOString().slice(0, 7));
  assert.equal(a.snapshots, 1);
  assert.equal(a.logicalBytes, 300_000);
  assert.equal(a.quota, 1 << 20);
  let onDisk = 0;
  for (const sub of ['packs', 'snapshots']) {
    for (const e of readdirSync(path.join(vault.root, 'tenants', 'city-a', sub), { recursive: true, withFileTypes: true })) if (e.isFile()) onDisk += statSync(path.join(e.parentPath, e.name)).size;
  }
  assert.equal(a.storedBytes, onDisk);
  assert.ok(a.receivedBytes > 0 && a.receivedBytes <= a.storedBytes);
  assert.equal(tb.storedBytes, 0);
  assert.equal(a.sharePercent, 100);
  assert.equal(usage.totalStoredBytes, onDisk);
  // the refused session's bytes count too: the vault read more than the quota before it refused
  assert.ok(a.wireInBytes > a.quota!, `${a.wireInBytes} bytes read`);
  assert.deepEqual([a.transferSharePercent, tb.transferSharePercent], [100, 0]);
  const table = (await ok(kuraAsync(['vault', 'usage', '--config', vault.config]), 'usage table')).out;
  assert.match(table, /^city-a +\S+ \S+ +\S+ \S+ +1 +\d+ +\S+ \S+ +1\.0 MiB \(\d+%\) +100\.0% +\S+ \S+ +\S+ \S+ +0 B +100\.0%$/m);

  // the operator raises the quota: the queue drains in order
  await vault.stop();
  vault = await startVault(dir, tenants('1GiB'));
  writeFileSync(cfg, readFileSync(cfg, 'utf8').replace(/port: \d+/, `port: ${vault.port}`).replace(/hostKeySha256: ".*"/, `hostKeySha256: "${vault.hostKeySha256}"`));
  await ok(kuraAsync(['relay', 'once'], { env }), 'relay once after the quota was raised');
  const remote = JSON.parse((await ok(kuraAsync(['snapshots', '--from', 'peer-dc', '--json'], { env }), 'list')).out) as Array<{ id: string }>;
  assert.ok(remote.some((s) => s.id === bigSnap.id));
});

test('usage shares: tenants whose bytes do not divide evenly get tenths of a percent that add up to exactly 1000, equal remainders going to the tenant listed first', () => {
  const table: Array<{ bytes: number[]; tenths: number[]; why: string }> = [
    { bytes: [1, 1, 1], tenths: [334, 333, 333], why: 'three equal thirds: the one tenth left goes to the first' },
    { bytes: [2, 3, 5], tenths: [200, 300, 500], why: 'divides evenly: nothing to round' },
    { bytes: [3, 3, 1], tenths: [429, 428, 143], why: '428.57, 428.57, 142.86: the largest remainder first, then the tie to the first of the two' },
    { bytes: [1, 4, 1], tenths: [167, 667, 166], why: '166.67, 666.67, 166.67: three equal remainders (floating point makes the middle one smaller)' },
    { bytes: [4, 1, 1], tenths: [667, 167, 166], why: 'the same parts in another order: the tie follows the order' },
    { bytes: [1000, 2000, 4000], tenths: [143, 286, 571], why: '142.86, 285.71, 571.43' },
    { bytes: [5e12 + 1, 5e12, 5e12], tenths: [334, 333, 333], why: 'terabytes: one byte more decides the tenth' },
    { bytes: [0, 7, 0], tenths: [0, 1000, 0], why: 'one tenant moved everything' },
    { bytes: [0, 0, 0], tenths: [0, 0, 0], why: 'nothing at all: no shares' },
  ];
  for (const row of table) {
    const got = largestRemainder(row.bytes, 1000);
    assert.deepEqual(got, row.tenths, row.why);
    assert.equal(got.reduce((a, b) => a + b, 0), row.bytes.some((b) => b > 0) ? 1000 : 0, row.why);
    assert.deepEqual(largestRemainder(row.bytes, 1000), got, `${row.why}: the same answer every time`);
    const percent = percentShares(row.bytes);
    assert.deepEqual(percent, row.tenths.map((t) => t / 10), row.why);
    if (row.bytes.some((b) => b > 0)) assert.equal(percent.reduce((a, b) => a + b, 0).toFixed(1), '100.0', row.why);
  }
  assert.throws(() => largestRemainder([1, 0.5, 1], 1000), /non-negative integer weights/);
});

test('a session\'s transfer bytes are recorded at FLUSH, COMMIT and every restore answer or once 4 MiB wait, restore bytes are the SNAPSHOT and CHUNK frames, and bytes the catalogue refused go with the next batch', () => {
  const rows: TransferBytes[] = [];
  const errors: string[] = [];
  let refuse = false;
  const days = new Set<string>();
  const acc = new TransferAccounting(
    {
      addTransferBytes: (day, b) => {
        if (refuse) throw new Error('database is locked');
        days.add(day);
        rows.push(b);
      },
    },
    (e) => errors.push((e as Error).message),
    () => '2026-11-23',
  );
  const steps: Array<{ run: () => void; recorded?: TransferBytes; why: string }> = [
    { run: () => (acc.read(60), acc.wrote(Frame.HELLO_OK, 90), acc.handled(Frame.HELLO)), why: 'HELLO is no durability point' },
    { run: () => (acc.read(300_000), acc.handled(Frame.PUT_NEXT), acc.handled(Frame.WANT)), why: 'nor is data before its FLUSH' },
    { run: () => (acc.read(30), acc.handled(Frame.FLUSH)), recorded: { wireIn: 300_090, wireOut: 90, restoreOut: 0 }, why: 'FLUSH' },
    { run: () => (acc.wrote(Frame.FLUSHED, 40), acc.read(200), acc.wrote(Frame.COMMITTED, 50), acc.handled(Frame.COMMIT)), recorded: { wireIn: 200, wireOut: 90, restoreOut: 0 }, why: 'COMMIT' },
    { run: () => (acc.read(45), acc.wrote(Frame.SNAPSHOT, 1000), acc.handled(Frame.GET_SNAPSHOT)), recorded: { wireIn: 45, wireOut: 1000, restoreOut: 1000 }, why: 'a restore answer' },
    { run: () => (acc.read(64), acc.wrote(Frame.CHUNK, 500), acc.wrote(Frame.CHUNK, 700), acc.handled(Frame.GET_CHUNKS)), recorded: { wireIn: 64, wireOut: 1200, restoreOut: 1200 }, why: 'the chunks of one GET_CHUNKS' },
    { run: () => (acc.read(RECORD_EVERY - 1), acc.handled(Frame.PUT_NEXT)), why: 'just under 4 MiB waits' },
    { run: () => (acc.read(1), acc.handled(Frame.PUT_NEXT)), recorded: { wireIn: RECORD_EVERY, wireOut: 0, restoreOut: 0 }, why: '4 MiB do not wait' },
    { run: () => ((refuse = true), acc.read(10), acc.wrote(Frame.CHUNK, 90), acc.handled(Frame.GET_CHUNKS)), why: 'the catalogue refused' },
    { run: () => ((refuse = false), acc.wrote(Frame.ERROR, 20), acc.record()), recorded: { wireIn: 10, wireOut: 110, restoreOut: 90 }, why: 'the session ends: what was refused goes now' },
    { run: () => acc.record(), why: 'nothing left: no empty row' },
  ];
  for (const step of steps) {
    const before = rows.length;
    step.run();
    assert.deepEqual(rows.slice(before), step.recorded ? [step.recorded] : [], step.why);
  }
  assert.deepEqual(errors, ['database is locked']);
  assert.deepEqual([...days], ['2026-11-23']);
});

test('vault usage adds per tenant the bytes over the wire and sent for restores, from the catalogue: they survive a restart and a kill, and their shares add up to 100.0', async (t) => {
  const dir = tempDir(t);
  const names = ['city-a', 'town-b', 'village-c'] as const;
  const sizes = { 'city-a': 700_000, 'town-b': 1_600_000, 'village-c': 250_000 };
  const keys = Object.fromEntries(names.map((n) => [n, sshKey(dir, `${n}-key`)]));
  const tenants = names.map((n) => `    ${n}:\n      clients:\n        - key: ${keys[n]!.public}\n          role: tenant-admin\n`).join('');
  let vault = await startVault(dir, tenants);
  t.after(() => vault.stop());
  const r = new Prng(17);
  const sent: Record<string, { env: { KURA_CONFIG: string }; id: string; sha: string; snapshotFile: number }> = {};
  for (const n of names) {
    const home = path.join(dir, n);
    mkdirSync(home);
    const env = { KURA_CONFIG: agentConfig(home, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: keys[n]!.private, tenant: n }) };
    kuraOk(['repo', 'init'], { env });
    const data = r.bytes(sizes[n]);
    const f = path.join(home, 'export');
    writeFileSync(f, data);
    const { id } = kuraJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { env });
    await ok(kuraAsync(['relay', 'once'], { env }), `relay once (${n})`);
    sent[n] = { env, id, sha: sha256(data), snapshotFile: statSync(path.join(home, 'repo', 'snapshots', id)).size };
  }
  const a = sent['city-a']!;
  assert.equal(sha256((await ok(kuraAsync(['restore', '--from', 'peer-dc', a.id, '--to', '-'], { env: a.env }), 'restore from the vault')).stdout), a.sha);

  type Usage = {
    totalWireBytes: number;
    tenants: Array<{ tenant: string; chunkBytes: number; receivedBytes: number; wireInBytes: number; wireOutBytes: number; restoreBytes: number; transferSharePercent: number }>;
  };
  const usage = async (): Promise<Usage> => JSON.parse((await ok(kuraAsync(['vault', 'usage', '--config', vault.config, '--json']), 'vault usage')).out) as Usage;
  const transfer = (u: Usage) => u.tenants.map(({ tenant, wireInBytes, wireOutBytes, restoreBytes, transferSharePercent }) => ({ tenant, wireInBytes, wireOutBytes, restoreBytes, transferSharePercent }));
  const u = await usage();
  assert.deepEqual(u.tenants.map((x) => x.tenant), [...names]);
  for (const x of u.tenants) {
    const s = sent[x.tenant]!;
    assert.ok(x.receivedBytes > 0 && x.chunkBytes > 0, x.tenant);
    // every chunk the vault stores, and the snapshot file, came over the wire (the pack index it adds did not)
    assert.ok(x.wireInBytes >= x.chunkBytes + s.snapshotFile, `${x.tenant}: ${x.wireInBytes} read, ${x.chunkBytes} + ${s.snapshotFile} stored`);
    assert.ok(x.wireOutBytes > 0, x.tenant);
    if (x.tenant === 'city-a') {
      // the restore read the snapshot file and every chunk of it (its only snapshot: all the tenant's chunks)
      assert.ok(x.restoreBytes >= x.chunkBytes + s.snapshotFile, `${x.restoreBytes} sent for the restore`);
      assert.ok(x.restoreBytes < x.wireOutBytes);
    } else assert.equal(x.restoreBytes, 0, `${x.tenant} restored nothing`);
  }
  const wire = u.tenants.map((x) => x.wireInBytes + x.wireOutBytes);
  assert.equal(u.totalWireBytes, wire.reduce((p, q) => p + q, 0));
  assert.deepEqual(u.tenants.map((x) => x.transferSharePercent), largestRemainder(wire, 1000).map((tenths) => tenths / 10));
  assert.equal(u.tenants.reduce((p, x) => p + Math.round(x.transferSharePercent * 10), 0), 1000);
  const table = (await ok(kuraAsync(['vault', 'usage', '--config', vault.config]), 'usage table')).out;
  const share = (n: string) => `${u.tenants.find((x) => x.tenant === n)!.transferSharePercent.toFixed(1)}%`;
  for (const n of names) assert.match(table, new RegExp(`^${n} .* \\d+\\.\\d% +\\S+ \\S+ +\\S+ \\S+ +\\S+ \\S+ +${share(n).replace('.', '\\.')}$`, 'm'));
  assert.match(table, /^TENANT .* SHARE +WIRE IN +WIRE OUT +RESTORED +XFER SHARE$/m);
  assert.match(table, /largest remainder.*equal ones: the tenant listed first.*exactly 100\.0%/);

  // the figures are on disk: the same with the vault stopped, and after it started again
  await vault.stop();
  assert.deepEqual(transfer(await usage()), transfer(u));
  vault = await startVault(dir, tenants);
  assert.deepEqual(transfer(await usage()), transfer(u));

  // a vault killed in the middle of a session keeps what it recorded after its last answer
  const conn = await vaultSession(vault, keys['city-a']!.private);
  t.after(() => conn.close());
  const snapshot = await conn.request(Frame.GET_SNAPSHOT, { id: a.id }, Frame.SNAPSHOT);
  assert.equal(snapshot.payload.length, a.snapshotFile);
  await sleep(200);
  vault.child.kill('SIGKILL');
  await once(vault.child, 'exit');
  const after = (await usage()).tenants.find((x) => x.tenant === 'city-a')!;
  const before = u.tenants.find((x) => x.tenant === 'city-a')!;
  assert.deepEqual(
    { wireIn: after.wireInBytes - before.wireInBytes, wireOut: after.wireOutBytes - before.wireOutBytes, restore: after.restoreBytes - before.restoreBytes },
    { wireIn: conn.bytesOut, wireOut: conn.bytesIn, restore: 5 + a.snapshotFile },
  );
});

test('vault prune follows per-tenant and per-source retention, honours holds set over SSH by a tenant-admin, and runs on its schedule', async (t) => {
  const dir = tempDir(t);
  const admin = sshKey(dir, 'admin');
  const relayKey = sshKey(dir, 'relay');
  const tenants = `    city-a:\n      retention: { keepLast: 1 }\n      sources:\n        gyosei: { retention: { keepLast: 2 } }\n      clients:\n        - key: ${relayKey.public}\n          role: backup\n        - key: ${admin.public}\n          role: tenant-admin\n`;
  let vault = await startVault(dir, tenants);
  t.after(() => vault.stop());
  const cfg = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: relayKey.private });
  const adminCfg = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: admin.private, name: 'admin.yaml' });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  const r = new Prng(8);
  const juki: Array<{ id: string; sha: string }> = [];
  for (let i = 0; i < 3; i++) {
    const f = path.join(dir, `j${i}`);
    const data = r.bytes(150_000);
    writeFileSync(f, data);
    juki.push({ id: kuraJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { env }).id, sha: sha256(data) });
  }
  const gyosei: string[] = [];
  for (let i = 0; i < 3; i++) {
    const f = path.join(dir, `g${i}`);
    writeFileSync(f, r.bytes(50_000));
    gyosei.push(kuraJson<{ id: string }>(['backup', '--name', 'gyosei', '--file', f, '--route', 'peer-dc'], { env }).id);
  }
  await ok(kuraAsync(['relay', 'once'], { env }), 'relay once');
  // the relay's backup-role key may not set holds; the tenant-admin's may
  const denied = await kuraAsync(['protect', '--from', 'peer-dc', juki[0]!.id], { env });
  assert.equal(denied.status, 77, denied.stderr);
  assert.match(denied.stderr, /E_FORBIDDEN/);
  const held = await ok(kuraAsync(['protect', '--from', 'peer-dc', juki[0]!.id.slice(0, 12)], { env: { KURA_CONFIG: adminCfg } }), 'protect as tenant-admin');
  assert.match(held.out, /is now protected \(vault of route peer-dc\)/);
  // the vault's own operators can lift and set holds too
  assert.match((await ok(kuraAsync(['vault', 'unprotect', '--config', vault.config, '--tenant', 'city-a', juki[0]!.id.slice(0, 12)]), 'vault unprotect')).out, /is no longer protected/);
  assert.match((await kuraAsync(['vault', 'prune', '--config', vault.config, '--dry-run'])).out, new RegExp(`^would remove +\\S+ \\S+ +${juki[0]!.id.slice(0, 12)} `, 'm'));
  assert.match((await ok(kuraAsync(['vault', 'protect', '--config', vault.config, '--tenant', 'city-a', juki[0]!.id]), 'vault protect')).out, /is now protected/);
  assert.ok(vault.audit().some((e) => e.event === 'unprotect' && e.snapshot === juki[0]!.id), 'holds are audited');

  const dry = (await ok(kuraAsync(['vault', 'prune', '--config', vault.config, '--dry-run']), 'dry run')).out;
  assert.match(dry, new RegExp(`^keep +\\S+ \\S+ +${juki[0]!.id.slice(0, 12)} +city-a +juki +protected$`, 'm'));
  assert.match(dry, new RegExp(`^would remove +\\S+ \\S+ +${juki[1]!.id.slice(0, 12)} +city-a +juki +no rule keeps it$`, 'm'));
  assert.match(dry, new RegExp(`^keep +\\S+ \\S+ +${gyosei[1]!.slice(0, 12)} +city-a +gyosei +last 2$`, 'm'));

  // with a schedule (every 2 s here) the vault prunes and collects without anyone running a command
  await vault.stop();
  vault = await startVault(dir, tenants, `  maintenance:\n    schedule: "*/2 * * * * *"\n`);
  writeFileSync(cfg, readFileSync(cfg, 'utf8').replace(/port: \d+/, `port: ${vault.port}`));
  const want = new Set([juki[0]!.id, juki[2]!.id, gyosei[1]!, gyosei[2]!]);
  const listed = async () => JSON.parse((await ok(kuraAsync(['snapshots', '--from', 'peer-dc', '--json'], { env }), 'list')).out) as Array<{ id: string }>;
  let ids: string[] = [];
  for (let i = 0; i < 40; i++) {
    ids = (await listed()).map((s) => s.id);
    if (ids.length === want.size && vault.audit().some((e) => e.event === 'maintenance' && e.outcome === 'ok' && Number(e.chunksRemoved) > 0)) break;
    await sleep(500);
  }
  assert.deepEqual(new Set(ids), want);
  const m = vault.audit().filter((e) => e.event === 'maintenance');
  assert.ok(m.some((e) => Number(e.removedSnapshots) === 2), JSON.stringify(m));
  assert.equal(kuraJson<{ ok: boolean; chunksUnreferenced: number }>(['check', '--repo', path.join(vault.root, 'tenants', 'city-a')], { env: { KURA_PASSPHRASE: undefined } }).chunksUnreferenced, 0);
  for (const j of [juki[0]!, juki[2]!])
    assert.equal(sha256((await ok(kuraAsync(['restore', '--from', 'peer-dc', j.id, '--to', '-', '--identity', admin.private], { env }), 'restore')).stdout), j.sha);
});

test('a local gc that rewrites the packs a running relay is reading from does not disturb the transfer', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const cfg = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private, extraRoute: '        rate: 8MB/s\n' });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  // a night whose chunks share packs with chunks that will become garbage
  const r = new Prng(31);
  const keep: Buffer[] = [];
  const mixed: Buffer[] = [];
  for (let i = 0; i < 64; i++) {
    const a = r.bytes(768 << 10);
    keep.push(a);
    mixed.push(a, r.bytes(256 << 10));
  }
  const mixedFile = path.join(dir, 'mixed');
  writeFileSync(mixedFile, Buffer.concat(mixed));
  kuraOk(['backup', '--name', 'scratch', '--file', mixedFile, '--chunk-avg', '4096'], { env });
  const data = Buffer.concat(keep);
  const f = path.join(dir, 'juki');
  writeFileSync(f, data);
  const snap = kuraJson<{ id: string; newBytes: number }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc', '--chunk-avg', '4096'], { env });
  assert.ok(snap.newBytes < data.length / 4, 'most of the night is in the scratch snapshot\'s packs');

  // the relay ships 48 MiB at 8 MB/s, reading packs as it goes (a few runs ahead); meanwhile the
  // scratch snapshot is pruned and gc rewrites every pack, moving the night's chunks
  let relayDone = false;
  const relay = kuraAsync(['relay', 'once'], { env }).finally(() => (relayDone = true));
  await sleep(1200);
  const pruned = await kuraAsync(['prune', '--source', 'scratch', '--keep-last', '0', '--gc', '--json'], { env });
  assert.equal(pruned.status, 0, pruned.stderr);
  const gc = (JSON.parse(pruned.out) as { gc: { packsRewritten: number; chunksRemoved: number } }).gc;
  assert.ok(gc.packsRewritten > 0 && gc.chunksRemoved > 0, JSON.stringify(gc));
  assert.equal(relayDone, false, 'the gc ran while the relay was still sending');
  const done = await relay;
  assert.equal(done.status, 0, done.stderr);
  const restored = await ok(kuraAsync(['restore', '--from', 'peer-dc', snap.id, '--to', '-'], { env }), 'restore from the vault');
  assert.equal(sha256(restored.stdout), sha256(data));
  assert.equal(kuraJson<{ ok: boolean; chunksUnreferenced: number }>(['check', '--read-data'], { env }).chunksUnreferenced, 0);
});

test('leases are sets of chunks: one row an answer or pack; gc keeps what a live set holds and frees it once the set is dropped or expired; a schema 5 catalogue\'s lease rows become sets on open', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const f = path.join(dir, 'juki.sql');
  writeFileSync(f, await collect(sqlDump(23, 2 * MiB)));
  const a = kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'juki', '--file', f]);
  const ids = await referencedChunks(repo, a.id);
  assert.ok(ids.length > 4);
  const file = path.join(repo, 'catalogue.sqlite');

  // a session's HAS answer and an uploaded pack, each one set; a chunk it does not hold is not leased
  const { Catalogue } = await import('../src/repository/catalogue.js');
  const stranger = Buffer.alloc(32, 0xab);
  let cat = new Catalogue(file);
  const half = Math.floor(ids.length / 2);
  const bitmap = cat.vault.hasAndLease('s1', Buffer.concat([...ids.slice(0, half), stranger]), 32, Date.now() + 3_600_000);
  for (let i = 0; i < half; i++) assert.ok(bitmap[i >> 3]! & (1 << (i & 7)), `chunk ${i} present`);
  assert.equal(bitmap[half >> 3]! & (1 << (half & 7)), 0, 'a chunk not held is absent');
  const rows = cat.db.prepare('SELECT session, length(ids) AS bytes FROM lease_sets').all() as Array<{ session: string; bytes: number }>;
  assert.deepEqual(rows, [{ session: 's1', bytes: 32 * half }], 'one row for the answer, holding exactly the present chunks');
  // a pack the session uploaded (here: rows of chunks of the next quarter, recorded again) is one set too
  const uploaded = ids.slice(half, half + Math.max(1, Math.floor(ids.length / 4)));
  const packRows = uploaded.map((id) => {
    const [n, offset, storedSize, plainSize] = cat.chunkRow(id)!;
    return { id, pack: cat.packNameOf(n)!, offset, storedSize, plainSize };
  });
  cat.vault.addSessionPack('s1', packRows[0]!.pack, packRows, Date.now() + 3_600_000, 0);
  assert.deepEqual(
    cat.db.prepare('SELECT length(ids) FROM lease_sets ORDER BY n').pluck().all(),
    [32 * half, 32 * uploaded.length],
    'the uploaded pack added one set of its chunks',
  );
  cat.close();

  // the snapshot goes; the leased half stays through gc, the rest is freed
  kuraOk(['prune', '--repo', repo, '--keep-last', '0']);
  const gc1 = kuraJson<{ chunksRemoved: number }>(['gc', '--repo', repo]);
  const leased = new Set([...ids.slice(0, half), ...uploaded].map((id) => id.toString('hex')));
  assert.ok(gc1.chunksRemoved > 0);
  const left = () => {
    const db = new Database(file, { readonly: true });
    try {
      return new Set((db.prepare('SELECT id FROM chunk_rows').pluck().all() as Buffer[]).map((b) => b.toString('hex')));
    } finally {
      db.close();
    }
  };
  assert.deepEqual([...left()].sort(), [...leased].sort(), 'gc freed every chunk but the leased ones');

  // as a schema 5 catalogue held them: a row per chunk, for two sessions
  const db = new Database(file);
  const now = Date.now();
  db.exec(`DROP TABLE lease_sets; CREATE TABLE leases (session TEXT NOT NULL, chunk BLOB NOT NULL, expires INTEGER NOT NULL, PRIMARY KEY (session, chunk)) WITHOUT ROWID;
    CREATE INDEX leases_by_chunk ON leases (chunk, expires); UPDATE meta SET value = '5' WHERE key = 'schema';`);
  const put = db.prepare('INSERT INTO leases (session, chunk, expires) VALUES (?, ?, ?)');
  const live = [...leased].map((hex) => Buffer.from(hex, 'hex'));
  live.forEach((id, i) => put.run(i % 2 ? 's2' : 's3', id, now + 3_600_000));
  db.close();
  cat = new Catalogue(file);
  assert.equal(cat.db.prepare(`SELECT value FROM meta WHERE key = 'schema'`).pluck().get(), '6');
  assert.equal(cat.db.prepare(`SELECT count(*) FROM sqlite_master WHERE name IN ('leases', 'leases_by_chunk')`).pluck().get(), 0, 'the old table is gone');
  assert.deepEqual(cat.db.prepare('SELECT session FROM lease_sets ORDER BY session').pluck().all(), ['s2', 's3'], 'one set per session and expiry');
  cat.db.exec('CREATE TEMP TABLE held (id BLOB PRIMARY KEY) WITHOUT ROWID');
  assert.equal(cat.vault.copyLeased(now, 'temp.held'), new Set(live.map((id) => id.toString('hex'))).size, 'every migrated lease is live');
  cat.db.exec('DELETE FROM temp.held');
  assert.equal(cat.vault.copyLeased(now + 3_600_001, 'temp.held'), 0, 'and none after its expiry');
  cat.close();
  assert.equal(kuraJson<{ chunksRemoved: number }>(['gc', '--repo', repo]).chunksRemoved, 0, 'gc honours the migrated leases');

  // a session that ends drops its sets; gc then frees what they held
  cat = new Catalogue(file);
  cat.vault.dropLeases('s2');
  cat.vault.dropLeases('s3');
  assert.equal(cat.db.prepare('SELECT count(*) FROM lease_sets').pluck().get(), 0);
  cat.close();
  assert.equal(kuraJson<{ chunksRemoved: number }>(['gc', '--repo', repo]).chunksRemoved, leased.size);
  assert.equal(left().size, 0, 'no chunk row is left');
});
