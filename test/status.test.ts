import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { kura, kuraAsync, kuraJson, kuraOk, spawnKura, tempDir } from './support/cli.js';
import { LinkProxy, sleep } from './support/proxy.js';
import { agentConfig, freePort, sshKey, startVault } from './support/vault.js';
import { statusReport } from '../src/status/status.js';
import { waitFor as waitUntil } from './support/proc.js';

const waitFor = (what: string, cond: () => Promise<boolean> | boolean, timeoutMs = 30_000) => waitUntil(what, cond, timeoutMs, 150);

interface Report {
  ok: boolean;
  routes: Array<{ route: string; state: string; queued: number; exposureSeconds: number; overTarget: boolean; lastError: string | null; paused: boolean }>;
  sources: Array<{ source: string; lastBackup: string | null }>;
  exposure: Array<{ source: string; route: string | null; since: string; newestDelivered: string | null; exposureSeconds: number | null; overTarget: boolean }>;
}

test('status and /metrics show the backlog and RPO exposure grow while the line is down, and drain after; pause, retry and resume act on the running relay', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vaultMetricsPort = await freePort();
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n`, `  metrics: { port: ${vaultMetricsPort} }\n`);
  t.after(() => vault.stop());
  const link = await new LinkProxy(vault.port).start();
  t.after(() => link.close());
  link.down();
  const metricsPort = await freePort();
  const cfg = agentConfig(dir, { port: link.port, hostKeySha256: vault.hostKeySha256, key: key.private, extraTop: 'rpo: 2s\n', extraRelay: `  metrics: { port: ${metricsPort} }\n` });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  const relay = spawnKura(['relay', 'run'], env);
  t.after(() => relay.kill('SIGKILL'));
  const status = async () => {
    const r = await kuraAsync(['status', '--json'], { env });
    return { code: r.status, report: JSON.parse(r.out) as Report };
  };
  const metrics = async () => {
    const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).catch(() => null);
    return res?.ok ? res.text() : '';
  };

  kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env, input: 'day one\n' });
  kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env, input: 'day two\n' });
  await waitFor('the exposure to pass the 2 s target', async () => (await status()).report.routes[0]!.overTarget);
  const down = await status();
  assert.equal(down.code, 1, 'status fails while a route is over its RPO target');
  const r0 = down.report.routes[0]!;
  assert.equal(r0.queued, 2);
  assert.equal(r0.state, 'waiting-for-line');
  assert.match(r0.lastError ?? '', /E_LINK_DOWN/);
  assert.equal(down.report.sources[0]!.source, 'juki');
  await waitFor('metrics', async () => /kura_relay_backlog_snapshots\{route="peer-dc"\} 2/.test(await metrics()));
  const m = await metrics();
  assert.match(m, /kura_relay_link_up\{route="peer-dc"\} 0/);
  const exposure = Number(/kura_relay_rpo_exposure_seconds\{route="peer-dc"\} (\d+)/.exec(m)![1]);
  assert.ok(exposure >= 2);

  // paused: the line comes back, a retry is asked for, and still nothing is sent
  kuraOk(['relay', 'pause', 'peer-dc'], { env });
  link.up();
  kuraOk(['relay', 'retry', 'peer-dc'], { env });
  await waitFor('the route to show paused', async () => (await status()).report.routes[0]!.state === 'paused');
  await sleep(1500);
  assert.equal((await status()).report.routes[0]!.queued, 2, 'a paused route sends nothing');

  kuraOk(['relay', 'resume', 'peer-dc'], { env });
  await waitFor('the backlog to drain', async () => (await status()).report.routes[0]!.queued === 0);
  // drained, yet the newest snapshot the vault holds is older than the 2 s target: still exposed
  const drained = await status();
  assert.equal(drained.code, 1, 'a drained route is not a fresh one: exposure runs from the newest delivered snapshot');
  const row = drained.report.exposure.find((e) => e.source === 'juki' && e.route === 'peer-dc')!;
  assert.equal(row.since, 'delivered');
  const newest = kuraJson<Array<{ endTime: string }>>(['snapshots'], { env }).map((s) => s.endTime).sort().at(-1)!;
  assert.equal(row.newestDelivered, newest);
  writeFileSync(cfg, readFileSync(cfg, 'utf8').replace('rpo: 2s', 'rpo: 1h'));
  const up = await status();
  assert.equal(up.code, 0, 'within a 1 h target');
  assert.equal(up.report.ok, true);
  await waitFor('metrics to show the drained backlog', async () => /kura_relay_backlog_snapshots\{route="peer-dc"\} 0/.test(await metrics()));
  assert.ok(/kura_relay_bytes_sent_total\{route="peer-dc"\} [1-9]/.test(await metrics()));
  // a stranger knocks; the vault counts the refusal
  const stranger = sshKey(dir, 'stranger');
  const knock = await kuraAsync(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: stranger.private, name: 'stranger.yaml' }) } });
  assert.equal(knock.status, 77);
  // the vault counts the same transfer from its side
  const vm = await (await fetch(`http://127.0.0.1:${vaultMetricsPort}/metrics`)).text();
  assert.match(vm, /kura_vault_commits_total\{tenant="city-a"\} 2/);
  assert.match(vm, /kura_vault_snapshots\{tenant="city-a"\} 2/);
  assert.match(vm, /kura_vault_bytes_received_total\{tenant="city-a"\} [1-9]/);
  assert.match(vm, /kura_vault_sessions_total\{tenant="city-a"\} [1-9]/);
  assert.match(vm, /kura_vault_refusals_total\{code="E_AUTH_DENIED",tenant=""\} [1-9]/);
});

