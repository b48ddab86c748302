import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { startWorker } from '../sea/worker.js';
import { KuraError } from '../errors.js';
import type { ChunkPlaces, SealBases, SealRequest, SealResponse } from './seal-worker.js';

const transferable = (b: ArrayBufferLike): ArrayBuffer[] => (b instanceof ArrayBuffer ? [b] : []);

export interface SealKeys {
  dataKey: Buffer;
  idKey: Buffer;
}

/**
 * How many seal workers a machine of `cores` runs: one core is left to the main thread and the
 * chunking worker, at most 8. Each seal worker is a V8 isolate with its compression contexts and
 * buffers, 40-50 MB of peak RSS. Measured on 2 cores, one worker against two: first backups in the
 * same time (OLTP 490 MB 1.36-1.53 s against 1.40-1.87 s, municipal 168 MB 1.37-1.51 s against
 * 1.33-1.58 s) at 145 and 162 MB instead of 172 and 211 MB; a night of deltas 10 % slower (2.7 s
 * against 2.5 s) at 191 MB instead of 230 MB.
 */
export function sealWorkers(cores: number): number {
  return Math.max(1, Math.min(cores - 1, 8));
}

/**
 * Requests a worker holds at once: while one batch's pack is encoded on the worker's thread, the
 * addon's threads compress and seal the next batch's whole chunks (seal-whole.ts). With one, they
 * waited for each other: a first backup took longer than with the worker's own zstd.
 */
const REQUESTS_PER_WORKER = 2;

/**
 * Worker threads that compress and encrypt batches of new chunks into packs while the main
 * thread chunks, hashes and deduplicates; batches of 4 MiB amortise the message cost. A worker
 * makes a batch's deltas itself (reading their bases) and hands its whole chunks to the native
 * addon, which seals them on two threads of libuv's pool (seal-whole.ts); without the addon it
 * seals them itself. The pack goes back to the main thread, which stores it (backup.ts): on a
 * local disk too, a worker writing its own pack (temp file, fdatasync, rename) held its thread
 * that long, and handed back a 300 MB first backup of data that does not compress took 2.07 s
 * instead of 2.60 s (100 MB at 4 KiB chunks 1.57 s instead of 1.80 s; medians of 7 and 5).
 */
export class SealPool {
  private readonly workers: Worker[] = [];
  /** a worker once for each request it may take more (REQUESTS_PER_WORKER at most) */
  private readonly idle: Worker[] = [];
  private readonly waiting: Array<{ req: SealRequest; resolve: (r: SealResponse) => void; reject: (e: Error) => void }> = [];
  /** by request seq */
  private readonly running = new Map<number, { w: Worker; resolve: (r: SealResponse) => void; reject: (e: Error) => void }>();
  private seq = 0;
  /** buffers of packs handed back and stored, for the workers to build the next ones in */
  private readonly packBuffers: SharedArrayBuffer[] = [];

  private keyed = false;

  /**
   * Workers start at once; with `dataKey` null they wait for setKey(), so their start-up
   * overlaps the key derivation (scrypt) of the repository. `directRoot`: a local store's
   * directory, which the workers read delta bases from themselves.
   */
  constructor(keys: SealKeys | null, directRoot: string | null, size = sealWorkers(availableParallelism())) {
    for (let i = 0; i < size; i++) {
      const w = startWorker(new URL('./seal-worker.js', import.meta.url), { workerData: { directRoot } });
      w.on('message', (res: SealResponse) => this.done(w, res));
      w.on('error', (err) => this.fail(w, err));
      this.workers.push(w);
      for (let r = 0; r < REQUESTS_PER_WORKER; r++) this.idle.push(w);
    }
    if (keys) this.setKey(keys);
  }

  /** The data key seals; the ID key verifies the base chunks of deltas as they are opened. */
  setKey(keys: SealKeys): void {
    for (const w of this.workers) w.postMessage({ key: new Uint8Array(keys.dataKey), idKey: new Uint8Array(keys.idKey) });
    this.keyed = true;
    this.pump();
  }

  /** A pack's buffer (SealResponse.pack) whose upload is over: the next pack may be built in it. */
  recycle(buf: SharedArrayBuffer): void {
    if (this.packBuffers.length < this.workers.length * 4) this.packBuffers.push(buf);
  }

  get size(): number {
    return this.workers.length;
  }

  /** Requests the workers hold at once. */
  get slots(): number {
    return this.workers.length * REQUESTS_PER_WORKER;
  }

  /**
   * `data`: a SharedArrayBuffer (not copied; the caller leaves it alone until the answer) or an
   * ArrayBuffer (transferred); `elsewhere`: chunks that lie in other shared buffers, left alone
   * till the answer as well. The pack comes back in the answer (`sha256`: with its SHA-256).
   */
  seal(level: number, data: ArrayBufferLike, offsets: Uint32Array, ids: ArrayBuffer, bases: SealBases | null = null, elsewhere: ChunkPlaces | null = null, how: { sha256?: boolean } = {}): Promise<SealResponse> {
    const req: SealRequest = { seq: this.seq++, level, data, offsets, elsewhere, ids, bases, sha256: how.sha256 ?? false, out: null };
    return new Promise((resolve, reject) => {
      this.waiting.push({ req, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.keyed && this.idle.length > 0 && this.waiting.length > 0) {
      const w = this.idle.shift()!;
      const job = this.waiting.shift()!;
      this.running.set(job.req.seq, { ...job, w });
      // a pack is built in the buffer of one stored before
      job.req.out = this.packBuffers.pop() ?? null;
      w.postMessage(job.req, [...transferable(job.req.data), job.req.ids as ArrayBuffer]);
    }
  }

  private done(w: Worker, res: SealResponse): void {
    const job = this.running.get(res.seq);
    this.running.delete(res.seq);
    this.idle.push(w);
    if (job) {
      if (res.error) job.reject(new KuraError('E_IO', `storing new chunks failed: ${res.error} (check disk space and permissions, then rerun)`));
      else job.resolve(res);
    }
    this.pump();
  }

  private fail(w: Worker, err: Error): void {
    for (const [seq, job] of this.running) {
      if (job.w !== w) continue;
      this.running.delete(seq);
      job.reject(new KuraError('E_INTERNAL', `compression worker crashed: ${err.message}`));
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
