import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { KuraError } from '../errors.js';
import { Tail } from './spawn.js';

/**
 * A PostgreSQL export in primary-key order (`order: primary-key` on a postgres source).
 *
 * pg_dump writes each table in heap order: an updated row leaves a hole where it was and
 * reappears at the table's end, so a day's updates break the dump in two places each. In
 * primary-key order an unchanged row keeps its place and an updated row changes only itself
 * (bench/daily measures the difference). The output is a plain dump psql restores:
 *   pg_dump --section=pre-data | per table COPY … FROM stdin in key order | sequence values |
 *   pg_dump --section=post-data
 * all from one snapshot: a psql session opens a REPEATABLE READ transaction and exports its
 * snapshot, both pg_dump runs use it (--snapshot), and the session itself copies the tables.
 * Tables without a primary key are copied in heap order; large objects are not exported in this
 * mode (use the default order).
 */
export interface OrderedDumpOptions {
  pgDump: string;
  psql: string;
  /** --dbname value (URI without password) */
  target: string;
  env: Record<string, string>;
  signal?: AbortSignal | undefined;
  timeoutMs?: number | undefined;
  what: string;
}

class PsqlSession {
  private readonly child: ChildProcessWithoutNullStreams;
  private buf: Buffer = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  private ended = false;
  readonly stderr = new Tail(32 << 10);

  constructor(o: OrderedDumpOptions) {
    this.child = spawn(o.psql, ['-X', '-q', '-A', '-t', '--no-password', '-v', 'ON_ERROR_STOP=1', `--dbname=${o.target}`], { env: { ...process.env, ...o.env }, stdio: 'pipe' });
    this.child.stdout.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.wake?.();
    });
    this.child.stderr.on('data', (d: Buffer) => this.stderr.push(d));
    this.child.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
    this.child.on('error', () => {
      this.ended = true;
      this.wake?.();
    });
    this.child.stdin.on('error', () => {});
  }

  send(sql: string): void {
    this.child.stdin.write(sql.endsWith('\n') ? sql : sql + '\n');
  }

  /** Output up to a sentinel line, as it arrives. */
  async *until(sentinel: string): AsyncGenerator<Buffer> {
    const mark = Buffer.from(`${sentinel}\n`);
    for (;;) {
      const at = this.buf.indexOf(mark);
      if (at >= 0) {
        const out = this.buf.subarray(0, at);
        this.buf = this.buf.subarray(at + mark.length);
        if (out.length) yield out;
        return;
      }
      // keep back what could be the start of the sentinel
      const keep = mark.length - 1;
      if (this.buf.length > keep + (1 << 20)) {
        const out = this.buf.subarray(0, this.buf.length - keep);
        this.buf = this.buf.subarray(this.buf.length - keep);
        yield out;
        continue;
      }
      if (this.ended) throw new KuraError('E_EXPORT_FAILED', `psql ended early: ${this.stderr.text().slice(-2000)}`, { stderr: this.stderr.text() });
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
  }

  async text(sql: string): Promise<string> {
    const s = `KURA-${randomBytes(8).toString('hex')}`;
    this.send(`${sql}\n\\echo ${s}`);
    const parts: Buffer[] = [];
    for await (const b of this.until(s)) parts.push(b);
    return Buffer.concat(parts).toString('utf8');
  }

  close(): void {
    this.child.stdin.end();
    if (!this.ended) setTimeout(() => this.child.kill('SIGTERM'), 2000).unref();
  }

  kill(): void {
    this.child.kill('SIGTERM');
  }
}

async function* pgDumpSection(o: OrderedDumpOptions, section: string, snapshot: string): AsyncGenerator<Buffer> {
  const child = spawn(o.pgDump, ['--no-password', '--format=plain', `--section=${section}`, `--snapshot=${snapshot}`, `--dbname=${o.target}`], { env: { ...process.env, ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const err = new Tail(32 << 10);
  child.stderr.on('data', (d: Buffer) => err.push(d));
  const exited = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  for await (const d of child.stdout as AsyncIterable<Buffer>) yield d;
  const code = await exited;
  if (code !== 0) throw new KuraError('E_EXPORT_FAILED', `${o.what}: pg_dump --section=${section} exited with status ${code}: ${err.text().slice(-2000)}`, { stderr: err.text() });
}

const TABLES = `
SELECT format('%I.%I', n.nspname, c.relname) || E'\\t' ||
       (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') || E'\\t' ||
       coalesce((SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY array_position(i.indkey::int2[], a.attnum))
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                 WHERE i.indrelid = c.oid AND i.indisprimary), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname;`;

const SEQUENCES = `
SELECT format('SELECT pg_catalog.setval(%L, %s, %s);', format('%I.%I', schemaname, sequencename), coalesce(last_value, start_value), (last_value IS NOT NULL)::text)
FROM pg_sequences WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY schemaname, sequencename;`;

export function orderedDump(o: OrderedDumpOptions): { stream: AsyncIterable<Buffer>; stderr: () => string } {
  let session: PsqlSession | null = null;
  async function* run(): AsyncGenerator<Buffer> {
    const s = new PsqlSession(o);
    session = s;
    let timedOut = false;
    const timer = o.timeoutMs
      ? setTimeout(() => {
          timedOut = true;
          s.kill();
        }, o.timeoutMs)
      : null;
    const onAbort = () => s.kill();
    o.signal?.addEventListener('abort', onAbort);
    try {
      const snapshot = (await s.text('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();')).trim();
      if (!/^[0-9A-F-]+$/i.test(snapshot)) throw new KuraError('E_EXPORT_FAILED', `${o.what}: could not export a snapshot (${snapshot.slice(0, 200)})`);
      const tables = (await s.text(TABLES))
        .split('\n')
        .filter(Boolean)
        .map((l) => {
          const [name, cols, pk] = l.split('\t');
          return { name: name!, cols: cols!, pk: pk ?? '' };
        });
      yield* pgDumpSection(o, 'pre-data', snapshot);
      yield Buffer.from('\n--\n-- Data in primary-key order (kura)\n--\n\n');
      for (const t of tables) {
        yield Buffer.from(`COPY ${t.name} (${t.cols}) FROM stdin;\n`);
        const sentinel = `KURA-${randomBytes(8).toString('hex')}`;
        s.send(`COPY (SELECT ${t.cols} FROM ONLY ${t.name}${t.pk ? ` ORDER BY ${t.pk}` : ''}) TO STDOUT;\n\\echo ${sentinel}`);
        yield* s.until(sentinel);
        yield Buffer.from('\\.\n\n');
      }
      const seqs = (await s.text(SEQUENCES)).trim();
      if (seqs) yield Buffer.from(seqs + '\n\n');
      yield* pgDumpSection(o, 'post-data', snapshot);
      await s.text('COMMIT;');
      if (timer) clearTimeout(timer);
      yield Buffer.from('-- kura primary-key order dump complete\n');
    } catch (e) {
      if (o.signal?.aborted) throw new KuraError('E_EXPORT_FAILED', `${o.what} was stopped: kura is shutting down`);
      if (timedOut) throw new KuraError('E_EXPORT_TIMEOUT', `${o.what} ran longer than its timeout (${Math.round(o.timeoutMs! / 1000)} s) and was stopped`);
      throw e instanceof KuraError ? new KuraError(e.code, `${o.what}: ${e.message}`, e.details) : e;
    } finally {
      if (timer) clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      s.close();
    }
  }
  return { stream: run(), stderr: () => (session as PsqlSession | null)?.stderr.text() ?? '' };
}
