import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import Database from 'better-sqlite3';
import { KuraError } from '../errors.js';
import { Tail } from '../agent/spawn.js';
import { mariadbDefaultsFile, pgpassFile, redactUri, splitPgUri } from '../agent/sources.js';
import { restoreToFile, type RestoreResult } from './restore.js';

/**
 * `kura restore SNAPSHOT --into TARGET`: rebuild a database from a snapshot of its export.
 * - postgres://… or postgresql://…: psql for a plain dump, pg_restore for a custom-format one
 *   (told apart by the dump's first bytes), each in one transaction;
 * - mariadb://… or mysql://…: the mariadb client;
 * - sqlite:PATH: the database file, written beside PATH and renamed when complete.
 * A target that already holds tables is refused unless `force`. Passwords come from the URI or
 * a password file and go to the client through a private options file, never its arguments.
 */
export interface IntoOptions {
  force: boolean;
  passwordFile?: string | undefined;
  /** the client programs, for installations where they are not on PATH */
  psql?: string;
  pgRestore?: string;
  mariadb?: string;
}

export interface IntoResult {
  result: RestoreResult;
  target: string;
  commands: string[];
}

type Target = { kind: 'postgres'; uri: string; password: string | null; shown: string } | { kind: 'mariadb'; host: string; port: number; user: string | undefined; password: string | null; database: string; shown: string } | { kind: 'sqlite'; path: string; shown: string };

export function parseTarget(t: string): Target {
  if (/^postgres(ql)?:\/\//i.test(t)) {
    const { uri, password } = splitPgUri(t);
    return { kind: 'postgres', uri, password, shown: redactUri(t) };
  }
  if (/^(mariadb|mysql):\/\//i.test(t)) {
    const u = new URL(t);
    const database = decodeURIComponent(u.pathname.replace(/^\//, ''));
    if (!database) throw new KuraError('E_USAGE', `--into ${redactUri(t)} names no database (mariadb://user@host:port/database)`);
    return { kind: 'mariadb', host: u.hostname || '127.0.0.1', port: Number(u.port || 3306), user: u.username ? decodeURIComponent(u.username) : undefined, password: u.password ? decodeURIComponent(u.password) : null, database, shown: redactUri(t) };
  }
  if (t.startsWith('sqlite:')) {
    const p = t.slice('sqlite:'.length).replace(/^\/\/(?=\/)/, '');
    if (!p) throw new KuraError('E_USAGE', '--into sqlite:PATH needs a path');
    return { kind: 'sqlite', path: p, shown: t };
  }
  throw new KuraError('E_USAGE', `--into ${redactUri(t)}: give postgresql://…, mariadb://… or sqlite:PATH`);
}

/** Run a client to completion; its stdout, or a coded error with its stderr. */
function runClient(cmd: string, args: string[], env: Record<string, string>, what: string, input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    const err = new Tail(16 << 10);
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => reject(new KuraError('E_RESTORE_FAILED', `${what}: cannot run ${cmd}: ${e.message} (is it installed?)`)));
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new KuraError('E_RESTORE_FAILED', `${what}: ${cmd} exited with status ${code}: ${err.text().slice(-2000)}`))));
    child.stdin.end(input ?? '');
  });
}

/** A Writable that starts the loading client on the first bytes (which tell the dump format). */
class ClientSink extends Writable {
  private child: ReturnType<typeof spawn> | null = null;
  private readonly stderr = new Tail(16 << 10);
  private exit: Promise<number | null> | null = null;
  command = '';

  constructor(private readonly start: (first: Buffer) => { cmd: string; args: string[]; env: Record<string, string>; shown: string }) {
    super({ highWaterMark: 1 << 20 });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (!this.child) {
      const s = this.start(chunk);
      this.command = s.shown;
      const child = spawn(s.cmd, s.args, { env: { ...process.env, ...s.env }, stdio: ['pipe', 'ignore', 'pipe'] });
      this.child = child;
      child.stderr!.on('data', (d: Buffer) => this.stderr.push(d));
      child.stdin!.on('error', () => {}); // a client that died is reported by its exit status
      this.exit = new Promise((resolve) => {
        child.on('error', () => resolve(-1));
        child.on('close', (code) => resolve(code));
      });
    }
    // done once the pipe has taken the bytes (the restore reuses a written chunk's memory); a
    // client that died is reported by its exit status, not here
    this.child.stdin!.write(chunk, () => cb());
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.child?.stdin!.end();
    cb();
  }

  /** Wait for the client; a failure carries its stderr. */
  async finished(what: string, next: string): Promise<void> {
    const code = await (this.exit ?? Promise.resolve(0));
    if (code !== 0) throw new KuraError('E_RESTORE_FAILED', `${what}: ${this.command} exited with status ${code}: ${this.stderr.text().slice(-3000)}\n${next}`);
  }

  kill(): void {
    this.child?.kill('SIGTERM');
  }
}

