import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import path from 'node:path';
import Database from 'better-sqlite3';
import { kura, kuraAsync, kuraJson, kuraOk, spawnKura, tempDir, type RunResult } from './support/cli.js';
import { startMariaDb, startPostgres } from './support/db.js';
import { exitOf, waitFor } from './support/proc.js';
import { sleep } from './support/proxy.js';
import { lockHeld } from './support/locks.js';

interface Line {
  source: string;
  result: string;
  snapshot?: string;
  logicalBytes?: number;
  newBytes?: number;
  seconds: number;
  pruned?: number;
  error?: { code: string; message: string };
  stderr?: string;
  reason?: string;
}

const lines = (r: RunResult): Line[] =>
  r.out
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Line);

function catalogue(repo: string) {
  return new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true, fileMustExist: true });
}

function agentYaml(dir: string, sources: string, extra = ''): { cfg: string; repo: string; env: Record<string, string> } {
  const repo = path.join(dir, 'repo');
  const cfg = path.join(dir, 'kura.yaml');
  writeFileSync(
    cfg,
    `tenant: city-a\nrepository:\n  path: ${repo}\nmodules:\n  routing:\n    type: static\n    routes:\n      peer-dc:\n        endpoints: [{ host: 127.0.0.1, port: 9 }]\n${extra}sources:\n${sources}`,
  );
  return { cfg, repo, env: { KURA_CONFIG: cfg } };
}

/** Row count and a content checksum per table, as PostgreSQL sees them. */
function pgState(pg: Awaited<ReturnType<typeof startPostgres>>, db: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of ['residents', 'payments', 'audit_log']) out[t] = pg.psql(db, `SELECT count(*) || ':' || md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM ${t} x`);
  return out;
}

