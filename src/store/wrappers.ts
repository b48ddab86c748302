import { KuraError } from '../errors.js';
import { log } from '../log.js';
import type { LocalDisk, PutHints, StoreBackend, StoreStat } from './backend.js';

/**
 * Cross-cutting behaviour as wrappers implementing StoreBackend (restic's internal/backend/retry,
 * limiter, logger): a backend stays a plain translation of the interface to its medium, and
 * these stack on any of them. openStore() builds withRetry(withAccounting(backend)), so every
 * request that reaches the medium is counted, retries included.
 */
abstract class Wrapper implements StoreBackend {
  constructor(protected readonly inner: StoreBackend) {}
  get location(): string {
    return this.inner.location;
  }
  get local(): LocalDisk | undefined {
    return this.inner.local;
  }
  close(): void {
    this.inner.close?.();
  }
  abstract get(name: string): Promise<Buffer | null>;
  abstract getRange(name: string, offset: number, length: number): Promise<Buffer | null>;
  abstract getRanges(name: string, ranges: ReadonlyArray<{ offset: number; length: number }>, into?: Buffer): Promise<Buffer[] | null>;
  abstract putIfAbsent(name: string, data: Uint8Array): Promise<boolean>;
  abstract put(name: string, data: Uint8Array | readonly Uint8Array[], hints?: PutHints): Promise<void>;
  abstract replace(name: string, data: Uint8Array): Promise<void>;
  abstract list(prefix: string): AsyncIterable<string>;
  abstract listWithSizes(prefix: string): AsyncIterable<{ name: string; size: number }>;
  abstract delete(name: string): Promise<void>;
  abstract stat(name: string): Promise<StoreStat | null>;
  abstract sync(): Promise<void>;
}

export interface RetryPolicy {
  /** tries in all, the first included */
  attempts: number;
  /** first back-off; doubles per try up to capMs (with ±25 % jitter) */
  baseMs: number;
  capMs: number;
  /** called before each retry (metrics) */
  onRetry?: (op: string, error: KuraError) => void;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 6, baseMs: 200, capMs: 5_000 };

function retryable(e: unknown): e is KuraError {
  return e instanceof KuraError && e.code === 'E_IO' && e.details?.retryable === true;
}

/**
 * Retries what a backend marks retryable (5xx, SlowDown, timeouts, refused or reset
 * connections) with capped exponential back-off; anything else, and the last failure, goes up as
 * it came, an E_IO that says how often it was tried. Safe because every operation is idempotent:
 * a create that landed before its answer was lost is found on the retry (put: the same bytes
 * are there; putIfAbsent: see below).
 */
export class RetryingStore extends Wrapper {
  constructor(inner: StoreBackend, private readonly policy: RetryPolicy = DEFAULT_RETRY) {
    super(inner);
  }

  private async retry<T>(op: string, name: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        if (!retryable(e) || attempt >= this.policy.attempts) {
          if (retryable(e)) {
            throw new KuraError('E_IO', `${e.message} (tried ${attempt} times; check that ${this.location} is reachable and healthy)`, { ...e.details, attempts: attempt }, { cause: e });
          }
          throw e;
        }
        this.policy.onRetry?.(op, e);
        const backoff = Math.min(this.policy.capMs, this.policy.baseMs * 2 ** (attempt - 1)) * (0.75 + Math.random() / 2);
        log().warn({ op, name, attempt, backoffMs: Math.round(backoff), err: e.message }, 'store request failed; retrying');
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  get(name: string) {
    return this.retry('get', name, () => this.inner.get(name));
  }
  getRange(name: string, offset: number, length: number) {
    return this.retry('get', name, () => this.inner.getRange(name, offset, length));
  }
  getRanges(name: string, ranges: ReadonlyArray<{ offset: number; length: number }>, into?: Buffer) {
    return this.retry('get', name, () => this.inner.getRanges(name, ranges, into));
  }
  async putIfAbsent(name: string, data: Uint8Array): Promise<boolean> {
    // a create whose answer was lost may have landed: a refusal on a retry is ours when the
    // object holds our bytes
    let tried = false;
    return this.retry('put', name, async () => {
      const again = tried;
      tried = true;
      const created = await this.inner.putIfAbsent(name, data);
      if (created || !again) return created;
      const there = await this.inner.get(name);
      return there !== null && Buffer.compare(there, data) === 0;
    });
  }
  put(name: string, data: Uint8Array | readonly Uint8Array[], hints?: PutHints) {
    return this.retry('put', name, () => this.inner.put(name, data, hints));
  }
  replace(name: string, data: Uint8Array) {
    return this.retry('put', name, () => this.inner.replace(name, data));
  }
  async *list(prefix: string): AsyncIterable<string> {
    // a listing that fails midway starts again; names are collected first so none is yielded twice
    const names = await this.retry('list', prefix, async () => {
      const out: string[] = [];
      for await (const n of this.inner.list(prefix)) out.push(n);
      return out;
    });
    yield* names;
  }
  async *listWithSizes(prefix: string): AsyncIterable<{ name: string; size: number }> {
    const objects = await this.retry('list', prefix, async () => {
      const out: Array<{ name: string; size: number }> = [];
      for await (const o of this.inner.listWithSizes(prefix)) out.push(o);
      return out;
    });
    yield* objects;
  }
  delete(name: string) {
    return this.retry('delete', name, () => this.inner.delete(name));
  }
  stat(name: string) {
    return this.retry('stat', name, () => this.inner.stat(name));
  }
  sync() {
    return this.retry('sync', '', () => this.inner.sync());
  }
}

export type StoreOp = 'get' | 'put' | 'list' | 'delete' | 'stat';

/** Requests, bytes and failures of one store, by operation; rendered on /metrics. */
export class StoreCounters {
  readonly requests = new Map<StoreOp, number>();
  readonly failures = new Map<StoreOp, number>();
  readonly retries = new Map<string, number>();
  bytesRead = 0;
  bytesWritten = 0;

