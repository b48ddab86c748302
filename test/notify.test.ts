import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import { writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { kuraAsync, spawnKura, tempDir, type RunResult } from './support/cli.js';
import { exitOf, waitFor } from './support/proc.js';
import { LinkProxy, sleep } from './support/proxy.js';
import { emailYaml, selfSignedCert, TestSmtp } from './support/smtp.js';
import { agentConfig, freePort, sshKey, startVault } from './support/vault.js';
import { configSchema } from '../src/config/schema.js';
import { expandOn, makeEvent, wants, type EventKind } from '../src/notify/events.js';
import { Notifier } from '../src/notify/notifier.js';
import { burstStep, lineStep, quotaStep, rpoStep, type LineState } from '../src/notify/watch.js';
import type { Exposure } from '../src/status/exposure.js';


// Every kura command here runs without blocking this process: the SMTP server, the webhook
// endpoint and the link proxy the commands talk to live in it.
const kura = (args: string[], opts: { env?: Record<string, string>; input?: Buffer | string } = {}): Promise<RunResult> => kuraAsync(args, opts);
async function kuraOk(args: string[], opts: { env?: Record<string, string>; input?: Buffer | string } = {}): Promise<RunResult> {
  const r = await kuraAsync(args, opts);
  if (r.status !== 0) throw new Error(`kura ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r;
}
async function kuraJson<T>(args: string[], opts: { env?: Record<string, string> } = {}): Promise<T> {
  const r = await kuraOk([...args, '--json'], opts);
  return JSON.parse(r.out.trim().split('\n').pop()!) as T;
}

const exposure = (o: Partial<Exposure>): Exposure => ({ source: 'juki', tenant: 'city-a', route: 'dc2', exposureSeconds: 10, targetSeconds: 60, overTarget: false, newestDelivered: null, since: 'delivered', queued: 0, paused: false, ...o });

test('watch steps: an RPO crossing is said once and its recovery once; nothing measured says nothing', () => {
  const over = exposure({ exposureSeconds: 90, overTarget: true });
  const ok = exposure({ exposureSeconds: 5 });
  const rows: Array<[string, 'ok' | 'over' | undefined, Exposure, EventKind[], 'ok' | 'over' | undefined]> = [
    ['first look, within target', undefined, ok, [], 'ok'],
    ['first look, over target', undefined, over, ['rpo.exceeded'], 'over'],
    ['still over', 'over', over, [], 'over'],
    ['back within', 'over', ok, ['rpo.recovered'], 'ok'],
    ['still within', 'ok', ok, [], 'ok'],
    ['crossed again', 'ok', over, ['rpo.exceeded'], 'over'],
    ['no snapshot yet', undefined, exposure({ exposureSeconds: null, since: 'no-snapshot' }), [], undefined],
  ];
  for (const [name, prev, e, want, next] of rows) {
    const s = rpoStep(prev, e, 1000);
    assert.deepEqual(s.emit.map((x) => x.event), want, name);
    assert.equal(s.next, next, name);
  }
  const idle = rpoStep(undefined, exposure({ exposureSeconds: 90, overTarget: true, queued: 0 }), 1).emit[0]!;
  assert.match(idle.text, /source itself has not been backed up recently/, 'a stopped source is told apart from a slow line');
  const queued = rpoStep(undefined, exposure({ exposureSeconds: 90, overTarget: true, queued: 3, paused: true }), 1).emit[0]!;
  assert.match(queued.text, /3 snapshot\(s\) wait to be sent and the route is paused/);
});

test('watch steps: a line down longer than the threshold is said once, and its return once; a short blip says nothing', () => {
  const after = 60_000;
  let st: LineState | undefined;
  const said: string[] = [];
  const step = (seen: { down: boolean } | null, at: number) => {
    const s = lineStep(st, 'dc2', seen, at, after);
    st = s.next;
    said.push(...s.emit.map((e) => e.event));
  };
  step({ down: true }, 0);
  step(null, 30_000);
  step({ down: false }, 40_000); // a blip
  assert.deepEqual(said, []);
  step({ down: true }, 100_000);
  step({ down: true }, 130_000); // the since is kept
  step(null, 159_999);
  assert.deepEqual(said, []);
  step(null, 160_000);
  step(null, 220_000);
  step({ down: true }, 230_000);
  assert.deepEqual(said, ['line.down']);
  step({ down: false }, 300_000);
  step({ down: false }, 301_000);
  assert.deepEqual(said, ['line.down', 'line.up']);
});

test('watch steps: refused logins make a burst once per window; quota warns and exceeds once on the way up', () => {
  let b: Parameters<typeof burstStep>[0];
  const bursts: number[] = [];
  for (const at of [0, 1000, 2000, 3000, 4000, 61_000, 62_000, 63_000, 200_000]) {
    const s = burstStep(b, { ip: '127.0.0.9', user: 'x', reason: 'unknown key' }, at, 3, 60_000);
    b = s.next;
    if (s.emit.length) bursts.push(at);
  }
  assert.deepEqual(bursts, [2000, 62_000], 'the third refusal within a minute, then not again until a minute after that report');
  const q = 1000;
  const levels: Array<[Parameters<typeof quotaStep>[0], number, boolean, EventKind[]]> = [
    [undefined, 500, false, []],
    ['ok', 899, false, []],
    ['ok', 900, false, ['quota.warning']],
    ['warning', 950, false, []],
    ['warning', 960, true, ['quota.exceeded']],
    ['exceeded', 1001, false, []],
    ['exceeded', 100, false, []],
    ['ok', 1000, false, ['quota.exceeded']],
  ];
  for (const [prev, stored, refused, want] of levels) assert.deepEqual(quotaStep(prev, 'city-a', stored, q, refused, 90, 0).emit.map((e) => e.event), want, `${prev} → ${stored}`);
});

test('event filters: "failure" means every event a person must act on, "success" a good backup; tenants and sources narrow a destination', () => {
  const on = expandOn(['failure']);
  assert.ok(on.has('rpo.exceeded') && on.has('line.up') && on.has('backup.failed') && !on.has('backup.ok'));
  assert.ok(expandOn(['success']).has('backup.ok'));
  const e = (kind: EventKind, tenant?: string, source?: string) => makeEvent({ event: kind, tenant, source, key: 'k', title: 't', text: 'x', data: {} }, { mode: 'agent', host: 'h' });
  const cityA = { on, tenants: ['city-a'] };
  assert.equal(wants(cityA, e('backup.failed', 'city-a')), true);
  assert.equal(wants(cityA, e('backup.failed', 'city-b')), false, 'another tenant\'s recipients');
  assert.equal(wants(cityA, e('auth.refused-burst')), false, 'an event of no tenant goes to destinations without a tenant filter');
  assert.equal(wants({ on, sources: ['juki'] }, e('backup.failed', 'city-a', 'zei')), false);
  assert.equal(wants({ on }, e('backup.ok', 'city-a')), false);
  assert.equal(wants({ on: expandOn(['line.down']) }, e('test')), true, 'a test message goes everywhere');
});

/** A loopback HTTP endpoint that answers with `status()` and keeps what it was sent. */
async function hookServer(t: { after: (fn: () => void) => void }, status: () => number = () => 200) {
  const got: Array<{ path: string; body: Record<string, unknown> }> = [];
  const server = createServer((req: IncomingMessage, res) => {
    let b = '';
    req.on('data', (d) => (b += d));
    req.on('end', () => {
      const code = status();
      if (code === 200) got.push({ path: req.url!, body: JSON.parse(b) as Record<string, unknown> });
      res.statusCode = code;
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.after(() => server.close());
  return { got, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

test('the queue: rate limited per destination (the rest wait, none dropped), de-duplicated by key, retried after a failed delivery, and kept across processes', async (t) => {
  const dir = tempDir(t);
  let failing = true;
  const hook = await hookServer(t, () => (failing ? 500 : 200));
  const cfg = configSchema.parse({
    notifications: {
      webhooks: [
        { url: `${hook.url}/limited`, maxPerHour: 2, on: ['backup.failed'] },
        { url: `${hook.url}/city-b`, tenants: ['city-b'], format: 'slack' },
      ],
      retry: { initial: '200ms', max: '1s' },
    },
  });
  const ev = (i: number, tenant = 'city-a') => ({ event: 'backup.failed' as const, tenant, source: 'juki', key: `backup.failed:juki:${i}`, title: `failed ${i}`, text: 'E_EXPORT_FAILED', data: { job: i } });
  const first = Notifier.fromConfig(cfg, 'agent', dir);
  first.emit(ev(1));
  first.emit(ev(1)); // the same key again: once
  assert.equal(await first.flush(3000), 1, 'the endpoint answered 500: the event stays queued');
  await first.close();
  assert.equal(hook.got.length, 0);

  // a new process: the queue survived; the endpoint works again
  failing = false;
  const second = Notifier.fromConfig(cfg, 'agent', dir);
  second.start();
  for (let i = 2; i <= 4; i++) second.emit(ev(i));
  second.emit(ev(5, 'city-b'));
  await waitFor('the first deliveries', () => hook.got.length >= 3, 10_000);
  await sleep(1500); // retries come and go; the limit holds
  const limited = hook.got.filter((g) => g.path === '/limited');
  assert.deepEqual(limited.map((g) => g.body.job), [1, 2], 'two an hour: job 1 (retried once the endpoint worked) and job 2');
  const cityB = hook.got.filter((g) => g.path === '/city-b');
  assert.equal(cityB.length, 1, 'only city-b\'s event reaches city-b\'s destination');
  assert.match(String(cityB[0]!.body.text), /^failed 5\nE_EXPORT_FAILED/);
  const waiting = second.pending();
  assert.deepEqual(waiting.map((w) => w.channel), ['webhooks[0]', 'webhooks[0]', 'webhooks[0]'], 'jobs 3 and 4 wait for the hour to pass, and city-b\'s job 5 was never for this destination');
  await second.close();
});

/** A real SMTP server on loopback (STARTTLS, login) and the config lines of a destination for it. */
async function mailServer(t: { after: (fn: () => Promise<void>) => void }, dir: string): Promise<{ smtp: TestSmtp; mailYaml: string }> {
  const tls = selfSignedCert(dir);
  const passwordFile = path.join(dir, 'smtp.pw');
  writeFileSync(passwordFile, 's3cret\n');
  const smtp = await new TestSmtp(await freePort(), tls, 's3cret').start();
  t.after(() => smtp.stop());
  return { smtp, mailYaml: emailYaml(smtp, { caFile: tls.cert, passwordFile }) };
}

test('mail: a failed agent run sends its mail before it exits (STARTTLS, login); during an SMTP outage the mail waits and arrives once the server is back, exactly once', async (t) => {
  const dir = tempDir(t);
  const { smtp, mailYaml } = await mailServer(t, dir);
  const cfg = path.join(dir, 'kura.yaml');
  writeFileSync(
    cfg,
    `tenant: city-a\nrepository: { path: ${path.join(dir, 'repo')} }\n` +
      `notifications:\n${mailYaml}  retry: { initial: 1s, max: 2s }\n` +
      `sources:\n  juki:\n    type: command\n    command: sh\n    args: ["-c", "echo 'juki rows'; echo 'pg_dump: error: connection to server failed' >&2; exit 3"]\n  good:\n    type: command\n    command: sh\n    args: ["-c", "echo good rows"]\n`,
  );
  const env = { KURA_CONFIG: cfg };
  await kuraOk(['repo', 'init'], { env });

  const r = await kuraAsync(['agent', 'run', '--source', 'juki'], { env });
  assert.equal(r.status, 1, r.stderr);
  // no waiting: the mail was sent before the process exited
  const mail = smtp.of('backup.failed');
  assert.equal(mail.length, 1, 'the mail is there as soon as agent run has exited');
  assert.match(mail[0]!.subject, /BACKUP FAILED: juki on .* \(tenant city-a\)/);
  assert.match(mail[0]!.body, /E_EXPORT_FAILED: export command of source juki exited with status 3/);
  assert.match(mail[0]!.body, /pg_dump: error: connection to server failed/, 'the export\'s own words');
  assert.deepEqual(mail[0]!.to, ['ops@city-a.test']);
  assert.equal(mail[0]!.secure, true, 'sent after STARTTLS');
  assert.equal(mail[0]!.user, 'kura', 'after logging in');

  // the mail server goes down; the backup fails again and is not held up by it
  await smtp.stop();
  const t0 = Date.now();
  const down = await kuraAsync(['agent', 'run', '--source', 'juki', '--json'], { env });
  assert.equal(down.status, 1);
  assert.ok(Date.now() - t0 < 15_000, 'a dead mail server does not hold up the job');
  const job = (JSON.parse(down.out.trim().split('\n')[0]!) as { job: number }).job;
  const pending = await kuraJson<Array<{ event: string; lastError: string }>>(['notify', 'pending'], { env });
  assert.equal(pending.length, 1);
  assert.equal(pending[0]!.event, 'backup.failed');
  assert.match(pending[0]!.lastError, /ECONNREFUSED/);

  // back: the next kura run of this host delivers it (here a good backup), once
  await smtp.start();
  await sleep(2100); // past the retry back-off
  assert.equal((await kuraAsync(['agent', 'run', '--source', 'good'], { env })).status, 0);
  const failed = () => smtp.of('backup.failed').filter((m) => m.body.includes(`"job":${job}`) || m.headers['x-kura-key'] === `backup.failed:juki:${job}`);
  assert.equal(failed().length, 1, 'the queued mail arrived');
  assert.equal((await kuraAsync(['notify', 'flush'], { env })).status, 0);
  await sleep(500);
  assert.equal(failed().length, 1, 'exactly once');
  assert.equal(smtp.of('backup.ok').length, 0, 'good backups are not mailed by default');
  assert.equal((await kuraJson<unknown[]>(['notify', 'pending'], { env })).length, 0);

  // kura notify test reaches the destination and says so
  const tested = await kuraJson<Array<{ delivered: boolean; label: string }>>(['notify', 'test'], { env });
  assert.deepEqual(tested.map((x) => x.delivered), [true]);
  assert.equal(smtp.of('test').length, 1);
});

test('mail: the agent daemon notices a source that silently stopped backing up (RPO exceeded, once) with no command run, and the next backup sends the recovery', async (t) => {
  const dir = tempDir(t);
  const { smtp, mailYaml } = await mailServer(t, dir);
  const cfg = path.join(dir, 'kura.yaml');
  writeFileSync(
    cfg,
    `tenant: city-a\nrepository: { path: ${path.join(dir, 'repo')} }\n` +
      `notifications:\n${mailYaml}  evaluateEvery: 1s\n` +
      // its schedule never comes during the test: the source has, in effect, stopped
      `sources:\n  zei:\n    type: command\n    command: sh\n    args: ["-c", "echo tax rows"]\n    schedule: "0 0 1 1 *"\n    rpo: 4s\n`,
  );
  const env = { KURA_CONFIG: cfg };
  await kuraOk(['repo', 'init'], { env });
  await kuraOk(['agent', 'run'], { env });
  assert.equal(smtp.mails.length, 0);
  const daemon = spawnKura(['agent', 'daemon'], env);
  t.after(() => daemon.kill('SIGKILL'));
  await waitFor('the RPO mail', () => smtp.of('rpo.exceeded').length > 0, 20_000);
  const m = smtp.of('rpo.exceeded')[0]!;
  assert.match(m.subject, /RPO EXCEEDED: zei on site/);
  assert.match(m.body, /has not been backed up recently/);
  await sleep(2500);
  assert.equal(smtp.of('rpo.exceeded').length, 1, 'said once per crossing, not every minute');
  assert.equal((await kura(['status'], { env })).status, 1, 'and status fails');
  // a running daemon would see the crossing back within a second too, and whichever process
  // sees it first says it (once); stopped, it leaves the run's own promise to test
  daemon.kill('SIGTERM');
  assert.equal((await exitOf(daemon)).code, 0);
  await kuraOk(['agent', 'run'], { env });
  assert.equal(smtp.of('rpo.recovered').length, 1, 'the good backup sends the all-clear before it exits');
});

test('webhooks: a route down longer than lineDownAfter sends one "line down" and one "line back" (generic JSON and Slack), and the relay ships the backlog', async (t) => {
  const dir = tempDir(t);
  const hook = await hookServer(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n`);
  t.after(() => vault.stop());
  const link = await new LinkProxy(vault.port).start();
  t.after(() => link.close());
  link.down();
  const cfg = agentConfig(dir, {
    port: link.port,
    hostKeySha256: vault.hostKeySha256,
    key: key.private,
    extraTop: `notifications:\n  webhooks:\n    - { url: "${hook.url}/generic" }\n  slack:\n    - { url: "${hook.url}/slack" }\n  lineDownAfter: 3s\n  evaluateEvery: 1s\n`,
  });
  const env = { KURA_CONFIG: cfg };
  await kuraOk(['repo', 'init'], { env });
  await kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env, input: 'night one\n' });
  const relay = spawnKura(['relay', 'run'], env);
  t.after(() => relay.kill('SIGKILL'));
  const of = (p: string, event: string) => hook.got.filter((g) => g.path === p && g.body.event === event);
  await waitFor('line down', () => of('/generic', 'line.down').length > 0, 20_000);
  const down = of('/generic', 'line.down')[0]!.body;
  assert.equal(down.route, 'peer-dc');
  assert.match(String(down.text), /E_LINK_DOWN/);
  await sleep(2500);
  assert.equal(of('/generic', 'line.down').length, 1, 'once, however long it stays down');
  link.up();
  await waitFor('line back', () => of('/generic', 'line.up').length > 0, 20_000);
  const queued = async () => (JSON.parse((await kura(['status', '--json'], { env })).out) as { routes: Array<{ queued: number }> }).routes[0]!.queued;
  await waitFor('the backlog to drain', async () => (await queued()) === 0, 20_000);
  await sleep(1500);
  assert.equal(of('/generic', 'line.down').length, 1);
  assert.equal(of('/generic', 'line.up').length, 1);
  const slack = hook.got.filter((g) => g.path === '/slack').map((g) => String(g.body.text));
  assert.equal(slack.length, 2);
  assert.match(slack[0]!, /^kura LINE DOWN: route peer-dc for \d+s\n/);
  assert.match(slack[1]!, /^kura line back: route peer-dc\n/);
  relay.kill('SIGTERM');
  await exitOf(relay);
});