test('postgres: back up, change rows, back up again; the first snapshot restores into a fresh database as it was, in plain and custom format; failed exports give failed jobs and no snapshot', async (t) => {
  const dir = tempDir(t);
  const pg = await startPostgres(dir);
  t.after(() => pg.stop());
  pg.psql('postgres', 'CREATE DATABASE juki');
  pg.psql(
    'juki',
    `CREATE TABLE residents (id int PRIMARY KEY, name text NOT NULL, status text NOT NULL, born date);
     CREATE TABLE payments (id bigserial PRIMARY KEY, resident_id int REFERENCES residents(id), amount numeric(12,0), paid date);
     CREATE TABLE audit_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL, entry text);
     INSERT INTO residents SELECT i, '住民' || i, 'active', date '1950-01-01' + (i % 20000) FROM generate_series(1, 20000) i;
     INSERT INTO payments (resident_id, amount, paid) SELECT 1 + i % 20000, i * 10, date '2026-01-01' + (i % 300) FROM generate_series(1, 30000) i;
     INSERT INTO audit_log (at, entry) SELECT timestamptz '2026-11-01' + i * interval '1 minute', 'login ' || i FROM generate_series(1, 5000) i;`,
  );
  const pwFile = path.join(dir, 'pg-password');
  writeFileSync(pwFile, pg.password + '\n', { mode: 0o600 });
  const badPw = path.join(dir, 'bad-password');
  writeFileSync(badPw, 'not-the-password\n');
  const killer = path.join(dir, 'pg_dump_killed');
  // a real pg_dump, killed with SIGKILL after 200 kB of its output (bash may or may not pass on
  // its status: either the status or the missing end-of-dump line fails the job)
  writeFileSync(killer, `#!/bin/bash\ncoproc PG { exec pg_dump "$@"; }\nhead -c 200000 <&"\${PG[0]}"\nkill -9 $PG_PID\nwait $PG_PID\n`);
  chmodSync(killer, 0o755);
  const { env, repo } = agentYaml(
    dir,
    `  juki:\n    type: postgres\n    uri: ${pg.uri('juki')}\n    passwordFile: ${pwFile}\n    routes: [peer-dc]\n` +
      `  juki-custom:\n    type: postgres\n    uri: ${pg.uri('juki')}\n    passwordFile: ${pwFile}\n    format: custom\n` +
      `  juki-ordered:\n    type: postgres\n    uri: ${pg.uri('juki')}\n    passwordFile: ${pwFile}\n    order: primary-key\n`,
  );
  kuraOk(['repo', 'init'], { env });

  const run1 = await kuraAsync(['agent', 'run', '--json'], { env });
  assert.equal(run1.status, 0, run1.stderr);
  const [plain1, custom1, ordered1] = lines(run1);
  assert.equal(plain1!.result, 'ok');
  assert.equal(custom1!.result, 'ok');
  assert.equal(ordered1!.result, 'ok', ordered1!.error?.message);
  assert.ok(plain1!.logicalBytes! > 1_000_000);
  assert.doesNotMatch(run1.out + run1.stderr, /pg-secret/, 'the password is never printed');
  const state1 = pgState(pg, 'juki');

  // a day of churn: some residents change, payments and the audit log grow, a few rows go
  pg.psql(
    'juki',
    `UPDATE residents SET status = 'moved' WHERE id % 5000 = 0;
     INSERT INTO payments (resident_id, amount, paid) SELECT 1 + i % 20000, i, date '2026-11-02' FROM generate_series(1, 500) i;
     INSERT INTO audit_log (at, entry) SELECT now(), 'day 2 ' || i FROM generate_series(1, 300) i;
     DELETE FROM payments WHERE id % 10000 = 7;`,
  );
  const run2 = lines(await kuraAsync(['agent', 'run', '--json', '--source', 'juki'], { env }));
  assert.equal(run2[0]!.result, 'ok');
  assert.ok(run2[0]!.newBytes! < plain1!.newBytes! * 0.75, `the second day stores little: ${run2[0]!.newBytes} vs ${plain1!.newBytes}`);
  const state2 = pgState(pg, 'juki');
  assert.notDeepEqual(state2, state1);

  // the first snapshot, into a fresh database
  pg.psql('postgres', 'CREATE DATABASE fresh');
  const into = await kuraAsync(['restore', plain1!.snapshot!, '--into', pg.uri('fresh'), '--password-file', pwFile], { env });
  assert.equal(into.status, 0, into.stderr);
  assert.match(into.out, /^ran: psql .*--single-transaction/m);
  assert.doesNotMatch(into.out + into.stderr, /pg-secret/);
  assert.deepEqual(pgState(pg, 'fresh'), state1);
  // not into a database that holds tables, unless --force
  const again = await kuraAsync(['restore', run2[0]!.snapshot!, '--into', pg.uri('fresh'), '--password-file', pwFile], { env });
  assert.equal(again.status, 73, again.stderr);
  assert.match(again.stderr, /E_TARGET_NOT_EMPTY/);
  const forced = await kuraAsync(['restore', run2[0]!.snapshot!, '--into', pg.uri('fresh'), '--password-file', pwFile, '--force'], { env });
  assert.equal(forced.status, 0, forced.stderr);
  assert.deepEqual(pgState(pg, 'fresh'), state2);
  // custom format goes through pg_restore; the password may also come in the URI
  pg.psql('postgres', 'CREATE DATABASE fresh2');
  const withPw = pg.uri('fresh2').replace('postgres@', `postgres:${encodeURIComponent(pg.password)}@`);
  const custom = await kuraAsync(['restore', custom1!.snapshot!, '--into', withPw, '--json'], { env });
  assert.equal(custom.status, 0, custom.stderr);
  const cj = JSON.parse(custom.out) as { commands: string[]; into: string };
  assert.match(cj.commands.join('\n'), /^pg_restore .*--single-transaction/m);
  assert.doesNotMatch(custom.out + custom.stderr, /pg-secret/);
  assert.deepEqual(pgState(pg, 'fresh2'), state1);

  // the primary-key ordered dump restores the same tables, sequences and constraints
  pg.psql('postgres', 'CREATE DATABASE fresh3');
  const ordered = await kuraAsync(['restore', ordered1!.snapshot!, '--into', pg.uri('fresh3'), '--password-file', pwFile], { env });
  assert.equal(ordered.status, 0, ordered.stderr);
  assert.deepEqual(pgState(pg, 'fresh3'), state1);
  assert.equal(pg.psql('fresh3', `SELECT last_value FROM payments_id_seq`), pg.psql('fresh', `SELECT 30000`));
  assert.match(pg.psql('fresh3', `SELECT conname FROM pg_constraint WHERE conrelid = 'payments'::regclass AND contype = 'f'`), /payments_resident_id_fkey/);
  const orderedDump = kuraOk(['restore', ordered1!.snapshot!], { env }).out;
  const ids = [...orderedDump.matchAll(/^(\d+)\t住民/gm)].map((m) => Number(m[1]));
  assert.equal(ids.length, 20000);
  assert.ok(ids.every((v, i) => i === 0 || v > ids[i - 1]!), 'residents in key order');

  // failed exports: wrong password, a pg_dump killed mid-way, an export exiting 3, a timeout
  const before = kuraJson<Array<{ id: string }>>(['snapshots'], { env }).length;
  const failing = agentYaml(
    dir,
    `  wrong-password:\n    type: postgres\n    uri: ${pg.uri('juki')}\n    passwordFile: ${badPw}\n    routes: [peer-dc]\n` +
      `  killed:\n    type: postgres\n    uri: ${pg.uri('juki')}\n    passwordFile: ${pwFile}\n    pgDump: ${killer}\n    routes: [peer-dc]\n` +
      `  vendor:\n    type: command\n    command: sh\n    args: ["-c", "echo partial export; echo 'EXPORT-ERR: table lock timeout' >&2; exit 3"]\n    routes: [peer-dc]\n` +
      `  slow:\n    type: command\n    command: sleep\n    args: ["30"]\n    timeout: 1s\n    routes: [peer-dc]\n`,
  );
  const queuedBefore = (catalogue(repo).prepare('SELECT count(*) AS n FROM queue').get() as { n: number }).n;
  const t0 = Date.now();
  const bad = await kuraAsync(['agent', 'run', '--json'], { env: failing.env });
  assert.ok(Date.now() - t0 < 20_000, 'the timeout stopped the slow export');
  assert.equal(bad.status, 1, bad.stderr);
  assert.match(bad.stderr, /E_BACKUP_FAILED: 4 of 4 source\(s\) failed/);
  const byName = new Map(lines(bad).map((l) => [l.source, l]));
  assert.equal(byName.get('wrong-password')!.error!.code, 'E_EXPORT_FAILED');
  assert.match(byName.get('wrong-password')!.error!.message, /password authentication failed/);
  assert.match(byName.get('killed')!.error!.message, /exited with status 137|killed by SIGKILL|the dump ends early/);
  assert.match(byName.get('vendor')!.error!.message, /exited with status 3/);
  assert.match(byName.get('vendor')!.stderr!, /EXPORT-ERR: table lock timeout/);
  assert.equal(byName.get('slow')!.error!.code, 'E_EXPORT_TIMEOUT');
  assert.match(byName.get('slow')!.error!.message, /no snapshot was written; raise sources\.slow\.timeout/);
  assert.match(byName.get('vendor')!.error!.message, /then rerun "kura agent run --source vendor"/);
  assert.equal(kuraJson<Array<{ id: string }>>(['snapshots'], { env }).length, before, 'no snapshot for a failed export');
  const db = catalogue(repo);
  assert.equal((db.prepare('SELECT count(*) AS n FROM queue').get() as { n: number }).n, queuedBefore, 'no queue entry for a failed export');
  const jobs = db.prepare(`SELECT source, result, error_code, error FROM jobs WHERE source IN ('wrong-password', 'killed', 'vendor', 'slow')`).all() as Array<{ source: string; result: string; error_code: string; error: string }>;
  db.close();
  assert.equal(jobs.length, 4);
  assert.ok(jobs.every((j) => j.result === 'failed'));
  assert.match(jobs.find((j) => j.source === 'vendor')!.error, /EXPORT-ERR: table lock timeout/, 'the export\'s stderr is in the job log');
  // the partial chunks are garbage, and nothing is broken
  const check = kuraJson<{ ok: boolean }>(['check', '--read-data'], { env });
  assert.equal(check.ok, true);
  assert.equal((await kuraAsync(['status'], { env: failing.env })).status, 1, 'status reports the failed last jobs');
});

