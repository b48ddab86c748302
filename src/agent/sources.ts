import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { KuraError } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import type { SourceConfig } from '../config/schema.js';
import { readFileBlocks } from '../archiver/input.js';
import { exportStream } from './spawn.js';
import { orderedDump } from './pg-ordered.js';
import { collectEntries, tarStream } from './tar.js';

/**
 * One source's export as a stream of bytes, plus the facts about how it was made (stored in the
 * snapshot's encrypted private part) and a cleanup for temporary files. The stream fails, and so
 * no snapshot is written, whenever the export did not complete.
 */
export interface OpenedSource {
  stream: AsyncIterable<Buffer>;
  facts: Record<string, unknown>;
  stderr: () => string;
  cleanup: () => void;
  /** the output of an export process, a fresh buffer per piece: worth reading ahead */
  process?: boolean;
}

export interface SourceContext {
  signal?: AbortSignal | undefined;
}

function readSecret(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (e) {
    throw new KuraError('E_CONFIG', `cannot read ${what} ${file}: ${(e as Error).message}`);
  }
}

/** A private directory for credentials files, removed by cleanup. */
function privateDir(): { dir: string; remove: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'kura-export-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A libpq URI with its password removed, and the password (if any). */
export function splitPgUri(uri: string): { uri: string; password: string | null } {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw new KuraError('E_CONFIG', `"${redactUri(uri)}" is not a connection URI (postgresql://user@host:port/database)`);
  }
  const password = u.password ? decodeURIComponent(u.password) : null;
  u.password = '';
  return { uri: u.toString(), password };
}

export function redactUri(uri: string): string {
  return uri.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@/]*@/i, '$1:***@');
}

/** pgpass line escaping: ":" and "\" are escaped with "\". */
const pgpassEscape = (s: string) => s.replace(/([\\:])/g, '\\$1');

/** Write a pgpass file holding `password` for any host/db; returns its path. */
export function pgpassFile(dir: string, password: string): string {
  const f = path.join(dir, 'pgpass');
  writeFileSync(f, `*:*:*:*:${pgpassEscape(password)}\n`, { mode: 0o600 });
  return f;
}

