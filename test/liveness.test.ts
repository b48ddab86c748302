import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { kuraAsync, kuraJson, kuraOk, spawnKura, tempDir } from './support/cli.js';
import { Prng } from './support/generate.js';
import { exitOf, waitFor } from './support/proc.js';
import { LinkProxy, sleep } from './support/proxy.js';
import { agentConfig, sshKey, startVault } from './support/vault.js';
import { checkProgress, pingIntervalOf, type WatchState } from '../src/relay/liveness.js';

const MiB = 1 << 20;
const KiB = 1 << 10;

function routeState(repo: string) {
  const db = new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true, fileMustExist: true });
  try {
    const queued = (db.prepare('SELECT count(*) AS n FROM queue WHERE sent IS NULL').get() as { n: number }).n;
    const route = db.prepare('SELECT * FROM route_state WHERE route = ?').get('peer-dc') as { state: string; last_error: string | null } | undefined;
    return { queued, state: route?.state, lastError: route?.last_error ?? null };
  } finally {
    db.close();
  }
}

/** A vault process for tenant city-a reached through a controllable link, and a relay config pointing at the link. */
async function vaultBehindLink(t: import('node:test').TestContext, relay: { drop?: RegExp[]; add?: string } = {}) {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  const link = await new LinkProxy(vault.port).start();
  // the link goes first (its connections reset), so a vault that cannot leave a black hole still stops
  t.after(async () => {
    await link.close();
    await vault.stop();
  });
  const file = agentConfig(dir, { port: link.port, hostKeySha256: vault.hostKeySha256, key: key.private, extraRelay: relay.add ?? '' });
  let text = readFileSync(file, 'utf8');
  for (const line of relay.drop ?? []) text = text.replace(line, '');
  writeFileSync(file, text);
  return { dir, key, vault, link, env: { KURA_CONFIG: file }, repo: path.join(dir, 'repo') };
}

/** A backup of `bytes` random (incompressible) bytes, queued for the route. */
function backupRandom(dir: string, env: Record<string, string>, bytes: number, seed: number) {
  const data = new Prng(seed).bytes(bytes);
  const f = path.join(dir, 'dump.bin');
  writeFileSync(f, data);
  const b = kuraJson<{ id: string; newBytes: number }>(['backup', '--name', 'db', '--file', f, '--route', 'peer-dc'], { env });
  return { ...b, data };
}

/** The child's exit, or null after `ms` (then it is killed, so a hung process does not outlive the test). */
async function exitWithin(child: ChildProcess, ms: number) {
  const t0 = Date.now();
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  const r = await exitOf(child);
  clearTimeout(timer);
  const elapsed = Date.now() - t0;
  return { ...r, elapsed, hung: r.signal === 'SIGKILL' };
}

test('checkProgress: a line is down after deadAfter with nothing from the far end, not before, and a stall of the watching process is not held against the line', () => {
  const deadAfter = 5000;
  const tick = 500;
  // [what, state before, progress now, now, dead?, movedAt after]
  const cases: Array<[string, WatchState, number, number, boolean, number]> = [
    ['bytes arrived', { progress: 10, movedAt: 0, checkedAt: 9500 }, 11, 10_000, false, 10_000],
    ['still for less than deadAfter', { progress: 10, movedAt: 1000, checkedAt: 5500 }, 10, 5999, false, 1000],
    ['still for deadAfter, checked on time', { progress: 10, movedAt: 1000, checkedAt: 5500 }, 10, 6000, true, 1000],
    ['still for longer', { progress: 10, movedAt: 0, checkedAt: 59_500 }, 10, 60_000, true, 0],
    // checked at 1.5 s, then only at 12 s: 10 s beyond the expected tick are not the line's
    ['a check 10 s late (the process stalled): the stall does not count', { progress: 10, movedAt: 1000, checkedAt: 1500 }, 10, 12_000, false, 11_000],
    ['after a stall, still for deadAfter again', { progress: 10, movedAt: 11_000, checkedAt: 15_500 }, 10, 16_000, true, 11_000],
  ];
  for (const [what, before, progress, now, dead, movedAt] of cases) {
    const r = checkProgress(before, progress, now, deadAfter, tick);
    assert.equal(r.dead, dead, what);
    assert.equal(r.movedAt, movedAt, what);
    assert.equal(r.checkedAt, now, what);
  }
  // a quiet line is pinged at least three times per deadAfter, and never more often than relay.keepalive asks
  assert.equal(pingIntervalOf(15_000, 60_000), 15_000);
  assert.equal(pingIntervalOf(15_000, 5000), 1666);
  assert.equal(pingIntervalOf(1000, 60_000), 1000);
});