test('mariadb: the first of two snapshots restores into a fresh database with its rows, routines and triggers', async (t) => {
  const dir = tempDir(t);
  const m = await startMariaDb(dir);
  t.after(() => m.stop());
  m.sql(
    `CREATE DATABASE kokuho;
     USE kokuho;
     CREATE TABLE insured (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL, premium INT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
     CREATE TABLE changes (id INT AUTO_INCREMENT PRIMARY KEY, insured_id INT, at DATETIME);
     CREATE TRIGGER insured_changed AFTER UPDATE ON insured FOR EACH ROW INSERT INTO changes (insured_id, at) VALUES (NEW.id, '2026-11-01 00:00:00');
     CREATE FUNCTION yearly(p INT) RETURNS INT DETERMINISTIC RETURN p * 12;
     INSERT INTO insured SELECT seq, CONCAT('被保険者', seq), 1000 + seq % 500 FROM seq_1_to_20000;`,
  );
  const pw = path.join(dir, 'maria-password');
  writeFileSync(pw, m.password + '\n', { mode: 0o600 });
  const { env } = agentYaml(dir, `  kokuho:\n    type: mariadb\n    host: 127.0.0.1\n    port: ${m.port}\n    user: kura\n    passwordFile: ${pw}\n    database: kokuho\n`);
  kuraOk(['repo', 'init'], { env });
  const state = (db: string) =>
    m.sql(
      `SET SESSION group_concat_max_len = 1073741824; SELECT COUNT(*), MD5(GROUP_CONCAT(CONCAT_WS(',', id, name, premium) ORDER BY id SEPARATOR '|')) FROM insured; SELECT COUNT(*) FROM changes;`,
      db,
    );
  const first = lines(await kuraAsync(['agent', 'run', '--json'], { env }))[0]!;
  assert.equal(first.result, 'ok', first.error?.message);
  const s1 = state('kokuho');
  m.sql(`UPDATE insured SET premium = premium + 1 WHERE id % 300 = 0; INSERT INTO insured VALUES (50001, 'new', 1);`, 'kokuho');
  const second = lines(await kuraAsync(['agent', 'run', '--json'], { env }))[0]!;
  assert.equal(second.result, 'ok');
  assert.notEqual(state('kokuho'), s1);

  const into = await kuraAsync(['restore', first.snapshot!, '--into', `mariadb://kura@127.0.0.1:${m.port}/fresh`, '--password-file', pw], { env });
  assert.equal(into.status, 0, into.stderr);
  assert.match(into.out, /^ran: mariadb --defaults-extra-file=\(host, port, user, password\) fresh$/m);
  assert.doesNotMatch(into.out + into.stderr, /maria-secret/);
  assert.equal(state('fresh'), s1);
  assert.match(m.sql(`SHOW TRIGGERS`, 'fresh'), /insured_changed/);
  assert.equal(m.sql(`SELECT yearly(10)`, 'fresh'), '120');
  const again = await kuraAsync(['restore', first.snapshot!, '--into', `mariadb://kura@127.0.0.1:${m.port}/fresh`, '--password-file', pw], { env });
  assert.equal(again.status, 73);

  // a wrong password is a failed job, no snapshot
  writeFileSync(pw, 'wrong\n');
  const bad = await kuraAsync(['agent', 'run', '--json'], { env });
  assert.equal(bad.status, 1);
  assert.match(lines(bad)[0]!.error!.message, /Access denied/);
});

