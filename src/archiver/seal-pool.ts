import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { startWorker } from '../sea/worker.js';
import { KuraError } from '../errors.js';
import type { SealBases, SealRequest, SealResponse } from './seal-worker.js';

const transferable = (b: ArrayBufferLike): ArrayBuffer[] => (b instanceof ArrayBuffer ? [b] : []);

export interface SealKeys {
  dataKey: Buffer;
  idKey: Buffer;
}

/**
 * Worker threads that compress and encrypt batches of new chunks while the main thread chunks,
 * hashes and deduplicates. Measured here (2 cores): workers beat the libuv pool because zstd-napi
 * and AES-GCM are synchronous calls; batches of ~2 MiB amortise the message cost.
 */
export class SealPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly waiting: Array<{ req: SealRequest; resolve: (r: SealResponse) => void; reject: (e: Error) => void }> = [];
  private readonly running = new Map<Worker, { resolve: (r: SealResponse) => void; reject: (e: Error) => void }>();
  private seq = 0;
  /** buffers of packs handed back and uploaded, for the workers to build the next ones in (no directRoot) */
  private readonly packBuffers: SharedArrayBuffer[] = [];
  private readonly handsBack: boolean;

  private keyed = false;

  /**
   * Workers start at once; with `dataKey` null they wait for setKey(), so their start-up
   * overlaps the key derivation (scrypt) of the repository.
   */
  constructor(keys: SealKeys | null, directRoot: string | null, size = Math.max(1, Math.min(availableParallelism(), 8))) {
    this.handsBack = directRoot === null;
    for (let i = 0; i < size; i++) {
      const w = startWorker(new URL('./seal-worker.js', import.meta.url), { workerData: { directRoot } });
      w.on('message', (res: SealResponse) => this.done(w, res));
      w.on('error', (err) => this.fail(w, err));
      this.workers.push(w);
      this.idle.push(w);
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

  /** `data`: a SharedArrayBuffer (not copied; the caller leaves it alone until the answer) or an ArrayBuffer (transferred). */
  seal(level: number, data: ArrayBufferLike, offsets: Uint32Array, ids: ArrayBuffer, bases: SealBases | null = null): Promise<SealResponse> {
    const req: SealRequest = { seq: this.seq++, level, data, offsets, ids, bases, out: null };
    return new Promise((resolve, reject) => {
      this.waiting.push({ req, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.keyed && this.idle.length > 0 && this.waiting.length > 0) {
      const w = this.idle.pop()!;
      const job = this.waiting.shift()!;
      this.running.set(w, job);
      // a pack is built in the buffer of one uploaded before
      job.req.out = this.handsBack ? (this.packBuffers.pop() ?? null) : null;
      w.postMessage(job.req, [...transferable(job.req.data), job.req.ids as ArrayBuffer]);
    }
  }

  private done(w: Worker, res: SealResponse): void {
    const job = this.running.get(w);
    this.running.delete(w);
    this.idle.push(w);
    if (job) {
      if (res.error) job.reject(new KuraError('E_IO', `storing new chunks failed: ${res.error} (check disk space and permissions, then rerun)`));
      else job.resolve(res);
    }
    this.pump();
  }

  private fail(w: Worker, err: Error): void {
    const job = this.running.get(w);
    this.running.delete(w);
    job?.reject(new KuraError('E_INTERNAL', `compression worker crashed: ${err.message}`));
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
