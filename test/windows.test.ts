import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { kuraAsync, kuraOk, spawnKura, tempDir } from './support/cli.js';
import { startPostgres } from './support/db.js';
import { exitOf, waitFor } from './support/proc.js';
import { sleep } from './support/proxy.js';
import { sshKey, startVault, type VaultProcess } from './support/vault.js';

interface Job {
  vm: number;
  started: number;
  finished: number | null;
  result: string;
  coordination: string | null;
}

const N = 8;
const TTL_S = 9;

/** The jobs of every agent, from their own repositories' job records. */
function jobsOf(dir: string): Job[] {
  const out: Job[] = [];
  for (let i = 1; i <= N; i++) {
    const db = new Database(path.join(dir, `vm${i}`, 'repo', 'catalogue.sqlite'), { readonly: true, fileMustExist: true });
    try {
      for (const j of db.prepare(`SELECT started, finished, result, coordination FROM jobs ORDER BY id`).all() as Array<{ started: string; finished: string | null; result: string; coordination: string | null }>) {
        out.push({ vm: i, started: Date.parse(j.started), finished: j.finished ? Date.parse(j.finished) : null, result: j.result, coordination: j.coordination });
      }
    } finally {
      db.close();
    }
  }
  return out;
}

/** How many of `jobs` run at `t`. */
const runningAt = (jobs: Job[], t: number, end = (j: Job) => j.finished ?? Infinity) => jobs.filter((j) => j.started <= t && t < end(j)).length;

/** The most that ever run at once (checked at every start). */
const peak = (jobs: Job[], end?: (j: Job) => number) => Math.max(0, ...jobs.map((j) => runningAt(jobs, j.started, end)));

/** A window of `minutes` starting at the next minute boundary at least 20 s away, as "HH:MM-HH:MM" UTC. */
function nextWindow(minutes: number): { text: string; start: number; end: number } {
  const now = Date.now();
  let start = Math.ceil(now / 60_000) * 60_000;
  if (start - now < 20_000) start += 60_000;
  const end = start + minutes * 60_000;
  const hhmm = (t: number) => new Date(t).toISOString().slice(11, 16);
  return { text: `${hhmm(start)}-${hhmm(end)}`, start, end };
}

