import { hostname } from 'node:os';
import { routesForSource } from '../relay/route-policy.js';
import { routesOf } from '../relay/routes.js';
import { KuraError, isKuraError } from '../errors.js';
import type { KuraConfig, SourceConfig } from '../config/schema.js';
import { inputFailed, ReadAhead } from '../archiver/input.js';
import type { Repository } from '../repository/repository.js';
import type { GcReport } from '../gc/gc.js';
import { log } from '../log.js';
import type { Notifier } from '../notify/notifier.js';
import { jobEvent, maintenanceFailed } from '../notify/jobs.js';
import { openSource } from './sources.js';
import { chunkerParamsForAverage, databaseChunkerParams, type ChunkerParams } from '../chunker/fastcdc.js';

/** How much of an export is read ahead while the backup gets ready (it is held in memory). */
const READ_AHEAD_BYTES = 32 << 20;

export interface SourceResult {
  source: string;
  tenant: string;
  result: 'ok' | 'failed' | 'locked';
  job: number | null;
  snapshot?: string;
  logicalBytes?: number;
  newBytes?: number;
  chunks?: number;
  newChunks?: number;
  seconds: number;
  routes: string[];
  /** snapshots of this source removed by its on-site retention after the backup */
  pruned?: number;
  error?: { code: string; message: string };
  /** the export's stderr (last part), when it failed */
  stderr?: string;
}

/** The sources to run, checked against the config before anything starts. */
export function selectSources(cfg: KuraConfig, names?: readonly string[]): Array<[string, SourceConfig]> {
  const all = Object.entries(cfg.sources);
  if (all.length === 0) throw new KuraError('E_CONFIG', 'the config has no sources; add one under sources: ("kura config example" shows each type)');
  for (const n of names ?? []) if (!cfg.sources[n]) throw new KuraError('E_USAGE', `no source "${n}" in the config; known: ${all.map(([k]) => k).join(', ')}`);
  // the routes sources name were checked when the config was loaded (config/references.ts)
  return names?.length ? all.filter(([n]) => names.includes(n)) : all;
}

/**
 * One source, once: export → backup (queued for its routes in the same transaction) → job
 * record → on-site retention → notification. Never throws for the source's own failure: the
 * result says what happened. A source already running elsewhere (another `agent run`, the
 * daemon) is reported as locked, not run twice.
 */
