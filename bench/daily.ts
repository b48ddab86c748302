/**
 * bench/daily: a municipal database through N days of realistic churn, backed up every day by
 * kura and, side by side on the same dump files, by restic and Borg (Debian packages, their
 * defaults). Prints JSON lines per day and tool: seconds, new bytes stored (growth of the
 * repository directory, so snapshot metadata and indexes are included) and repository size;
 * then a summary over the churned days.
 *
 *   npm run bench:daily [-- --workload municipal|oltp --scale 1 --days 7 --heavy 5 --kura-avg 262144,65536 --save-dumps DIR]
 *
 * Every backup and restore runs under GNU time (Debian package `time`) for its peak RSS
 * (`rssMiB`, the largest process of the command). Borg runs twice: its default (lz4, "borg-lz4")
 * and `--compression zstd,3` ("borg-zstd3"). For kura each line also splits the repository's
 * growth by part (`parts`: packs, snapshots, the catalogue, the list cache), since the catalogue
 * and cache are local, rebuildable caches like restic's and Borg's (which live outside the
 * repositories those tools are measured by); `storeBytes` is what a relay ships to the vault.
 *
 * The database (PostgreSQL 15, started here): residents, households, tax assessments (3 years),
 * national health insurance, payments (mostly appended) and an audit log (appended). Each day
 * ≈0.2 % of residents change (moves, status), 0.1 % of insurance premiums, new payments and
 * audit lines are appended, some old audit lines are deleted; day `--heavy` is the annual tax
 * recalculation (every assessment of the current year is updated). After the churn the bench runs
 * VACUUM ANALYZE and a checkpoint (and waits for any autovacuum worker): the night's batch and its
 * maintenance are over before the backup window, and no tool is timed against them.
 *
 * --kura-avg lists the kura chunk averages to compare (min = avg/4, max = avg*4; default 262144,
 * the repository default, and 65536, the default before it);
 * --kura-compression sets kura's zstd level (default: the repository's, 3).
 * --stream also times the whole nightly job as it runs in production, export included:
 * `kura agent run` (kura runs pg_dump itself and reads its output as it comes; "kura-agent-stream")
 * and `pg_dump | kura backup --stdin` ("kura-stdin-stream", the same shape as the peers') against
 * `pg_dump | borg create … -` and `pg_dump | restic backup --stdin` (tools "-stream").
 * The kura-ordered line is kura (first --kura-avg) on a dump in primary-key order, as the
 * postgres source writes it with `order: primary-key`, made from the same database state.
 *
 * `--workload oltp` is the other kind of night: one highly compressible table (pgbench's
 * accounts: 5 million rows × scale, blank filler, ≈100 B a row, ≈100× under zstd) where ≈1 % of
 * the rows, picked by a hash of the row and the day, are updated each night (so the changes are
 * spread evenly over the dump and, in heap order, move to its end), plus appended history rows.
 * `--heavy` does not apply to it.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KURA } from '../test/support/cli.js';
import { startPostgres } from '../test/support/db.js';
import { orderedDump } from '../src/agent/pg-ordered.js';
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { measurer, needCommands, type Run } from './measure.js';

const argv = process.argv;
const arg = (name: string, def: string) => {
  const i = argv.indexOf(`--${name}`);
  return i > 0 ? argv[i + 1]! : def;
};
const SCALE = Number(arg('scale', '1'));
const DAYS = Number(arg('days', '7'));
const HEAVY = Number(arg('heavy', '5'));
const KURA_AVGS = arg('kura-avg', '262144,65536').split(',').map(Number);
const KURA_LEVEL = arg('kura-compression', '');
const STREAM = argv.includes('--stream');
const WORKLOAD = arg('workload', 'municipal');
if (WORKLOAD !== 'municipal' && WORKLOAD !== 'oltp') throw new Error(`--workload is municipal or oltp, not ${WORKLOAD}`);
const SAVE_DUMPS = arg('save-dumps', ''); // keep each day's dump as DIR/day<N>.sql, to replay the days by hand
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');

needCommands('bench/daily', [
  ['restic', 'restic'],
  ['borg', 'borgbackup'],
  ['pg_dump', 'postgresql-client-15'],
  ['/usr/bin/time', 'time'],
]);

function dirBytes(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) n += statSync(path.join(e.parentPath, e.name)).size;
  }
  return n;
}

/** A kura repository's bytes by part: what the store holds and the local caches beside it. */
function kuraParts(repo: string): Record<string, number> {
  const parts: Record<string, number> = { packs: 0, snapshots: 0, catalogue: 0, cache: 0, other: 0 };
  for (const e of readdirSync(repo, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const rel = path.relative(repo, path.join(e.parentPath, e.name));
    const size = statSync(path.join(e.parentPath, e.name)).size;
    const part = rel.startsWith('packs/') ? 'packs' : rel.startsWith('snapshots/') ? 'snapshots' : rel.startsWith('catalogue.sqlite') ? 'catalogue' : rel.startsWith('cache/') ? 'cache' : 'other';
    parts[part]! += size;
  }
  return parts;
}

const dir = mkdtempSync(path.join(tmpdir(), 'kura-bench-daily-'));
const measured = measurer(path.join(dir, 'rss'));
const timed = (cmd: string, args: string[], env: Record<string, string> = {}, input?: string): number => measured(cmd, args, env, input).seconds;
const pg = await startPostgres(dir);
try {
  const sql = (q: string) => pg.psql('juki', q);
  pg.psql('postgres', 'CREATE DATABASE juki');
  const R = Math.round(200_000 * SCALE);
  const ACCOUNTS = Math.round(5_000_000 * SCALE);
  const t0 = performance.now();
  if (WORKLOAD === 'municipal') {
    sql(`
      CREATE TABLE households (id int PRIMARY KEY, district text NOT NULL, address text NOT NULL, created date NOT NULL);
      CREATE TABLE residents (id int PRIMARY KEY, household_id int NOT NULL REFERENCES households(id), family_name text NOT NULL, given_name text NOT NULL,
        kana text NOT NULL, birth date NOT NULL, gender char(1) NOT NULL, status text NOT NULL, moved_in date, updated timestamptz NOT NULL);
      CREATE TABLE tax_assessments (resident_id int NOT NULL, fiscal_year int NOT NULL, income bigint NOT NULL, deductions bigint NOT NULL, tax bigint NOT NULL,
        PRIMARY KEY (resident_id, fiscal_year));
      CREATE TABLE insurance (id int PRIMARY KEY, resident_id int NOT NULL, plan text NOT NULL, premium int NOT NULL, since date NOT NULL);
      CREATE TABLE payments (id bigserial PRIMARY KEY, resident_id int NOT NULL, kind text NOT NULL, amount bigint NOT NULL, paid_on date NOT NULL, channel text NOT NULL);
      CREATE TABLE audit_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL, actor text NOT NULL, action text NOT NULL, target text NOT NULL);
      INSERT INTO households SELECT i, '第' || (1 + i % 40) || '地区', '緑町' || (i % 97) || '丁目' || (i % 31) || '番' || (i % 17) || '号', date '1990-01-01' + (i % 12000)
        FROM generate_series(1, ${Math.round(R * 0.4)}) i;
      INSERT INTO residents SELECT i, 1 + (i * 7) % ${Math.round(R * 0.4)}, (ARRAY['佐藤','鈴木','高橋','田中','伊藤','渡辺','山本','中村','小林','加藤'])[1 + i % 10],
        (ARRAY['太郎','花子','一郎','美咲','健太','陽子','翔','結衣'])[1 + (i / 10) % 8], 'ｶﾅ' || md5(i::text)::varchar(12), date '1930-01-01' + (i * 13) % 33000,
        (ARRAY['M','F'])[1 + i % 2], 'resident', date '1990-01-01' + (i * 3) % 12000, timestamptz '2026-01-01' + (i % 1000) * interval '1 hour'
        FROM generate_series(1, ${R}) i;
      INSERT INTO tax_assessments SELECT r, y, 2000000 + (r::bigint * 7919) % 8000000, 380000 + (r % 7) * 10000, (2000000 + (r::bigint * 7919) % 8000000) / 10
        FROM generate_series(1, ${R}) r, generate_series(2024, 2026) y;
      INSERT INTO insurance SELECT i, i, (ARRAY['一般','退職','後期高齢'])[1 + i % 3], 3000 + (i * 31) % 20000, date '2000-04-01' + (i % 9000)
        FROM generate_series(1, ${Math.round(R * 0.75)}) i;
      INSERT INTO payments (resident_id, kind, amount, paid_on, channel) SELECT 1 + (i * 13) % ${R}, (ARRAY['住民税','国保','固定資産税','軽自動車税'])[1 + i % 4],
        1000 + (i * 37) % 90000, date '2024-04-01' + (i / 3000), (ARRAY['窓口','口座振替','コンビニ','スマホ決済'])[1 + (i / 7) % 4]
        FROM generate_series(1, ${R * 5}) i;
      INSERT INTO audit_log (at, actor, action, target) SELECT timestamptz '2025-01-01' + i * interval '20 seconds', 'clerk' || (i % 150),
        (ARRAY['view','update','print','export'])[1 + i % 4], 'resident/' || (1 + (i * 17) % ${R}) FROM generate_series(1, ${R * 5}) i;
    `);
    sql('VACUUM ANALYZE');
  } else {
    sql(`
      CREATE TABLE accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84));
      CREATE TABLE history (tid int NOT NULL, bid int NOT NULL, aid int NOT NULL, delta int NOT NULL, mtime timestamp NOT NULL, filler char(22));
      INSERT INTO accounts SELECT i, 1 + (i - 1) / 100000, 0, '' FROM generate_series(1, ${ACCOUNTS}) i;
    `);
    sql('VACUUM ANALYZE');
  }
  emit({ bench: 'daily-setup', workload: WORKLOAD, ...(WORKLOAD === 'oltp' ? { accounts: ACCOUNTS } : { residents: R }), seconds: +((performance.now() - t0) / 1000).toFixed(1) });

  // the tools' repositories
  const dumpDir = path.join(dir, 'dump');
  mkdirSync(dumpDir);
  const dumpFile = path.join(dumpDir, 'juki.sql');
  const kuraRepos = KURA_AVGS.map((avg) => ({ avg, repo: path.join(dir, `kura-${avg}`) }));
  const kuraEnv = { KURA_PASSPHRASE: 'bench', KURA_LOG_LEVEL: 'warn' };
  for (const k of kuraRepos) {
    timed(process.execPath, [KURA, 'repo', 'init', '--repo', k.repo, '--chunk-min', String(k.avg / 4), '--chunk-avg', String(k.avg), '--chunk-max', String(k.avg * 4)], kuraEnv);
  }
  const orderedFile = path.join(dumpDir, 'juki-ordered.sql');
  const orderedRepo = path.join(dir, 'kura-ordered');
  timed(process.execPath, [KURA, 'repo', 'init', '--repo', orderedRepo], kuraEnv);
  const pgpass = path.join(dir, 'pgpass');
  (await import('node:fs')).writeFileSync(pgpass, `*:*:*:*:${pg.password.replace(/([\\:])/g, '\\$1')}\n`, { mode: 0o600 });
  const writeOrdered = async () => {
    const t = performance.now();
    const out = createWriteStream(orderedFile);
    for await (const b of orderedDump({ pgDump: 'pg_dump', psql: 'psql', target: pg.uri('juki'), env: { PGPASSFILE: pgpass }, what: 'ordered dump' }).stream) {
      if (!out.write(b)) await once(out, 'drain');
    }
    out.end();
    await once(out, 'finish');
    return (performance.now() - t) / 1000;
  };
  const resticRepo = path.join(dir, 'restic');
  const resticEnv = { RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: path.join(dir, 'restic-cache') };
  timed('restic', ['-r', resticRepo, 'init'], resticEnv);
  const borgEnv = { BORG_PASSPHRASE: 'bench', BORG_BASE_DIR: path.join(dir, 'borg-base') };
  // Borg's default compression (lz4) and zstd at restic's and kura's level
  const borgRepos = [
    { tool: 'borg-lz4', repo: path.join(dir, 'borg'), compression: 'lz4' },
    { tool: 'borg-zstd3', repo: path.join(dir, 'borg-zstd3'), compression: 'zstd,3' },
  ];
  for (const b of borgRepos) timed('borg', ['init', '--encryption=repokey', b.repo], borgEnv);

  // production-style: the export streamed into each tool
  const streamDir = path.join(dir, 'stream');
  mkdirSync(streamDir);
  const agentRepo = path.join(streamDir, 'kura');
  const agentCfg = path.join(streamDir, 'kura.yaml');
  const pgPwFile = path.join(streamDir, 'pgpw');
  const stdinRepo = path.join(streamDir, 'kura-stdin');
  const resticStream = path.join(streamDir, 'restic');
  const borgStream = path.join(streamDir, 'borg');
  if (STREAM) {
    const fs = await import('node:fs');
    fs.writeFileSync(pgPwFile, pg.password + '\n', { mode: 0o600 });
    fs.writeFileSync(agentCfg, `repository:\n  path: ${agentRepo}\nsources:\n  juki:\n    type: postgres\n    uri: ${pg.uri('juki')}\n    passwordFile: ${pgPwFile}\n`);
    timed(process.execPath, [KURA, 'repo', 'init', '--config', agentCfg], kuraEnv);
    timed(process.execPath, [KURA, 'repo', 'init', '--repo', stdinRepo], kuraEnv);
    timed('restic', ['-r', resticStream, 'init'], resticEnv);
    timed('borg', ['init', '--encryption=repokey', borgStream], borgEnv);
  }
  const pgDumpCmd = `pg_dump --no-password --format=plain --dbname='${pg.uri('juki')}'`;

  const totals = new Map<string, { bytes: number; seconds: number; days: number; storeBytes: number }>();
  const firstNight = new Map<string, { seconds: number; repoBytes: number; rssMiB: number }>();
  const peakRss = new Map<string, number>();
  const partsBefore = new Map<string, Record<string, number>>();
  const record = (day: number, tool: string, run: Run | number, before: number, repo: string) => {
    const { seconds, rssMiB } = typeof run === 'number' ? { seconds: run, rssMiB: null } : run;
    const after = dirBytes(repo);
    const line: Record<string, unknown> = { bench: 'daily', workload: WORKLOAD, day, tool, seconds: +seconds.toFixed(2), newBytes: after - before, repoBytes: after, rssMiB };
    if (tool.startsWith('kura')) {
      const parts = kuraParts(repo);
      const was = partsBefore.get(tool) ?? {};
      line.parts = Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, v - (was[k] ?? 0)]));
      line.storeBytes = parts.packs! + parts.snapshots! + parts.other! - ((was.packs ?? 0) + (was.snapshots ?? 0) + (was.other ?? 0));
      partsBefore.set(tool, parts);
    }
    emit(line);
    if (rssMiB !== null) peakRss.set(tool, Math.max(peakRss.get(tool) ?? 0, rssMiB));
    if (day === 1) firstNight.set(tool, { seconds: +seconds.toFixed(2), repoBytes: after, rssMiB: rssMiB ?? 0 });
    if (day > 1) {
      const t = totals.get(tool) ?? { bytes: 0, seconds: 0, days: 0, storeBytes: 0 };
      t.bytes += after - before;
      t.storeBytes += typeof line.storeBytes === 'number' ? line.storeBytes : after - before;
      t.seconds += seconds;
      t.days++;
      totals.set(tool, t);
    }
  };

  const settle = () => {
    sql('VACUUM ANALYZE');
    sql('CHECKPOINT');
    for (let i = 0; i < 120; i++) {
      if (sql(`SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'`) === '0') break;
      spawnSync('sleep', ['0.5']);
    }
  };
  for (let day = 1; day <= DAYS; day++) {
    if (day > 1) {
      const tc = performance.now();
      if (WORKLOAD === 'municipal') {
        sql(`
          UPDATE residents SET status = (ARRAY['moved','resident','deceased','abroad'])[1 + (id + ${day}) % 4], updated = now()
            WHERE (id * 2654435761::bigint + ${day * 7919}) % 1000 < 2;
          UPDATE insurance SET premium = premium + 100 WHERE (id * 40503::bigint + ${day * 31}) % 1000 < 1;
          INSERT INTO households SELECT (SELECT max(id) FROM households) + i, '第1地区', '新町' || i || '番', current_date FROM generate_series(1, ${Math.round(20 * SCALE)}) i;
          INSERT INTO payments (resident_id, kind, amount, paid_on, channel) SELECT 1 + (i * 13 + ${day}) % ${R}, '住民税', 1000 + i % 9000, current_date, '口座振替'
            FROM generate_series(1, ${Math.round(R * 0.02)}) i;
          INSERT INTO audit_log (at, actor, action, target) SELECT now() + i * interval '1 second', 'clerk' || (i % 150), 'view', 'resident/' || (1 + (i * 31 + ${day}) % ${R})
            FROM generate_series(1, ${Math.round(R * 0.03)}) i;
          DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log ORDER BY id LIMIT ${Math.round(R * 0.01)});
          ${day === HEAVY ? 'UPDATE tax_assessments SET tax = tax + tax / 100, deductions = deductions + 1000 WHERE fiscal_year = 2026;' : ''}
        `);
      } else {
        // ≈1 % of the accounts, spread evenly by a hash of the row and the day; history appended
        sql(`
          UPDATE accounts SET abalance = abalance + (hashint4(aid + ${day}) % 5000) WHERE hashint4(aid * 7 + ${day * 1000003}) % 100 = 0;
          INSERT INTO history SELECT i, 1 + i % 50, 1 + (hashint4(i + ${day})::bigint & 2147483647) % ${ACCOUNTS}, hashint4(i) % 5000, timestamp '2026-01-01' + ${day} * interval '1 day' + i * interval '1 second', ''
            FROM generate_series(1, ${Math.round(ACCOUNTS / 100)}) i;
        `);
      }
      emit({ bench: 'daily-churn', day, heavy: WORKLOAD === 'municipal' && day === HEAVY, seconds: +((performance.now() - tc) / 1000).toFixed(1) });
      // the night's batch jobs and maintenance are over before the backup window: the churn's
      // dead rows are vacuumed (autovacuum would have, during the day) and a checkpoint written,
      // so that no tool is timed against that work (the first one after a heavy day would be)
      settle();
    }
    const dumpSeconds = timed('pg_dump', ['--no-password', '--format=plain', `--dbname=${pg.uri('juki')}`, `--file=${dumpFile}`], { PGPASSWORD: pg.password });
    emit({ bench: 'daily-dump', day, seconds: +dumpSeconds.toFixed(2), bytes: statSync(dumpFile).size });
    // the dump's pages are written out before any tool is timed: the first tool after pg_dump
    // otherwise read it while the kernel wrote it back (kura at the first --kura-avg took 15 % longer
    // a night than at the second, which read the same file after it)
    spawnSync('sync');
    if (SAVE_DUMPS) {
      mkdirSync(SAVE_DUMPS, { recursive: true });
      copyFileSync(dumpFile, path.join(SAVE_DUMPS, `day${day}.sql`));
    }
    for (const k of kuraRepos) {
      const before = dirBytes(k.repo);
      record(day, `kura-avg${k.avg}`, measured(process.execPath, [KURA, 'backup', '--repo', k.repo, '--name', 'juki', '--file', dumpFile, ...(KURA_LEVEL ? ['--compression', KURA_LEVEL] : [])], kuraEnv), before, k.repo);
    }
    {
      const orderedSeconds = await writeOrdered();
      emit({ bench: 'daily-dump-ordered', day, seconds: +orderedSeconds.toFixed(2), bytes: statSync(orderedFile).size });
      spawnSync('sync');
      const before = dirBytes(orderedRepo);
      record(day, 'kura-ordered', measured(process.execPath, [KURA, 'backup', '--repo', orderedRepo, '--name', 'juki', '--file', orderedFile, '--chunk-avg', String(KURA_AVGS[0]!), ...(KURA_LEVEL ? ['--compression', KURA_LEVEL] : [])], kuraEnv), before, orderedRepo);
    }
    {
      const before = dirBytes(resticRepo);
      record(day, 'restic', measured('restic', ['-r', resticRepo, 'backup', '--host', 'bench', dumpFile], resticEnv), before, resticRepo);
    }
    for (const b of borgRepos) {
      const before = dirBytes(b.repo);
      record(day, b.tool, measured('borg', ['create', '--compression', b.compression, `${b.repo}::day${day}`, dumpFile], borgEnv), before, b.repo);
    }
    if (STREAM) {
      let before = dirBytes(agentRepo);
      record(day, 'kura-agent-stream', timed(process.execPath, [KURA, 'agent', 'run', '--config', agentCfg], kuraEnv), before, agentRepo);
      before = dirBytes(stdinRepo);
      record(day, 'kura-stdin-stream', timed('bash', ['-o', 'pipefail', '-c', `${pgDumpCmd} | '${process.execPath}' '${KURA}' backup --repo '${stdinRepo}' --name juki --stdin --chunk-avg ${KURA_AVGS[0]}`], { ...kuraEnv, PGPASSWORD: pg.password }), before, stdinRepo);
      before = dirBytes(resticStream);
      record(day, 'restic-stream', timed('bash', ['-o', 'pipefail', '-c', `${pgDumpCmd} | restic -r ${resticStream} backup --host bench --stdin --stdin-filename juki.sql`], { ...resticEnv, PGPASSWORD: pg.password }), before, resticStream);
      before = dirBytes(borgStream);
      record(day, 'borg-stream', timed('bash', ['-o', 'pipefail', '-c', `${pgDumpCmd} | borg create --stdin-name juki.sql ${borgStream}::day${day} -`], { ...borgEnv, PGPASSWORD: pg.password }), before, borgStream);
    }
  }
  // the last night restored by each tool, the same bytes written to one file (median of 3; every
  // tool verifies what it reads: kura each chunk's tag and ID, restic blob IDs, Borg chunk IDs).
  // Each tool writes to standard output redirected to the file, as restic's `dump` and Borg's
  // `extract --stdout` do (no fsync); kura's `--to` (temporary name, fsync, rename) is timed
  // beside it as kura-avgN-to-file, and is not what the ratios compare.
  const restoreTo = path.join(dir, 'restored.sql');
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  const restores: Array<[string, () => Run]> = [
    ...kuraRepos.map((k): [string, () => Run] => [`kura-avg${k.avg}`, () => measured('bash', ['-o', 'pipefail', '-c', `${process.execPath} ${KURA} restore --repo ${k.repo} latest:juki > ${restoreTo}`], kuraEnv)]),
    ...kuraRepos.map((k): [string, () => Run] => [`kura-avg${k.avg}-to-file`, () => measured(process.execPath, [KURA, 'restore', '--repo', k.repo, 'latest:juki', '--to', restoreTo], kuraEnv)]),
    ['restic', () => measured('bash', ['-o', 'pipefail', '-c', `restic -r ${resticRepo} dump latest ${dumpFile} > ${restoreTo}`], resticEnv)],
    ...borgRepos.map((b): [string, () => Run] => [b.tool, () => measured('bash', ['-o', 'pipefail', '-c', `borg extract --stdout ${b.repo}::day${DAYS} > ${restoreTo}`], borgEnv)]),
  ];
  const restoreSeconds: Record<string, number> = {};
  const restoreRss: Record<string, number> = {};
  for (const [tool, run] of restores) {
    const runs: Run[] = [];
    for (let i = 0; i < 3; i++) {
      rmSync(restoreTo, { force: true });
      runs.push(run());
      if (statSync(restoreTo).size !== statSync(dumpFile).size) throw new Error(`${tool}: the restored file is not the size of the last dump`);
    }
    restoreSeconds[tool] = +median(runs.map((r) => r.seconds)).toFixed(2);
    restoreRss[tool] = Math.max(...runs.map((r) => r.rssMiB));
    emit({ bench: 'daily-restore', workload: WORKLOAD, day: DAYS, tool, seconds: restoreSeconds[tool], runs: runs.map((r) => +r.seconds.toFixed(2)), rssMiB: restoreRss[tool], bytes: statSync(dumpFile).size });
  }
  rmSync(restoreTo, { force: true });
  const summary: Record<string, unknown> = { bench: 'daily-summary', workload: WORKLOAD, churnedDays: DAYS - 1, restoreSeconds, restoreRssMiB: restoreRss };
  for (const [tool, t] of totals) {
    summary[tool] = { meanNewBytes: Math.round(t.bytes / t.days), meanStoreBytes: Math.round(t.storeBytes / t.days), meanSeconds: +(t.seconds / t.days).toFixed(2), backupPeakRssMiB: peakRss.get(tool), firstNight: firstNight.get(tool) };
  }
  const peerTools = ['restic', ...borgRepos.map((b) => b.tool)];
  const bestPeerBytes = Math.min(...peerTools.map((p) => totals.get(p)!.bytes));
  const fastestPeer = Math.min(...peerTools.map((p) => totals.get(p)!.seconds / totals.get(p)!.days));
  const fastestPeerRestore = Math.min(...peerTools.map((p) => restoreSeconds[p]!));
  const borgLz4First = firstNight.get('borg-lz4')!;
  for (const k of [...kuraRepos.map((r) => `kura-avg${r.avg}`), 'kura-ordered']) {
    const t = totals.get(k)!;
    summary[`${k}-vs-restic-bytes`] = +(t.bytes / totals.get('restic')!.bytes).toFixed(3);
    summary[`${k}-vs-best-peer-bytes`] = +(t.bytes / bestPeerBytes).toFixed(3);
    summary[`${k}-store-vs-best-peer-bytes`] = +(t.storeBytes / bestPeerBytes).toFixed(3);
    summary[`${k}-vs-fastest-peer-seconds`] = +(t.seconds / t.days / fastestPeer).toFixed(3);
    summary[`${k}-first-vs-borg-lz4-seconds`] = +(firstNight.get(k)!.seconds / borgLz4First.seconds).toFixed(3);
    summary[`${k}-first-vs-borg-zstd3-repo`] = +(firstNight.get(k)!.repoBytes / firstNight.get('borg-zstd3')!.repoBytes).toFixed(3);
    if (restoreSeconds[k] !== undefined) summary[`${k}-vs-fastest-peer-restore`] = +(restoreSeconds[k]! / fastestPeerRestore).toFixed(3);
    if (restoreSeconds[`${k}-to-file`] !== undefined) summary[`${k}-to-file-vs-fastest-peer-restore`] = +(restoreSeconds[`${k}-to-file`]! / fastestPeerRestore).toFixed(3);
  }
  if (STREAM) {
    const k = totals.get('kura-agent-stream')!;
    const fastest = Math.min(...['restic-stream', 'borg-stream'].map((p) => totals.get(p)!.seconds / totals.get(p)!.days));
    summary['kura-agent-stream-vs-fastest-peer-stream-seconds'] = +(k.seconds / k.days / fastest).toFixed(3);
    summary['kura-agent-stream-vs-restic-stream-bytes'] = +(k.bytes / totals.get('restic-stream')!.bytes).toFixed(3);
    const ks = totals.get('kura-stdin-stream')!;
    summary['kura-stdin-stream-vs-fastest-peer-stream-seconds'] = +(ks.seconds / ks.days / fastest).toFixed(3);
  }
  emit(summary);
} finally {
  await pg.stop();
  if (!argv.includes('--keep')) rmSync(dir, { recursive: true, force: true });
  else process.stderr.write(`kept ${dir}\n`);
}
