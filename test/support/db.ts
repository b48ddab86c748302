import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import path from 'node:path';
import { freePort } from './vault.js';
import { sleep } from './proxy.js';

const PG_BIN = '/usr/lib/postgresql/15/bin';

export interface Postgres {
  port: number;
  password: string;
  /** postgresql://postgres@127.0.0.1:PORT/DB (no password: give passwordFile or PGPASSWORD) */
  uri(db: string): string;
  psql(db: string, sql: string): string;
  stop(): Promise<void>;
}

/**
 * A real PostgreSQL 15 server in `dir`, on a free loopback port, password authentication
 * (scram-sha-256) for the superuser "postgres". initdb refuses to run as root: it runs as the
 * postgres system account, which owns the data directory.
 */
export async function startPostgres(dir: string): Promise<Postgres> {
  const root = path.join(dir, 'pg');
  mkdirSync(root, { recursive: true });
  chmodSync(dir, 0o755);
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString());
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString());
  chownSync(root, uid, gid);
  const password = 'pg-secret:with\\odd chars';
  const pwfile = path.join(root, 'pw');
  writeFileSync(pwfile, password + '\n');
  chownSync(pwfile, uid, gid);
  const asPg = (cmd: string, args: string[]) => {
    const r = spawnSync('runuser', ['-u', 'postgres', '--', cmd, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} failed: ${r.stderr}${r.stdout}`);
  };
  asPg(`${PG_BIN}/initdb`, ['-D', path.join(root, 'data'), '-U', 'postgres', '-A', 'scram-sha-256', `--pwfile=${pwfile}`, '--no-sync', '-E', 'UTF8', '--locale=C']);
  const port = await freePort();
  asPg(`${PG_BIN}/pg_ctl`, ['-D', path.join(root, 'data'), '-l', path.join(root, 'log'), '-w', '-o', `-p ${port} -k ${root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off`, 'start']);
  const env = { ...process.env, PGPASSWORD: password };
  return {
    port,
    password,
    uri: (db) => `postgresql://postgres@127.0.0.1:${port}/${db}`,
    psql: (db, sql) => {
      const r = spawnSync('psql', ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', `--dbname=postgresql://postgres@127.0.0.1:${port}/${db}`, '-c', sql], { env, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`psql: ${r.stderr}`);
      return r.stdout.trim();
    },
    stop: async () => {
      spawnSync('runuser', ['-u', 'postgres', '--', `${PG_BIN}/pg_ctl`, '-D', path.join(root, 'data'), '-m', 'immediate', 'stop']);
    },
  };
}

export interface MariaDb {
  port: number;
  user: string;
  password: string;
  sql(sql: string, db?: string): string;
  stop(): Promise<void>;
}

/** A real MariaDB server in `dir`, on a free loopback port, with a password user "kura". */
export async function startMariaDb(dir: string): Promise<MariaDb> {
  const data = path.join(dir, 'mariadb');
  mkdirSync(data, { recursive: true });
  const sock = path.join(data, 'sock');
  const r = spawnSync('mariadb-install-db', ['--no-defaults', `--datadir=${data}`, '--user=root', '--auth-root-authentication-method=socket', '--skip-test-db'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`mariadb-install-db failed: ${r.stderr}`);
  const port = await freePort();
  const child: ChildProcess = spawn(
    'mariadbd',
    ['--no-defaults', `--datadir=${data}`, '--user=root', `--port=${port}`, '--bind-address=127.0.0.1', `--socket=${sock}`, `--pid-file=${path.join(data, 'pid')}`, '--skip-log-bin', '--innodb-flush-log-at-trx-commit=0', '--skip-name-resolve'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  for (let i = 0; ; i++) {
    if (spawnSync('mariadb-admin', ['--no-defaults', `--socket=${sock}`, '-u', 'root', 'ping'], { stdio: 'ignore' }).status === 0) break;
    if (child.exitCode !== null || i > 300) throw new Error(`mariadbd did not start: ${err}`);
    await sleep(100);
  }
  const password = 'maria-secret"quote';
  const rootSql = (sql: string) => {
    const x = spawnSync('mariadb', ['--no-defaults', `--socket=${sock}`, '-u', 'root', '-e', sql], { encoding: 'utf8' });
    if (x.status !== 0) throw new Error(`mariadb: ${x.stderr}`);
  };
  rootSql(`CREATE USER 'kura'@'127.0.0.1' IDENTIFIED BY '${password.replace(/'/g, "''")}'; GRANT ALL ON *.* TO 'kura'@'127.0.0.1';`);
  return {
    port,
    user: 'kura',
    password,
    sql: (sql, db) => {
      const x = spawnSync('mariadb', ['--no-defaults', `--socket=${sock}`, '-u', 'root', '-N', '-B', ...(db ? [db] : []), '-e', sql], { encoding: 'utf8' });
      if (x.status !== 0) throw new Error(`mariadb: ${x.stderr}`);
      return x.stdout.trim();
    },
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        await once(child, 'exit');
      }
    },
  };
}