/** A MariaDB client options file (the password never appears in argv). */
export function mariadbDefaultsFile(dir: string, o: { host?: string | undefined; port?: number | undefined; user?: string | undefined; password?: string | null | undefined }): string {
  const f = path.join(dir, 'my.cnf');
  const q = (v: string) => `"${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
  const lines = ['[client]'];
  if (o.host) lines.push(`host=${q(o.host)}`);
  if (o.port) lines.push(`port=${o.port}`);
  if (o.user) lines.push(`user=${q(o.user)}`);
  if (o.password) lines.push(`password=${q(o.password)}`);
  // TCP to the given host even when it is "localhost"
  if (o.host) lines.push('protocol=TCP');
  writeFileSync(f, lines.join('\n') + '\n', { mode: 0o600 });
  return f;
}

export async function openSource(name: string, src: SourceConfig, ctx: SourceContext = {}): Promise<OpenedSource> {
  const timeoutMs = src.timeout ? parseDuration(src.timeout)! : undefined;
  switch (src.type) {
    case 'postgres': {
      const priv = privateDir();
      try {
        const env: Record<string, string> = {};
        const args: string[] = ['--no-password'];
        if (src.format === 'custom') args.push('--format=custom', '--compress=0');
        else args.push('--format=plain');
        let target = src.database ?? '';
        let password: string | null = null;
        if (src.uri) {
          const split = splitPgUri(src.uri);
          if (split.password) throw new KuraError('E_CONFIG', `sources.${name}.uri contains a password; put it in passwordFile (or a pgpass/service file) so it never shows in logs or process titles`);
          target = split.uri;
          if (src.database) {
            const u = new URL(split.uri);
            u.pathname = `/${encodeURIComponent(src.database)}`;
            target = u.toString();
          }
        }
        if (src.passwordFile) password = readSecret(src.passwordFile, `sources.${name}.passwordFile`);
        if (password !== null) env.PGPASSFILE = pgpassFile(priv.dir, password);
        if (target) args.push(`--dbname=${target}`);
        if (src.order === 'primary-key') {
          if (src.format !== 'plain') throw new KuraError('E_CONFIG', `sources.${name}: order: primary-key needs format: plain`);
          const dump = orderedDump({ pgDump: src.pgDump, psql: src.psql, target, env, signal: ctx.signal, timeoutMs, what: `primary-key ordered dump of source ${name}` });
          return { stream: dump.stream, stderr: dump.stderr, facts: { type: 'postgres', format: 'plain', order: 'primary-key', target: redactUri(target) }, cleanup: priv.remove, process: true };
        }
        const exp = exportStream({
          command: src.pgDump,
          args,
          env,
          timeoutMs,
          signal: ctx.signal,
          what: `pg_dump of source ${name}`,
          checkEnd: src.format === 'plain' ? (tail) => (tail.toString('utf8').includes('PostgreSQL database dump complete') ? null : 'the dump ends early (no "PostgreSQL database dump complete" line)') : undefined,
        });
        return { stream: exp.stream, stderr: exp.stderr, facts: { type: 'postgres', format: src.format, command: [src.pgDump, ...args].map(redactUri).join(' ') }, cleanup: priv.remove, process: true };
      } catch (e) {
        priv.remove();
        throw e;
      }
    }
    case 'mariadb':
    case 'mysql': {
      const priv = privateDir();
      const password = src.passwordFile ? readSecret(src.passwordFile, `sources.${name}.passwordFile`) : null;
      const defaults = mariadbDefaultsFile(priv.dir, { host: src.host, port: src.port, user: src.user, password });
      const args = [`--defaults-extra-file=${defaults}`, '--single-transaction', '--routines', '--triggers', '--events', '--hex-blob', '--skip-dump-date', src.database];
      const exp = exportStream({
        command: src.dumpCommand,
        args,
        timeoutMs,
        signal: ctx.signal,
        what: `${path.basename(src.dumpCommand)} of source ${name}`,
        checkEnd: (tail) => (tail.toString('utf8').includes('-- Dump completed') ? null : 'the dump ends early (no "-- Dump completed" line)'),
      });
      const shown = [src.dumpCommand, '--defaults-extra-file=(host, port, user, password)', ...args.slice(1)].join(' ');
      return { stream: exp.stream, stderr: exp.stderr, facts: { type: src.type, command: shown, host: src.host, port: src.port, database: src.database }, cleanup: priv.remove, process: true };
    }
    case 'sqlite': {
      // the online backup API copies a consistent state while writers go on
      const priv = privateDir();
      try {
        try {
          if (!statSync(src.path).isFile()) throw new Error('not a file');
        } catch (e) {
          throw new KuraError('E_INPUT', `source ${name}: cannot open SQLite database ${src.path}: ${(e as Error).message}`);
        }
        const copy = path.join(priv.dir, 'copy.sqlite');
        const db = new Database(src.path, { readonly: true, fileMustExist: true, timeout: 30_000 });
        const started = Date.now();
        try {
          await db.backup(copy);
        } catch (e) {
          throw new KuraError('E_EXPORT_FAILED', `source ${name}: the SQLite online backup of ${src.path} failed: ${(e as Error).message}`);
        } finally {
          db.close();
        }
        if (timeoutMs && Date.now() - started > timeoutMs) throw new KuraError('E_EXPORT_TIMEOUT', `source ${name}: the SQLite online backup took longer than its timeout`);
        // a copy made by the backup API may still be in WAL mode; it is a single self-contained file
        const out = new Database(copy);
        out.pragma('journal_mode = DELETE');
        out.close();
        return { stream: readFileBlocks(copy), stderr: () => '', facts: { type: 'sqlite', path: src.path, method: 'online backup API' }, cleanup: priv.remove };
      } catch (e) {
        priv.remove();
        throw e;
      }
    }
    case 'command': {
      const exp = exportStream({ command: src.command, args: src.args, env: src.env, cwd: src.cwd, timeoutMs, signal: ctx.signal, what: `export command of source ${name}` });
      return { stream: exp.stream, stderr: exp.stderr, facts: { type: 'command', command: [src.command, ...src.args].join(' ') }, cleanup: () => {}, process: true };
    }
    case 'file': {
      const entries = await collectEntries(src.paths);
      const single = src.paths.length === 1 && entries.length === 1 && entries[0]!.abs === path.resolve(src.paths[0]!);
      if (single) return { stream: readFileBlocks(entries[0]!.abs), stderr: () => '', facts: { type: 'file', files: [entries[0]!.abs], container: 'none' }, cleanup: () => {} };
      return { stream: tarStream(entries), stderr: () => '', facts: { type: 'file', files: entries.length, container: 'ustar' }, cleanup: () => {} };
    }
  }
}