test('sqlite: the online backup is consistent while a writer runs; the first snapshot restores as it was', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'app.sqlite');
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.exec('CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL)');
  const ins = db.prepare('INSERT INTO events (body) VALUES (?)');
  db.transaction(() => {
    for (let i = 0; i < 50_000; i++) ins.run(`event ${i} ${'x'.repeat(i % 200)}`);
  })();
  db.close();
  const { env } = agentYaml(dir, `  app:\n    type: sqlite\n    path: ${file}\n`);
  kuraOk(['repo', 'init'], { env });
  const first = lines(await kuraAsync(['agent', 'run', '--json'], { env }))[0]!;
  assert.equal(first.result, 'ok', first.error?.message);

  // a writer keeps inserting (in its own process) while the second backup runs
  const script = `const D=require(${JSON.stringify(path.join(process.cwd(), 'node_modules/better-sqlite3'))});const d=new D(${JSON.stringify(file)});d.pragma('busy_timeout = 5000');const s=d.prepare('INSERT INTO events (body) VALUES (?)');const end=Date.now()+4000;let n=0;while(Date.now()<end){d.transaction(()=>{for(let i=0;i<100;i++)s.run('w'+n++)})()}console.log(n)`;
  const w = (await import('node:child_process')).spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await sleep(300);
  const second = lines(await kuraAsync(['agent', 'run', '--json'], { env }))[0]!;
  assert.equal(second.result, 'ok');
  assert.equal((await exitOf(w)).code, 0);

  const out1 = path.join(dir, 'restored1.sqlite');
  const r1 = await kuraAsync(['restore', first.snapshot!, '--into', `sqlite:${out1}`], { env });
  assert.equal(r1.status, 0, r1.stderr);
  const d1 = new Database(out1, { readonly: true });
  assert.equal((d1.prepare('SELECT count(*) AS n FROM events').get() as { n: number }).n, 50_000);
  d1.close();
  const out2 = path.join(dir, 'restored2.sqlite');
  assert.equal((await kuraAsync(['restore', second.snapshot!, '--into', `sqlite:${out2}`], { env })).status, 0);
  const d2 = new Database(out2, { readonly: true });
  assert.equal(d2.pragma('integrity_check', { simple: true }), 'ok');
  const n2 = (d2.prepare('SELECT count(*) AS n, max(id) AS m FROM events').get() as { n: number; m: number });
  d2.close();
  assert.ok(n2.n > 50_000, 'the copy includes rows the writer committed before it');
  assert.equal(n2.n, n2.m, 'and no torn transaction (ids are dense)');
  assert.equal((await kuraAsync(['restore', first.snapshot!, '--into', `sqlite:${out2}`], { env })).status, 73);
  assert.equal((await kuraAsync(['restore', first.snapshot!, '--into', `sqlite:${out2}`, '--force'], { env })).status, 0);
});