test('a relay on a 96 KiB/s line without a route rate ships a snapshot bigger than what it has in flight, never cut while it moves, and the vault restores it byte-identical', async (t) => {
  // relay.keepalive at its default (15 s): behind this much data a ping waits over a minute
  const { dir, vault, link, env, repo } = await vaultBehindLink(t, { drop: [/ {2}keepalive: .*\n/] });
  kuraOk(['repo', 'init'], { env });
  // 6.5 MiB at 96 KiB/s: ~70 s on the line, written at once (1 MiB batches, 8 in flight, a 16 MiB
  // SSH window), so the first keepalive's answer comes after ~70 s; pings alone gave up at 60 s
  const b = backupRandom(dir, env, 6.5 * MiB, 21);
  link.setRate(96 * KiB);
  const states = new Set<string>();
  const sampler = setInterval(() => {
    const s = routeState(repo).state;
    if (s) states.add(s);
  }, 250);
  const t0 = Date.now();
  const r = await kuraAsync(['relay', 'once', '--json'], { env });
  const seconds = (Date.now() - t0) / 1000;
  clearInterval(sampler);
  t.diagnostic(`${b.newBytes} new bytes over 96 KiB/s in ${seconds.toFixed(1)} s (${(link.bytesUp / seconds / KiB).toFixed(1)} KiB/s on the link); route states seen: ${[...states].join(', ')}`);
  assert.equal(r.status, 0, r.stderr);
  assert.equal((JSON.parse(r.out.trim().split('\n').pop()!) as { sent: number }).sent, 1);
  assert.ok(seconds > 60, `the send took ${seconds.toFixed(1)} s: longer than four keepalive intervals, as the old failure needs`);
  assert.ok(!states.has('waiting-for-line'), `the route never waited for the line (${[...states].join(', ')})`);
  assert.doesNotMatch(r.stderr, /E_LINK_DOWN/);
  assert.equal(link.connections, 1, 'one connection from start to commit: never cut and reconnected');
  assert.ok(vault.audit().some((e) => e.event === 'commit' && e.snapshot === b.id));
  link.setRate(null);
  const restored = await kuraAsync(['restore', '--from', 'peer-dc', b.id], { env });
  assert.equal(restored.status, 0, restored.stderr);
  assert.ok(restored.stdout.equals(b.data), 'restores byte-identical from the vault');
});