test('8 agent daemons in one group (maxConcurrent 2) exporting from a real PostgreSQL: never more than 2 exports at once, each in the window, none skipped; kill -9 of a slot holder frees its slot after the TTL; with the coordinator stopped all 8 still run, uncoordinated', async (t) => {
  const dir = tempDir(t);
  const pg = await startPostgres(dir);
  t.after(() => pg.stop());
  const pwFile = path.join(dir, 'pg.pw');
  writeFileSync(pwFile, pg.password + '\n');
  for (let i = 1; i <= N; i++) {
    pg.psql('postgres', `CREATE DATABASE db${i}`);
    pg.psql(`db${i}`, `CREATE TABLE residents (id int PRIMARY KEY, name text); INSERT INTO residents SELECT g, md5(g::text) FROM generate_series(1, 3000) g`);
  }
  // the real pg_dump after a pause: an export long enough for the plan's packed starts to collide
  const slowDump = path.join(dir, 'slow-pg_dump');
  const exportTakes = (seconds: number) => {
    writeFileSync(slowDump, `#!/bin/sh\nsleep ${seconds}\nexec pg_dump "$@"\n`);
    chmodSync(slowDump, 0o755);
  };
  exportTakes(8);

  const keys = Array.from({ length: N }, (_, i) => sshKey(dir, `key-vm${i + 1}`));
  const vaultDir = path.join(dir, 'coordinator');
  mkdirSync(vaultDir);
  const vault: VaultProcess = await startVault(vaultDir, `    city-a:\n      clients:\n${keys.map((k) => `        - key: ${k.public}\n`).join('')}`);
  t.after(() => vault.stop());

  const members = Array.from({ length: N }, (_, i) => `vm${i + 1}/db`);
  const writeConfigs = (window: string) => {
    for (let i = 1; i <= N; i++) {
      const home = path.join(dir, `vm${i}`);
      mkdirSync(home, { recursive: true });
      writeFileSync(
        path.join(home, 'kura.yaml'),
        `tenant: city-a\nhost: vm${i}\ntimezone: UTC\nrepository: { path: ${path.join(home, 'repo')} }\n` +
          `relay: { keepalive: 1s, connectTimeout: 10s }\n` +
          `modules:\n  routing:\n    type: static\n    routes:\n      coordinator:\n        endpoints: [{ host: 127.0.0.1, port: ${vault.port}, hostKeySha256: "${vault.hostKeySha256}" }]\n        clientKey: ${keys[i - 1]!.private}\n` +
          `  virtualization:\n    type: groups\n    groups:\n      hv-a:\n        window: "${window}"\n        maxConcurrent: 2\n        expectedDuration: 5s\n        spread: packed\n        slotTtl: ${TTL_S}s\n        coordinator: coordinator\n        members: [${members.join(', ')}]\n` +
          `sources:\n  db:\n    type: postgres\n    uri: ${pg.uri(`db${i}`)}\n    passwordFile: ${pwFile}\n    pgDump: ${slowDump}\n`,
      );
    }
  };
  const env = (i: number) => ({ KURA_CONFIG: path.join(dir, `vm${i}`, 'kura.yaml') });
  const daemons = new Map<number, ReturnType<typeof spawnKura>>();
  const startDaemon = (i: number) => {
    const d = spawnKura(['agent', 'daemon'], env(i));
    d.stdout.resume();
    d.stderr.resume();
    daemons.set(i, d);
  };
  t.after(() => daemons.forEach((d) => d.kill('SIGKILL')));

  // phase 1: coordinated
  const w1 = nextWindow(4);
  writeConfigs(w1.text);
  for (let i = 1; i <= N; i++) kuraOk(['repo', 'init'], { env: env(i) });
  for (let i = 1; i <= N; i++) startDaemon(i);

  // kill -9 the first agent seen holding a slot, mid-export
  let victim = 0;
  await waitFor('a coordinated export to be running', () => {
    const running = jobsOf(dir).filter((j) => j.result === 'running' && j.coordination === 'coordinated');
    if (running.length === 0) return false;
    victim = running[0]!.vm;
    return true;
  }, w1.start - Date.now() + 60_000, 250).catch((e: Error) => {
    throw new Error(`${e.message} (window ${w1.text}, now ${new Date().toISOString()}); jobs so far: ${JSON.stringify(jobsOf(dir))}`);
  });
  await sleep(2000);
  daemons.get(victim)!.kill('SIGKILL');
  await exitOf(daemons.get(victim)!);
  const killedAt = Date.now();
  // back after its lease has surely run out: its planned run was missed, so it runs now
  await sleep((TTL_S + 2) * 1000);
  startDaemon(victim);

  await waitFor('every agent to have a good backup in the window', () => {
    const jobs = jobsOf(dir);
    return Array.from({ length: N }, (_, i) => i + 1).every((vm) => jobs.some((j) => j.vm === vm && j.result === 'ok'));
  }, w1.end - Date.now() + 30_000, 500);

  const jobs = jobsOf(dir);
  const dead = jobs.find((j) => j.vm === victim && j.result === 'running')!;
  assert.ok(dead, 'the killed export is left as a running job record');
  const ok = jobs.filter((j) => j.result === 'ok');
  assert.equal(ok.length, N, 'each agent backed up once: none skipped, none doubled');
  for (const j of ok) {
    assert.equal(j.coordination, 'coordinated', `vm${j.vm}`);
    assert.ok(j.started >= w1.start && j.finished! <= w1.end, `vm${j.vm} ran inside the window ${w1.text}`);
  }
  // the killed job holds its slot until its lease runs out: at the earliest 2/3 of the TTL after
  // the kill (it was renewed every third of the TTL while the export ran)
  const leaseLeft = ((2 * TTL_S) / 3) * 1000 - 500;
  const slotEnd = (j: Job) => (j === dead ? killedAt + leaseLeft : (j.finished ?? Infinity));
  const counted = [...ok, dead];
  assert.ok(peak(counted, slotEnd) <= 2, `at most 2 exports at once (peak ${peak(counted, slotEnd)})`);
  // while the dead lease lived (renewed at most TTL/3 before the kill), only one other export ran
  for (let at = killedAt + 500; at < killedAt + leaseLeft; at += 250) {
    assert.ok(runningAt(ok, at) <= 1, `${at - killedAt} ms after the kill, ${runningAt(ok, at)} others ran`);
  }
  assert.ok(ok.some((j) => j.started > killedAt + leaseLeft), 'after the lease ran out, exports went on');
  const status = await kuraAsync(['status', '--json'], { env: env(1) });
  const plan = (JSON.parse(status.out) as { sources: Array<{ source: string; plan?: { group: string; lastRun: string; nextStart: string } }> }).sources.find((s) => s.source === 'db')!.plan!;
  assert.equal(plan.group, 'hv-a');
  assert.equal(plan.lastRun, 'coordinated');

  // phase 2: the coordinator is gone; every agent still runs at its planned start, and says so
  for (const d of daemons.values()) d.kill('SIGTERM');
  await Promise.all([...daemons.values()].map((d) => exitOf(d)));
  await vault.stop();
  exportTakes(1);
  const w2 = nextWindow(2);
  writeConfigs(w2.text);
  for (let i = 1; i <= N; i++) startDaemon(i);
  await waitFor('every agent to back up without its coordinator', () => jobsOf(dir).filter((j) => j.result === 'ok' && j.started >= w2.start).length === N, w2.end - Date.now() + 30_000, 500);
  const second = jobsOf(dir).filter((j) => j.started >= w2.start);
  assert.equal(second.length, N, 'one job each, none skipped');
  for (const j of second) {
    assert.equal(j.result, 'ok');
    assert.match(j.coordination ?? '', /^uncoordinated: coordinator coordinator unreachable/, `vm${j.vm}`);
    assert.ok(j.finished! <= w2.end, `vm${j.vm} inside the window`);
  }
  const st = await kuraAsync(['status'], { env: env(3) });
  assert.match(st.out, /PLANNED\s+GROUP[\s\S]*db\s+hv-a\s+.*uncoordinated: coordinator coordinator unreachable/);
});
