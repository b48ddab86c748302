/**
 * bench/restore: the ways an operator gets a night back, timed side by side on the same
 * repository: from the local repository to a file (`--to`, written under a temporary name,
 * fsynced and renamed) and to standard output redirected to a file (no fsync, as restic's `dump`
 * and `borg extract --stdout` write); from the vault over SSH (`--from`, the relay having shipped
 * every night); and into PostgreSQL (`--into`), beside PostgreSQL's own ingest of the same dump
 * (`psql -f` of the restored file into a fresh database: the floor `--into` can reach).
 *
 *   npm run bench:restore [-- --dumps DIR --runs 3 --chunk-avg BYTES]
 *
 * DIR holds the nights as day1.sql, day2.sql, … (plain pg_dump output, as `npm run bench:daily --
 * --save-dumps DIR` leaves them); without --dumps this bench makes them with bench/daily's OLTP
 * workload (`--workload`, `--days`, `--scale` are passed on). Every night is backed up by
 * `kura backup --file` into one repository (the repository's defaults, or chunks of `--chunk-avg`
 * bytes on average), so the last night is a chain of deltas like a production one. Prints JSON lines: one per way (median seconds of
 * --runs, each run, peak RSS in MiB from GNU time, MiB/s), then a summary with the ratios the
 * targets name (`--from` to local, `--into` to psql alone).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KURA, ROOT } from '../test/support/cli.js';
import { startPostgres } from '../test/support/db.js';
import { agentConfig, sshKey, startVault } from '../test/support/vault.js';
import { measurer, needCommands, type Run } from './measure.js';

const argv = process.argv;
const arg = (name: string, def: string) => {
  const i = argv.indexOf(`--${name}`);
  return i > 0 ? argv[i + 1]! : def;
};
const RUNS = Number(arg('runs', '3'));
const chunkAvg = argv.includes('--chunk-avg') ? ['--chunk-avg', arg('chunk-avg', '')] : [];
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
needCommands('bench/restore', [
  ['/usr/bin/time', 'time'],
  ['psql', 'postgresql-client-15'],
  ['ssh-keygen', 'openssh-client'],
]);

const dir = mkdtempSync(path.join(tmpdir(), 'kura-bench-restore-'));
const measured = measurer(path.join(dir, 'rss'));
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;

let dumps = arg('dumps', '');
if (!dumps) {
  dumps = path.join(dir, 'dumps');
  mkdirSync(dumps);
  const pass = ['workload', 'days', 'scale'].flatMap((k) => (argv.includes(`--${k}`) ? [`--${k}`, arg(k, '')] : []));
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist/bench/daily.js'), '--workload', 'oltp', '--days', '5', ...pass, '--kura-avg', '262144', '--save-dumps', dumps], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`bench/daily (making the dumps) exited ${r.status}`);
}
const nights = readdirSync(dumps)
  .filter((f) => /^day\d+\.sql$/.test(f))
  .sort((a, b) => Number(a.slice(3, -4)) - Number(b.slice(3, -4)))
  .map((f) => path.join(dumps, f));
if (nights.length === 0) throw new Error(`${dumps} holds no day<N>.sql`);
const last = nights.at(-1)!;
const bytes = statSync(last).size;

const pg = await startPostgres(dir);
const key = sshKey(dir, 'relay');
const vault = await startVault(dir, `    default:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
try {
  const env = { KURA_PASSPHRASE: 'bench', KURA_LOG_LEVEL: 'warn', KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private, tenant: 'default' }) };
  measured(process.execPath, [KURA, 'repo', 'init'], env);
  let id = '';
  for (const night of nights) {
    const r = spawnSync(process.execPath, [KURA, 'backup', '--name', 'juki', '--file', night, '--route', 'peer-dc', '--json', ...chunkAvg], { env: { ...process.env, ...env }, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`kura backup ${night}: ${r.stderr}`);
    id = (JSON.parse(r.stdout) as { id: string }).id;
  }
  const relay = measured(process.execPath, [KURA, 'relay', 'once'], env);
  emit({ bench: 'restore-setup', nights: nights.length, bytes, chunkAvg: chunkAvg[1] ?? 'default', relaySeconds: +relay.seconds.toFixed(2) });

  const out = path.join(dir, 'restored.sql');
  writeFileSync(path.join(dir, 'pgpw'), pg.password + '\n', { mode: 0o600 });
  const pgEnv = { PGPASSWORD: pg.password };
  let db = 0;
  const ways: Array<{ way: string; run: () => Run; check: () => void }> = [
    { way: 'local-to-file', run: () => measured(process.execPath, [KURA, 'restore', id, '--to', out], env), check: () => sameSize(out) },
    { way: 'local-stdout', run: () => measured('bash', ['-o', 'pipefail', '-c', `'${process.execPath}' '${KURA}' restore ${id} > '${out}'`], env), check: () => sameSize(out) },
    { way: 'from-vault-to-file', run: () => measured(process.execPath, [KURA, 'restore', '--from', 'peer-dc', id, '--to', out], env), check: () => sameSize(out) },
    { way: 'from-vault-stdout', run: () => measured('bash', ['-o', 'pipefail', '-c', `'${process.execPath}' '${KURA}' restore --from peer-dc ${id} > '${out}'`], env), check: () => sameSize(out) },
    {
      way: 'into-postgres',
      run: () => {
        pg.psql('postgres', `CREATE DATABASE into${++db}`);
        return measured(process.execPath, [KURA, 'restore', id, '--into', pg.uri(`into${db}`), '--password-file', path.join(dir, 'pgpw')], env);
      },
      check: () => rowsMatch(`into${db}`),
    },
    {
      way: 'psql-alone',
      run: () => {
        pg.psql('postgres', `CREATE DATABASE psql${++db}`);
        return measured('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '--single-transaction', `--dbname=${pg.uri(`psql${db}`)}`, '-f', last], pgEnv);
      },
      check: () => rowsMatch(`psql${db}`),
    },
  ];
  let firstRows: string | null = null;
  function sameSize(f: string): void {
    if (statSync(f).size !== bytes) throw new Error(`${f} is ${statSync(f).size} bytes, the last night ${bytes}`);
    rmSync(f);
  }
  /** the restored database has the tables and rows of the dump (the first one checked sets them) */
  function rowsMatch(name: string): void {
    const rows = pg.psql(name, "SELECT string_agg(relname || '=' || n_live_tup, ',' ORDER BY relname) FROM pg_stat_user_tables");
    const counts = pg.psql(name, "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'");
    if (!counts) throw new Error(`${name} holds no tables after the restore`);
    firstRows ??= counts;
    if (counts !== firstRows) throw new Error(`${name} holds ${counts}, not ${firstRows} (${rows})`);
    pg.psql('postgres', `DROP DATABASE ${name}`);
  }
  const seconds: Record<string, number> = {};
  for (const w of ways) {
    const runs: Run[] = [];
    for (let i = 0; i < RUNS; i++) {
      runs.push(w.run());
      w.check();
    }
    seconds[w.way] = median(runs.map((r) => r.seconds));
    emit({
      bench: 'restore',
      way: w.way,
      seconds: +seconds[w.way]!.toFixed(2),
      runs: runs.map((r) => +r.seconds.toFixed(2)),
      rssMiB: Math.max(...runs.map((r) => r.rssMiB)),
      MiBps: +(bytes / 2 ** 20 / seconds[w.way]!).toFixed(1),
    });
  }
  const ratio = (a: string, b: string) => +(seconds[a]! / seconds[b]!).toFixed(2);
  emit({
    bench: 'restore-summary',
    bytes,
    'from-vault-vs-local-to-file': ratio('from-vault-to-file', 'local-to-file'),
    'from-vault-vs-local-stdout': ratio('from-vault-stdout', 'local-stdout'),
    'into-postgres-vs-psql-alone': ratio('into-postgres', 'psql-alone'),
    'to-file-vs-stdout': ratio('local-to-file', 'local-stdout'),
  });
} finally {
  await vault.stop();
  await pg.stop();
  rmSync(dir, { recursive: true, force: true });
}