export async function restoreInto(targetText: string, opts: IntoOptions, run: (out: Writable) => Promise<RestoreResult>): Promise<IntoResult> {
  const target = parseTarget(targetText);
  const commands: string[] = [];
  const passwordFromFile = opts.passwordFile ? readFileSync(opts.passwordFile, 'utf8').replace(/\r?\n$/, '') : null;

  if (target.kind === 'sqlite') {
    let size = 0;
    try {
      size = statSync(target.path).size;
    } catch {
      /* absent: fine */
    }
    if (size > 0 && !opts.force) throw new KuraError('E_TARGET_NOT_EMPTY', `${target.path} already exists and is not empty; give --force to replace it`);
    const result = await restoreToFile(target.path, run);
    const db = new Database(target.path, { readonly: true, fileMustExist: true });
    try {
      const check = db.pragma('quick_check', { simple: true });
      if (check !== 'ok') throw new KuraError('E_RESTORE_FAILED', `the restored database ${target.path} fails quick_check: ${String(check)}`);
    } finally {
      db.close();
    }
    commands.push(`write ${target.path} (temporary file, fsync, rename), PRAGMA quick_check`);
    return { result, target: target.shown, commands };
  }

  const priv = mkdtempSync(path.join(tmpdir(), 'kura-restore-'));
  try {
    if (target.kind === 'postgres') {
      const psql = opts.psql ?? 'psql';
      const pgRestore = opts.pgRestore ?? 'pg_restore';
      const password = target.password ?? passwordFromFile;
      const env: Record<string, string> = password !== null ? { PGPASSFILE: pgpassFile(priv, password) } : {};
      const base = ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '--no-password', `--dbname=${target.uri}`];
      const show = (cmd: string, args: string[]) => [cmd, ...args].map(redactUri).join(' ');
      const userObjects = `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')`;
      const countArgs = [...base, '-At', '-c', userObjects];
      commands.push(show(psql, countArgs));
      const n = Number((await runClient(psql, countArgs, env, `checking ${target.shown}`)).trim());
      if (n > 0 && !opts.force) throw new KuraError('E_TARGET_NOT_EMPTY', `${target.shown} already holds ${n} table(s), view(s) or sequence(s); restore into an empty database, or give --force to replace its contents`);
      const sink = new ClientSink((first) => {
        if (first.subarray(0, 5).toString('latin1') === 'PGDMP') {
          const args = ['--no-password', '--single-transaction', '--exit-on-error', '--no-owner', ...(n > 0 ? ['--clean', '--if-exists'] : []), `--dbname=${target.uri}`];
          return { cmd: pgRestore, args, env, shown: show(pgRestore, args) };
        }
        // a plain dump: one transaction, so a failure leaves the database as it was
        const dropAll = n > 0 ? ['-c', `DO $$DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%' LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); END LOOP; CREATE SCHEMA public; END$$;`] : [];
        const args = [...base, '--single-transaction', ...dropAll, '-f', '-'];
        return { cmd: psql, args, env, shown: show(psql, args).replace(/DO \$\$.*END\$\$;/, '"(drop every schema, recreate public)"') };
      });
      const result = await runInto(sink, run, target.shown, 'It ran in one transaction, so the database is as it was: fix the cause above and run the restore again.');
      commands.push(sink.command);
      return { result, target: target.shown, commands };
    }

    // mariadb
    const client = opts.mariadb ?? 'mariadb';
    const password = target.password ?? passwordFromFile;
    const defaults = mariadbDefaultsFile(priv, { host: target.host, port: target.port, user: target.user, password });
    const d = `--defaults-extra-file=${defaults}`;
    const shownD = '--defaults-extra-file=(host, port, user, password)';
    const db = target.database.replace(/`/g, '``');
    const count = ['-N', '-B', '-e', `CREATE DATABASE IF NOT EXISTS \`${db}\`; SELECT count(*) FROM information_schema.tables WHERE table_schema = '${target.database.replace(/'/g, "''")}'`];
    commands.push([client, shownD, ...count].join(' '));
    const n = Number((await runClient(client, [d, ...count], {}, `checking ${target.shown}`)).trim().split('\n').pop());
    if (n > 0 && !opts.force) throw new KuraError('E_TARGET_NOT_EMPTY', `${target.shown} already holds ${n} table(s); restore into an empty database, or give --force (the dump drops and recreates its own tables)`);
    const sink = new ClientSink(() => ({ cmd: client, args: [d, target.database], env: {}, shown: [client, shownD, target.database].join(' ') }));
    const result = await runInto(sink, run, target.shown, 'The mariadb client does not roll back: the database may be partly restored. Fix the cause above, then run the restore again with --force (the dump recreates its tables).');
    commands.push(sink.command);
    return { result, target: target.shown, commands };
  } finally {
    rmSync(priv, { recursive: true, force: true });
  }
}

async function runInto(sink: ClientSink, run: (out: Writable) => Promise<RestoreResult>, shown: string, next: string): Promise<RestoreResult> {
  let result: RestoreResult;
  try {
    result = await run(sink);
  } catch (e) {
    // a damaged snapshot: stop the client before it commits (psql/pg_restore roll back)
    sink.kill();
    throw e;
  }
  await new Promise<void>((resolve, reject) => sink.end((e?: Error | null) => (e ? reject(e) : resolve())));
  await sink.finished(`restoring into ${shown}`, next);
  return result;
}