test('statusReport: a route line shows its most overdue source; a 2-hour-old snapshot of a 1-hour source queued behind a 23-hour-old one of a 1-day source is over target', () => {
  const now = new Date('2026-11-23T12:00:00Z');
  const header = (source: string, endTime: string) => ({ tenant: 't', source, host: 'h', startTime: endTime, endTime, logicalBytes: 10, chunkCount: 1, newChunks: 1, newBytes: 7, parent: null, tags: [] });
  const r = statusReport(
    {
      routes: ['dc2', 'office'],
      routeStates: [],
      queued: [
        { snapshot: 'a', route: 'dc2', source: 'juki', end_time: '2026-11-22T13:00:00Z' },
        { snapshot: 'b', route: 'dc2', source: 'zei', end_time: '2026-11-23T10:00:00Z' },
      ],
      snapshots: [
        { id: 'a', header: header('juki', '2026-11-22T13:00:00Z') },
        { id: 'b', header: header('zei', '2026-11-23T10:00:00Z') },
      ],
      sources: [
        { source: 'juki', tenant: 't', rpoSeconds: 86400, routes: ['dc2'] },
        { source: 'zei', tenant: 't', rpoSeconds: 3600, routes: ['dc2'] },
      ],
      delivered: new Map(),
      defaultRpoSeconds: 86400,
    },
    now,
  );
  const dc2 = r.routes[0]!;
  assert.equal(dc2.queued, 2);
  assert.equal(dc2.queuedBytes, 14);
  assert.equal(dc2.worstSource, 'zei', 'the 1-hour source, 2 hours behind, is the worst, not the oldest entry');
  assert.equal(dc2.exposureSeconds, 2 * 3600);
  assert.equal(dc2.rpoTargetSeconds, 3600);
  assert.equal(dc2.overTarget, true);
  assert.deepEqual(r.exposure.map((e) => [e.source, e.route, e.exposureSeconds, e.overTarget]), [['juki', 'dc2', 23 * 3600, false], ['zei', 'dc2', 2 * 3600, true]]);
  assert.equal(r.routes[1]!.exposureSeconds, 0, 'a route no source uses has nothing exposed');
  assert.equal(r.routes[1]!.overTarget, false);
  assert.equal(r.ok, false);
  assert.deepEqual(r.sources.map((s) => [s.source, s.lastBackup, s.overTarget]), [['juki', '2026-11-22T13:00:00Z', false], ['zei', '2026-11-23T10:00:00Z', true]]);
});

test('status fails when the last backup of a source failed, and recovers with the next good one', (t) => {
  const dir = tempDir(t);
  const cfg = agentConfig(dir, { port: 1, key: '/dev/null' });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  kuraOk(['backup', '--name', 'juki', '--stdin'], { env, input: 'good rows\n' });
  // /proc/self/mem is a regular file whose read fails at once: an export that breaks
  const bad = kura(['backup', '--name', 'juki', '--file', '/proc/self/mem'], { env });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /E_INPUT_FAILED.*no snapshot was written/);
  assert.equal(kuraJson<unknown[]>(['snapshots'], { env }).length, 1);
  const st = kura(['status', '--json'], { env });
  assert.equal(st.status, 1);
  const report = JSON.parse(st.out) as { ok: boolean; sources: Array<{ source: string; lastJobFailed: boolean; lastJob: { errorCode: string } }> };
  assert.equal(report.ok, false);
  assert.equal(report.sources[0]!.lastJobFailed, true);
  assert.equal(report.sources[0]!.lastJob.errorCode, 'E_INPUT_FAILED');
  assert.match(kura(['status'], { env }).stderr, /E_BACKUP_FAILED: last backup of juki failed \(E_INPUT_FAILED\)/);
  kuraOk(['backup', '--name', 'juki', '--stdin'], { env, input: 'good rows again\n' });
  assert.equal(kura(['status', '--json'], { env }).status, 0);
});