test('file sources: a directory is archived in name order (tar), one file as itself; a second run of the same source waits for nobody: it is reported locked', async (t) => {
  const dir = tempDir(t);
  const data = path.join(dir, 'exports');
  mkdirSync(path.join(data, 'sub'), { recursive: true });
  writeFileSync(path.join(data, 'b.csv'), 'b\n'.repeat(1000));
  writeFileSync(path.join(data, 'a.csv'), 'a\n'.repeat(3000));
  writeFileSync(path.join(data, 'sub', 'c.dat'), Buffer.alloc(70_000, 7));
  const { env, repo } = agentYaml(
    dir,
    `  exports:\n    type: file\n    paths: [${data}]\n  one:\n    type: file\n    paths: [${path.join(data, 'a.csv')}]\n  long:\n    type: command\n    command: sh\n    args: ["-c", "sleep 5; echo done"]\n`,
  );
  kuraOk(['repo', 'init'], { env });
  const res = lines(await kuraAsync(['agent', 'run', '--json', '--source', 'exports', 'one'], { env }));
  assert.deepEqual(res.map((r) => r.result), ['ok', 'ok']);
  const tarBytes = kuraOk(['restore', res[0]!.snapshot!], { env }).stdout;
  const listing = spawnSync('tar', ['-tvf', '-'], { input: tarBytes, encoding: 'utf8' });
  assert.equal(listing.status, 0, listing.stderr);
  assert.deepEqual(
    listing.stdout.trim().split('\n').map((l) => l.split(/\s+/).pop()),
    ['exports/a.csv', 'exports/b.csv', 'exports/sub/c.dat'],
  );
  const x = path.join(dir, 'x');
  mkdirSync(x);
  assert.equal(spawnSync('tar', ['-xf', '-', '-C', x], { input: tarBytes }).status, 0);
  assert.ok(readFileSync(path.join(x, 'exports/sub/c.dat')).equals(Buffer.alloc(70_000, 7)));
  assert.equal(kuraOk(['restore', res[1]!.snapshot!], { env }).out, 'a\n'.repeat(3000));

  const a = kuraAsync(['agent', 'run', '--json', '--source', 'long'], { env });
  // the second run starts once the first holds the source (its export then runs 5 s more)
  await waitFor('the first run to hold source long', () => lockHeld(repo, 'source:long'), 30_000);
  const b = await kuraAsync(['agent', 'run', '--json', '--source', 'long'], { env });
  assert.equal(b.status, 75, b.stderr);
  assert.equal(lines(b)[0]!.result, 'locked');
  assert.equal((await a).status, 0);
});