test('vault: a burst of refused logins is reported once; a tenant\'s quota warns at 90 % and reports when exceeded; the relay reports the refusal', async (t) => {
  const dir = tempDir(t);
  const hook = await hookServer(t);
  const key = sshKey(dir, 'relay');
  const vaultNotify = `notifications:\n  webhooks:\n    - { url: "${hook.url}/vault" }\n  refusedLogins: { count: 3, within: 1m }\n`;
  const v2 = await startVault(dir, `    city-a:\n      quota: 150000\n      clients:\n        - key: ${key.public}\n`, '', vaultNotify);
  t.after(() => v2.stop());

  const stranger = sshKey(dir, 'stranger');
  const strangerCfg = agentConfig(dir, { port: v2.port, hostKeySha256: v2.hostKeySha256, key: stranger.private, name: 'stranger.yaml' });
  for (let i = 0; i < 4; i++) assert.equal((await kura(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: strangerCfg } })).status, 77);
  await waitFor('the burst report', () => hook.got.some((g) => g.body.event === 'auth.refused-burst'), 10_000);
  await sleep(500);
  assert.equal(hook.got.filter((g) => g.body.event === 'auth.refused-burst').length, 1, 'once per window');
  assert.match(String(hook.got.find((g) => g.body.event === 'auth.refused-burst')!.body.text), /127\.0\.0\.1/);

  const relayHook = `notifications:\n  webhooks:\n    - { url: "${hook.url}/relay" }\n`;
  const cfg = agentConfig(dir, { port: v2.port, hostKeySha256: v2.hostKeySha256, key: key.private, extraTop: relayHook });
  const env = { KURA_CONFIG: cfg };
  await kuraOk(['repo', 'init'], { env });
  const random = (n: number) => (globalThis.crypto.getRandomValues(new Uint8Array(n)) as Uint8Array);
  const big = Buffer.concat([Buffer.from(random(65536)), Buffer.from(random(65536)), Buffer.from(random(8000))]);
  await kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env, input: big });
  await kuraOk(['relay', 'once'], { env });
  await waitFor('the quota warning', () => hook.got.some((g) => g.path === '/vault' && g.body.event === 'quota.warning'), 10_000);
  const warn = hook.got.find((g) => g.body.event === 'quota.warning')!.body;
  assert.equal(warn.tenant, 'city-a');
  assert.ok(Number(warn.percent) >= 90 && Number(warn.percent) < 100, `at ${warn.percent} %`);

  await kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env, input: Buffer.from(random(60000)) });
  const over = await kura(['relay', 'once'], { env });
  assert.equal(over.status, 75, over.stderr);
  await waitFor('the quota report', () => hook.got.some((g) => g.path === '/vault' && g.body.event === 'quota.exceeded'), 10_000);
  const relayTold = hook.got.filter((g) => g.path === '/relay' && g.body.event === 'relay.refused');
  assert.equal(relayTold.length, 1, 'the relay side hears of it too');
  assert.equal((relayTold[0]!.body.error as { code: string }).code, 'E_QUOTA');
  // retried: the same refusal is not said again within the de-duplication window
  assert.equal((await kura(['relay', 'once'], { env })).status, 75);
  await sleep(300);
  assert.equal(hook.got.filter((g) => g.path === '/relay' && g.body.event === 'relay.refused').length, 1);
  assert.equal(hook.got.filter((g) => g.path === '/vault' && g.body.event === 'quota.exceeded').length, 1);
});