  count(op: StoreOp, ok: boolean): void {
    this.requests.set(op, (this.requests.get(op) ?? 0) + 1);
    if (!ok) this.failures.set(op, (this.failures.get(op) ?? 0) + 1);
  }

  snapshot(): { requests: Record<string, number>; failures: Record<string, number>; retries: Record<string, number>; bytesRead: number; bytesWritten: number } {
    return {
      requests: Object.fromEntries(this.requests),
      failures: Object.fromEntries(this.failures),
      retries: Object.fromEntries(this.retries),
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
    };
  }
}

/** Counters of every store this process opened, by store kind ("fs", "s3"). */
const allCounters = new Map<string, StoreCounters>();

export function storeCounters(kind: string): StoreCounters {
  let c = allCounters.get(kind);
  if (!c) allCounters.set(kind, (c = new StoreCounters()));
  return c;
}

/** Prometheus text of every store's counters (appended to a process's /metrics). */
export function renderStoreMetrics(): string {
  const out: string[] = [];
  const block = (name: string, help: string, rows: string[]) => out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`, ...rows);
  const rows = (pick: (c: StoreCounters) => Map<string, number>, metric: string, label: string) =>
    [...allCounters].flatMap(([kind, c]) => [...pick(c)].map(([k, v]) => `${metric}{backend="${kind}",${label}="${k}"} ${v}`));
  block('kura_store_requests_total', 'Requests sent to the storage backend, by operation', rows((c) => c.requests, 'kura_store_requests_total', 'op'));
  block('kura_store_request_failures_total', 'Storage requests that failed, by operation', rows((c) => c.failures, 'kura_store_request_failures_total', 'op'));
  block('kura_store_retries_total', 'Storage requests tried again after a transient failure', rows((c) => c.retries, 'kura_store_retries_total', 'op'));
  block('kura_store_read_bytes_total', 'Bytes read from the storage backend', [...allCounters].map(([k, c]) => `kura_store_read_bytes_total{backend="${k}"} ${c.bytesRead}`));
  block('kura_store_written_bytes_total', 'Bytes written to the storage backend', [...allCounters].map(([k, c]) => `kura_store_written_bytes_total{backend="${k}"} ${c.bytesWritten}`));
  return out.join('\n') + '\n';
}

function sizeOf(data: Uint8Array | readonly Uint8Array[]): number {
  if (data instanceof Uint8Array) return data.length;
  let n = 0;
  for (const d of data) n += d.length;
  return n;
}

/** Counts each request that reaches the backend, and the bytes it moved. */
export class AccountingStore extends Wrapper {
  constructor(inner: StoreBackend, readonly counters: StoreCounters) {
    super(inner);
  }

  private async count<T>(op: StoreOp, fn: () => Promise<T>, bytesOf?: (r: T) => number): Promise<T> {
    try {
      const r = await fn();
      this.counters.count(op, true);
      if (bytesOf) this.counters.bytesRead += bytesOf(r);
      return r;
    } catch (e) {
      this.counters.count(op, false);
      throw e;
    }
  }

  get(name: string) {
    return this.count('get', () => this.inner.get(name), (b) => b?.length ?? 0);
  }
  getRange(name: string, offset: number, length: number) {
    return this.count('get', () => this.inner.getRange(name, offset, length), (b) => b?.length ?? 0);
  }
  getRanges(name: string, ranges: ReadonlyArray<{ offset: number; length: number }>, into?: Buffer) {
    return this.count('get', () => this.inner.getRanges(name, ranges, into), (bs) => (bs ?? []).reduce((n, b) => n + b.length, 0));
  }
  async putIfAbsent(name: string, data: Uint8Array) {
    const created = await this.count('put', () => this.inner.putIfAbsent(name, data));
    if (created) this.counters.bytesWritten += data.length;
    return created;
  }
  async put(name: string, data: Uint8Array | readonly Uint8Array[], hints?: PutHints) {
    await this.count('put', () => this.inner.put(name, data, hints));
    this.counters.bytesWritten += sizeOf(data);
  }
  async replace(name: string, data: Uint8Array) {
    await this.count('put', () => this.inner.replace(name, data));
    this.counters.bytesWritten += data.length;
  }
  async *list(prefix: string): AsyncIterable<string> {
    let ok = false;
    try {
      yield* this.inner.list(prefix);
      ok = true;
    } finally {
      this.counters.count('list', ok);
    }
  }
  async *listWithSizes(prefix: string): AsyncIterable<{ name: string; size: number }> {
    let ok = false;
    try {
      yield* this.inner.listWithSizes(prefix);
      ok = true;
    } finally {
      this.counters.count('list', ok);
    }
  }
  delete(name: string) {
    return this.count('delete', () => this.inner.delete(name));
  }
  stat(name: string) {
    return this.count('stat', () => this.inner.stat(name));
  }
  sync() {
    return this.inner.sync();
  }
}

export function withRetry(inner: StoreBackend, policy?: RetryPolicy): StoreBackend {
  return new RetryingStore(inner, policy);
}

export function withAccounting(inner: StoreBackend, counters: StoreCounters): StoreBackend {
  return new AccountingStore(inner, counters);
}