test('on-site retention keeps what routes still have to send, then collects the space; webhooks report failures (generic, Slack, Teams) and a dead webhook is not fatal', async (t) => {
  const dir = tempDir(t);
  const got: Array<{ path: string; body: Record<string, unknown> }> = [];
  const server = createServer((req, res) => {
    let b = '';
    req.on('data', (d) => (b += d));
    req.on('end', () => {
      got.push({ path: req.url!, body: JSON.parse(b) as Record<string, unknown> });
      res.end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.after(() => server.close());
  const port = (server.address() as import('node:net').AddressInfo).port;
  const counter = path.join(dir, 'n');
  writeFileSync(counter, '0');
  const gen = `n=$(cat ${counter}); echo $((n+1)) > ${counter}; head -c 300000 /dev/urandom; echo night $n`;
  const { env, repo } = agentYaml(
    dir,
    `  local:\n    type: command\n    command: sh\n    args: ["-c", "${gen}"]\n    retention: { keepLast: 2 }\n` +
      `  shipped:\n    type: command\n    command: sh\n    args: ["-c", "head -c 100000 /dev/urandom"]\n    routes: [peer-dc]\n    retention: { keepLast: 1 }\n` +
      `  broken:\n    type: command\n    command: sh\n    args: ["-c", "echo oops >&2; exit 2"]\n`,
    `notifications:\n  webhooks:\n    - { url: "http://127.0.0.1:${port}/generic", on: [failure, success] }\n    - { url: "http://127.0.0.1:${port}/slack", format: slack }\n    - { url: "http://127.0.0.1:${port}/teams", format: teams }\n    - { url: "http://127.0.0.1:1/dead", timeout: 2s }\n`,
  );
  kuraOk(['repo', 'init'], { env });
  for (let i = 0; i < 4; i++) {
    const r = await kuraAsync(['agent', 'run', '--json'], { env });
    assert.equal(r.status, 1, 'the broken source fails every run');
    const l = new Map(lines(r).map((x) => [x.source, x]));
    assert.equal(l.get('local')!.result, 'ok');
    if (i >= 2) assert.equal(l.get('local')!.pruned, 1);
  }
  const snaps = kuraJson<Array<{ source: string }>>(['snapshots'], { env });
  assert.equal(snaps.filter((s) => s.source === 'local').length, 2, 'keepLast 2');
  assert.equal(snaps.filter((s) => s.source === 'shipped').length, 4, 'unsent snapshots are kept whatever the policy');
  const check = kuraJson<{ ok: boolean; chunksUnreferenced: number }>(['check', '--read-data'], { env });
  assert.equal(check.ok, true);
  assert.equal(check.chunksUnreferenced, 0, 'the pruned generations\' space was collected');
  void repo;

  const generic = got.filter((g) => g.path === '/generic');
  assert.equal(generic.filter((g) => g.body.event === 'backup.failed').length, 4);
  assert.equal(generic.filter((g) => g.body.event === 'backup.ok').length, 8);
  const failed = generic.find((g) => g.body.event === 'backup.failed')!.body;
  assert.equal(failed.source, 'broken');
  assert.equal(failed.tenant, 'city-a');
  assert.equal((failed.error as { code: string }).code, 'E_EXPORT_FAILED');
  const slack = got.filter((g) => g.path === '/slack');
  assert.equal(slack.length, 4, 'slack only hears of failures by default');
  assert.match(String(slack[0]!.body.text), /BACKUP FAILED: broken on .* \(tenant city-a\)\nE_EXPORT_FAILED: export command of source broken exited with status 2/);
  const teams = got.find((g) => g.path === '/teams')!.body;
  assert.equal(teams['@type'], 'MessageCard');
  assert.match(String(teams.title), /BACKUP FAILED: broken/);
});

test('agent daemon: runs sources on their schedules, never twice at once, and stops cleanly on SIGTERM', async (t) => {
  const dir = tempDir(t);
  const { env, repo } = agentYaml(dir, `  ticker:\n    type: command\n    command: sh\n    args: ["-c", "head -c 50000 /dev/urandom; sleep 2.5; echo end"]\n    schedule: "* * * * * *"\n`, `agent:\n  shutdownGrace: 10s\n`);
  kuraOk(['repo', 'init'], { env });
  const d = spawnKura(['agent', 'daemon'], env);
  let out = '';
  d.stdout.on('data', (x) => (out += x));
  const events = () =>
    out
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Line);
  for (let i = 0; i < 150 && events().filter((e) => e.result === 'ok').length < 2; i++) await sleep(100);
  assert.ok(events().filter((e) => e.result === 'ok').length >= 2, out);
  assert.ok(events().some((e) => e.result === 'skipped' && /still going/.test(e.reason ?? '')), 'overlapping ticks are reported, not doubled');
  // stop it in the middle of a run
  await sleep(800);
  const t0 = Date.now();
  d.kill('SIGTERM');
  const { code } = await exitOf(d);
  assert.equal(code, 0);
  assert.ok(Date.now() - t0 < 10_000, 'stopped within the grace period');
  const db = catalogue(repo);
  const running = (db.prepare(`SELECT count(*) AS n FROM jobs WHERE result = 'running'`).get() as { n: number }).n;
  const oks = (db.prepare(`SELECT count(*) AS n FROM jobs WHERE result = 'ok'`).get() as { n: number }).n;
  db.close();
  assert.equal(running, 0, 'no job is left running');
  assert.equal(kuraJson<Array<{ id: string }>>(['snapshots'], { env }).length, oks, 'a snapshot for each successful job, none for the stopped one');
  assert.equal(kuraJson<{ ok: boolean }>(['check', '--read-data'], { env }).ok, true);
  assert.equal(kura(['agent', 'daemon'], { env: { KURA_CONFIG: agentYaml(tempDir(t), `  x:\n    type: command\n    command: "true"\n`).cfg } }).status, 78, 'no schedule: a config error');
});

test('agent run with a wrong passphrase: the export (already started while the key was derived) is stopped, no snapshot, exit 77', async (t) => {
  const dir = tempDir(t);
  const pidFile = path.join(dir, 'export.pid');
  const { env, repo } = agentYaml(dir, `  endless:\n    type: command\n    command: sh\n    args: ["-c", "echo $$ > ${pidFile}; exec yes kura-row"]\n  second:\n    type: command\n    command: sh\n    args: ["-c", "echo never"]\n`);
  kuraOk(['repo', 'init'], { env });
  const r = await kuraAsync(['agent', 'run', '--json'], { env: { ...env, KURA_PASSPHRASE: 'not the passphrase' } });
  assert.equal(r.status, 77, r.stderr);
  assert.match(r.stderr, /E_KEY_WRONG/);
  const out = lines(r);
  assert.deepEqual(
    out.filter((l) => l.source).map((l) => [l.source, l.result, l.error?.code]),
    [['endless', 'failed', 'E_KEY_WRONG']],
    'one source line, then it stops: the key fails every source alike',
  );
  assert.equal(out.at(-1)!.error?.code, 'E_KEY_WRONG', 'and the run ends with the key error');
  assert.equal((catalogue(repo).prepare('SELECT count(*) AS n FROM snapshots').get() as { n: number }).n, 0);
  // the export had started (that is the point of deferring the key) and was stopped with it
  const pid = Number(readFileSync(pidFile, 'utf8'));
  await waitFor('the export to be gone', () => {
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  }, 10_000);
  // and with the right passphrase the same run works
  const ok = await kuraAsync(['agent', 'run', '--json', '--source', 'second'], { env });
  assert.equal(ok.status, 0, ok.stderr);
  // a missing passphrase is said before anything starts
  const none = await kuraAsync(['agent', 'run', '--json'], { env: { ...env, KURA_PASSPHRASE: '' } });
  assert.equal(none.status, 77);
  assert.match(none.stderr, /E_KEY_MISSING/);
});