export async function runSource(repo: Repository, cfg: KuraConfig, name: string, src: SourceConfig, opts: { signal?: AbortSignal | undefined; notifier?: Notifier | undefined; coordination?: string | undefined } = {}): Promise<SourceResult> {
  const t0 = performance.now();
  const tenant = src.tenant ?? cfg.tenant;
  // the routes that carry this source (a route's `sources` may add or leave it out)
  const base = { source: name, tenant, routes: routesForSource(name, src.routes, routesOf(cfg)) };
  const cat = repo.catalogue;
  let lock: { release: () => void };
  try {
    lock = cat.acquireLock(`source:${name}`, [`source:${name}`]);
  } catch (e) {
    if (!isKuraError(e) || e.code !== 'E_LOCKED') throw e;
    return { ...base, result: 'locked', job: null, seconds: 0, error: { code: e.code, message: e.message } };
  }
  const job = cat.ops.startJob(name, opts.coordination);
  let result: SourceResult;
  let opened: Awaited<ReturnType<typeof openSource>> | null = null;
  let ahead: ReadAhead | null = null;
  try {
    opened = await openSource(name, src, { signal: opts.signal });
    // an export process starts now and runs while the backup gets ready (bounded read-ahead),
    // and so do the chunking and compression threads
    const stream = guard(opened.stream, name);
    if (opened.process) ahead = new ReadAhead(stream, READ_AHEAD_BYTES);
    // the backup's code loads after the export has started
    const { backup, ChunkPipeline, SealPool } = await import('../archiver/backup.js');
    const pipeline = new ChunkPipeline();
    const pool = new SealPool(null, repo.store.local?.root ?? null);
    const res = await backup(repo, ahead ?? stream, {
      pool,
      pipeline,
      source: name,
      tenant,
      host: cfg.host ?? hostname(),
      tags: src.tags,
      ...(src.compression !== undefined ? { compressionLevel: src.compression } : {}),
      delta: src.delta,
      private: { export: opened.facts },
      routes: base.routes,
      chunker: chunkerFor(src, repo.catalogue.snapshots({ source: name }).at(-1)?.header),
    });
    const h = res.header;
    cat.ops.finishJob(job, { result: 'ok', snapshot: res.id, newBytes: h.newBytes });
    result = { ...base, result: 'ok', job, snapshot: res.id, logicalBytes: h.logicalBytes, newBytes: h.newBytes, chunks: h.chunkCount, newChunks: h.newChunks, seconds: res.seconds };
  } catch (e) {
    const err = withNextStep(isKuraError(e) ? e : new KuraError('E_INTERNAL', (e as Error).message), name);
    const stderr = opened?.stderr() ?? '';
    cat.ops.finishJob(job, { result: 'failed', errorCode: err.code, error: err.message + (stderr && !err.message.includes(stderr.slice(-200)) ? `\n--- export stderr ---\n${stderr.slice(-4000)}` : '') });
    result = { ...base, result: 'failed', job, seconds: (performance.now() - t0) / 1000, error: { code: err.code, message: err.message }, ...(stderr ? { stderr: stderr.slice(-4000) } : {}) };
  } finally {
    await ahead?.close();
    opened?.cleanup();
    lock.release();
  }
  if (result.result === 'ok' && src.retention) {
    try {
      const { prune } = await import('../retention/prune.js');
      const p = await prune(repo, { policyFor: () => src.retention, now: new Date(), timeZone: cfg.timezone ?? Intl.DateTimeFormat().resolvedOptions().timeZone ?? 'UTC', dryRun: false, keepUnsent: true, sources: [name] });
      result.pruned = p.removed;
    } catch (e) {
      log().warn({ source: name, err: (e as Error).message }, 'on-site retention failed; the backup itself succeeded');
      opts.notifier?.emit(maintenanceFailed(`on-site retention of ${name}`, e as KuraError, { tenant, source: name }));
    }
  }
  log()[result.result === 'ok' ? 'info' : 'error']({ source: name, job, result: result.result, snapshot: result.snapshot, code: result.error?.code }, result.error?.message ?? 'backup done');
  opts.notifier?.emit(jobEvent({ ...result, result: result.result === 'ok' ? 'ok' : 'failed', host: cfg.host ?? hostname(), stderr: result.stderr }));
  return result;
}

/** What the operator does about a failed export, said once for every kind of export. */
function withNextStep(err: KuraError, name: string): KuraError {
  const next =
    err.code === 'E_EXPORT_TIMEOUT'
      ? `no snapshot was written; raise sources.${name}.timeout if the export needs longer, then rerun "kura agent run --source ${name}"`
      : err.code === 'E_EXPORT_FAILED'
        ? `no snapshot was written; fix the cause shown by the export's stderr (also in the job record: kura status), then rerun "kura agent run --source ${name}"`
        : null;
  return next ? new KuraError(err.code, `${err.message}. ${next}`, err.details, { cause: err }) : err;
}

/** After pruning: reclaim on-site space, unless a backup is running (then the next run does it). */
export async function localGc(repo: Repository): Promise<GcReport | null> {
  try {
    const { collectGarbage } = await import('../gc/gc.js');
    return await collectGarbage(repo, { mode: 'local' });
  } catch (e) {
    if (isKuraError(e) && e.code === 'E_LOCKED') {
      log().info({}, 'on-site gc skipped: a backup is running; the next run collects');
      return null;
    }
    throw e;
  }
}

/**
 * Chunk sizes of a source: its chunkAvg; else, for a database export backed up before, the sizes
 * of its `last` snapshot's header (4 KiB was the database default until deltas found their old version by
 * how chunks end, so existing sources keep them rather than store everything anew once); else
 * the repository's (256 KiB on average by default: bench/daily measured it storing less than 4 or
 * 64 KiB chunks on both a municipal dump with clustered changes and an OLTP table with spread ones).
 */
export function chunkerFor(src: SourceConfig, last: { chunker?: ChunkerParams | undefined } | undefined): ChunkerParams | undefined {
  if (src.chunkAvg) return chunkerParamsForAverage(src.chunkAvg);
  const database = src.type === 'postgres' || src.type === 'mariadb' || src.type === 'mysql' || src.type === 'sqlite';
  if (!database || !last) return undefined;
  return last.chunker ?? databaseChunkerParams;
}

async function* guard(input: AsyncIterable<Buffer>, name: string): AsyncIterable<Buffer> {
  try {
    yield* input;
  } catch (e) {
    if (isKuraError(e)) throw e;
    throw inputFailed(`reading the export of source ${name} failed`, e);
  }
}