test('a black-holed line is declared down after relay.deadAfter with the reason, and when it returns the send resumes where the vault stopped, commits and restores byte-identical', async (t) => {
  // keepalive at its default (15 s): pings alone would take a minute to give up, or never; and
  // connectTimeout too (20 s), so the reason stays while the relay tries to connect into the hole
  const { dir, vault, link, env, repo } = await vaultBehindLink(t, { drop: [/ {2}keepalive: .*\n/, / {2}connectTimeout: .*\n/], add: '  deadAfter: 5s\n' });
  kuraOk(['repo', 'init'], { env });
  const b = backupRandom(dir, env, 8 * MiB, 22);
  link.setRate(MiB);
  const relay = spawnKura(['relay', 'run'], env);
  t.after(() => relay.kill('SIGKILL'));
  let log = '';
  relay.stderr.on('data', (d) => (log += d));
  await waitFor('part of the upload', () => link.bytesUp > 3 * MiB, 30_000);
  link.blackHole();
  const holed = Date.now();
  await waitFor('the relay to notice the black hole', () => routeState(repo).state === 'waiting-for-line', 30_000, 50);
  const noticed = (Date.now() - holed) / 1000;
  const { lastError, queued } = routeState(repo);
  t.diagnostic(`black hole noticed after ${noticed.toFixed(2)} s (relay.deadAfter 5 s): ${lastError}`);
  assert.ok(noticed >= 4 && noticed <= 5 + 2.5, `noticed after ${noticed.toFixed(2)} s, deadAfter is 5 s`);
  assert.match(lastError ?? '', /^E_LINK_DOWN: no progress for 5 s/);
  assert.equal(queued, 1);
  const status = await kuraAsync(['status', '--json'], { env });
  const shown = (JSON.parse(status.out.trim().split('\n')[0]!) as { routes: Array<{ route: string; state: string; lastError: string | null }> }).routes.find((r) => r.route === 'peer-dc');
  assert.equal(shown?.state, 'waiting-for-line', status.out);
  assert.match(shown?.lastError ?? '', /^E_LINK_DOWN: no progress for 5 s/, 'kura status gives the reason');

  await sleep(2000); // the relay keeps trying into the hole meanwhile
  link.setRate(null);
  link.heal();
  await waitFor('the snapshot to be sent', () => routeState(repo).queued === 0, 60_000);
  const commit = vault.audit().find((e) => e.event === 'commit' && e.snapshot === b.id);
  assert.ok(commit, 'the vault committed the snapshot');
  await waitFor('the committing session to end', () => vault.audit().some((e) => e.event === 'session-end' && e.session === commit.session), 10_000);
  const resumed = vault.audit().find((e) => e.event === 'session-end' && e.session === commit.session)!;
  t.diagnostic(`the session that committed received ${String(resumed.putBytes)} of ${b.newBytes} new bytes`);
  assert.ok(Number(resumed.putBytes) < b.newBytes - MiB, `resumed: the last session sent ${String(resumed.putBytes)} bytes of ${b.newBytes}, not all again`);
  const restored = await kuraAsync(['restore', '--from', 'peer-dc', b.id], { env });
  assert.equal(restored.status, 0, restored.stderr);
  assert.ok(restored.stdout.equals(b.data), 'restores byte-identical from the vault');
  relay.kill('SIGTERM');
  assert.equal((await exitOf(relay)).code, 0, log);
});

test('SIGTERM ends `kura relay run` within a few seconds on a black-holed line, while sending and while connecting, with status 0', async (t) => {
  // relay.deadAfter and relay.keepalive at their defaults (60 s, 15 s) and a long connectTimeout:
  // nothing ends the wait soon but the signal
  const { dir, link, env, repo } = await vaultBehindLink(t, { drop: [/ {2}keepalive: .*\n/, / {2}connectTimeout: .*\n/], add: '  connectTimeout: 60s\n' });
  kuraOk(['repo', 'init'], { env });
  backupRandom(dir, env, 6 * MiB, 23);
  link.setRate(MiB);
  const sending = spawnKura(['relay', 'run'], env);
  t.after(() => sending.kill('SIGKILL'));
  await waitFor('part of the upload', () => link.bytesUp > 2 * MiB, 30_000);
  link.blackHole();
  await sleep(1500);
  assert.equal(routeState(repo).state, 'sending');
  sending.kill('SIGTERM');
  const first = await exitWithin(sending, 20_000);
  t.diagnostic(`sending: SIGTERM to exit ${first.elapsed} ms (code ${first.code}, signal ${first.signal})`);
  assert.ok(!first.hung, 'the relay ended on SIGTERM (it was killed after 20 s)');
  assert.equal(first.code, 0);
  assert.ok(first.elapsed < 5000, `ended ${first.elapsed} ms after SIGTERM`);
  const after = routeState(repo);
  assert.equal(after.queued, 1, 'the snapshot stays queued for the next start');
  assert.notEqual(after.state, 'sending', 'a stopped relay does not claim to be sending');

  const attempts = link.accepted;
  const connecting = spawnKura(['relay', 'run'], env);
  t.after(() => connecting.kill('SIGKILL'));
  await waitFor('the relay to open a connection into the hole', () => link.accepted > attempts, 30_000, 50);
  await sleep(500);
  connecting.kill('SIGTERM');
  const second = await exitWithin(connecting, 20_000);
  t.diagnostic(`connecting: SIGTERM to exit ${second.elapsed} ms (code ${second.code}, signal ${second.signal})`);
  assert.ok(!second.hung, 'the relay ended on SIGTERM (it was killed after 20 s)');
  assert.equal(second.code, 0);
  assert.ok(second.elapsed < 5000, `ended ${second.elapsed} ms after SIGTERM`);
});

/** A vault holding a 32 MiB snapshot of large chunks, and a restore of it stuck on a black-holed line. */
async function stuckRestore(t: import('node:test').TestContext) {
  const setup = await vaultBehindLink(t);
  const { dir, link, env } = setup;
  // chunks of about 2 MiB: the 16 a restore asks for at once (one 32 MiB segment) are more than
  // the SSH window and the channel's buffer, so the vault's session blocks writing them out
  kuraOk(['repo', 'init', '--chunk-min', String(1536 * KiB), '--chunk-avg', String(2 * MiB), '--chunk-max', String(2560 * KiB)], { env });
  const b = backupRandom(dir, env, 32 * MiB, 24);
  const sent = await kuraAsync(['relay', 'once'], { env });
  assert.equal(sent.status, 0, sent.stderr);
  link.setRate(MiB);
  const out = path.join(dir, 'restored.bin');
  const restore = spawnKura(['restore', '--from', 'peer-dc', b.id, '--to', out], env);
  t.after(() => restore.kill('SIGKILL'));
  let stderr = '';
  restore.stderr.on('data', (d) => (stderr += d));
  await waitFor('part of the restore', () => link.bytesDown > 2 * MiB, 30_000);
  assert.ok(readdirSync(dir).some((f) => f.includes('kura-partial')), 'the restore is writing its partial file');
  link.blackHole();
  await sleep(1500);
  return { ...setup, restore, out, stderr: () => stderr };
}

test('SIGTERM ends `kura vault serve` within its grace while a restore session is stuck writing to a black-holed line', async (t) => {
  const { vault, restore } = await stuckRestore(t);
  assert.equal(restore.exitCode, null, 'the restore is still waiting');
  vault.child.kill('SIGTERM');
  const r = await exitWithin(vault.child, 30_000);
  t.diagnostic(`vault: SIGTERM to exit ${r.elapsed} ms (code ${r.code}, signal ${r.signal})`);
  assert.ok(!r.hung, 'the vault ended on SIGTERM (it was killed after 30 s)');
  assert.equal(r.code, 0);
  assert.ok(r.elapsed < 10_000 + 3000, `ended ${r.elapsed} ms after SIGTERM (grace 10 s)`);
  const ends = vault.audit().filter((e) => e.event === 'session-end' || e.event === 'session-refused');
  const starts = vault.audit().filter((e) => e.event === 'session-start');
  assert.equal(ends.length, starts.length, 'every session, the stuck one included, was ended and audited');
  const db = new Database(path.join(vault.root, 'tenants', 'city-a', 'catalogue.sqlite'), { readonly: true });
  t.after(() => db.close());
  assert.equal((db.prepare('SELECT count(*) AS n FROM pack_leases').get() as { n: number }).n, 0, 'no session left a pack lease behind');
});

test('SIGTERM ends `kura restore --from` on a black-holed line with a clear error and status 75, and removes its partial file', async (t) => {
  const { dir, restore, out, stderr } = await stuckRestore(t);
  restore.kill('SIGTERM');
  const r = await exitWithin(restore, 20_000);
  t.diagnostic(`restore: SIGTERM to exit ${r.elapsed} ms (code ${r.code}, signal ${r.signal}): ${stderr().trim().split('\n').pop()}`);
  assert.ok(!r.hung, 'the restore ended on SIGTERM (it was killed after 20 s)');
  assert.equal(r.code, 75, `exit status 75 (signal ${r.signal}): ${stderr()}`);
  assert.ok(r.elapsed < 5000, `ended ${r.elapsed} ms after SIGTERM`);
  assert.match(stderr(), /kura: E_INTERRUPTED: .*SIGTERM/);
  assert.deepEqual(readdirSync(dir).filter((f) => f.includes('kura-partial') || f === path.basename(out)), [], 'neither the partial file nor the target is left');
});
