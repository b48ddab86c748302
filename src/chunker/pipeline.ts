import type { Worker } from 'node:worker_threads';
import { Blake3Hasher } from '@napi-rs/blake-hash';
import { KuraError } from '../errors.js';
import type { ChunkerParams } from './fastcdc.js';
import { nativeAddon } from '../native.js';
import { startWorker } from '../sea/worker.js';

export interface PipelineInit {
  params: ChunkerParams;
  seed: Uint8Array;
  /** the segments: carry area (maxSize bytes) | data (SEGMENT bytes) */
  data: SharedArrayBuffer[];
  /** per segment, the IDs of its chunks (32 bytes each), written by the native addon */
  ids: SharedArrayBuffer[];
  /** the key of chunk IDs (keyed BLAKE3) */
  idKey: Uint8Array;
  /** Int32Array(1): segments posted so far (the worker hashes only when none is waiting for it) */
  posted: SharedArrayBuffer;
  /** where a segment's data starts */
  dataAt: number;
  maxChunks: number;
  /** cut and hash with the native addon (else cut in TypeScript, hashed on the main thread) */
  native: boolean;
}

export type PipelineMessage = { init: PipelineInit } | { add: { data: SharedArrayBuffer; ids: SharedArrayBuffer } } | { seg: number; len: number; finish: boolean };

export interface PipelineReply {
  seg: number;
  /** (offset, length) pairs of the chunks completed in this segment, in order */
  cuts: Uint32Array;
  /** the worker wrote the chunks' IDs too (else the main thread hashes them) */
  hashed: boolean;
  error?: string;
}

/** One segment's chunks, valid during the onSegment call only, unless it is held. */
export interface Segment {
  /** the segment's buffer (a view of its whole SharedArrayBuffer): chunk i is data[cuts[2i] .. cuts[2i] + cuts[2i+1]) */
  data: Buffer;
  cuts: Uint32Array;
  /** chunk i's ID is ids[32i .. 32i + 32) */
  ids: Buffer;
  /**
   * Keeps `data` as it is after the onSegment call, until the function returned is called (once
   * per hold); the pipeline reads on into other segments meanwhile. Call it during onSegment.
   * Null when HELD_MAX other segments are held already: the caller copies what it keeps instead.
   */
  hold(): (() => void) | null;
}

// input bytes per segment. Three segments of 2 MiB (each with its carry area) instead of 4 took 5-7
// MiB off a backup's peak RSS in the same time, alternated: a 488 MB night 172-175 MiB against
// 179-182 (four runs each), a first backup of it 132-133 MiB against 137-139 (1.04-1.06 s against
// 1.04-1.10 s in the quiet runs).
const SEGMENT = 2 << 20;
const SEGMENTS = 4; // one being read, one being cut, one being hashed, one whose tail the next one takes
/**
 * Segments held at once at most (Segment.hold), beside those the pipeline rotates: a first
 * backup's new chunks go to the seal workers straight from the segments they were read into, not
 * copied into batch buffers. On two cores (one seal worker taking two batches of 4 MiB, a third
 * being filled) about six are held; more seal workers, or an object store's larger batches, make
 * the batches beyond copy their chunks as before.
 */
export const HELD_MAX = 8;

/**
 * Content-defined chunks and their keyed BLAKE3 IDs, on two threads. The input goes into shared
 * segments; a worker cuts one segment while this thread hashes and hands on the chunks of the
 * one before and reads the next (with the native addon, one call each per segment). The hashing
 * goes where there is time for it: the worker hashes a segment itself when no other segment is
 * waiting to be cut (this thread is then the slower one: deduplication lookups, a heavy night);
 * otherwise it leaves the hashing here. Same chunks and IDs as FastCdc and keyed BLAKE3 on one
 * thread, in order.
 *
 * Construct it before the keys are known (the thread starts while the key is derived), then
 * `start()` with the parameters, the gear seed and the ID key.
 */
export class ChunkPipeline {
  private readonly worker: Worker;
  private readonly views: Buffer[] = [];
  private readonly idViews: Buffer[] = [];
  /** per segment: holds not yet released, and whether the pipeline is done with it (then it is free once they are) */
  private holds: number[] = [];
  private handedOn: boolean[] = [];
  private free: number[] = [];
  private held = 0;
  private maxChunks = 0;
  /** start()s so far: a hold of an earlier run is released into nothing */
  private generation = 0;
  private hasher: Blake3Hasher | null = null;
  private idKey = Buffer.alloc(0);
  private readonly posted = new Int32Array(new SharedArrayBuffer(4));
  private dataAt = 0;
  /** whether the native addon cuts and hashes (else TypeScript) */
  native = false;
  private replies: Array<{ resolve: (r: PipelineReply) => void; reject: (e: Error) => void }> = [];
  private failure: Error | null = null;

  constructor() {
    this.worker = startWorker(new URL('./pipeline-worker.js', import.meta.url));
    this.worker.on('message', (r: PipelineReply) => {
      const w = this.replies.shift();
      if (!w) return;
      if (r.error) w.reject(new KuraError('E_INTERNAL', `chunking failed: ${r.error}`));
      else w.resolve(r);
    });
    this.worker.on('error', (e) => this.fail(new KuraError('E_INTERNAL', `chunking thread crashed: ${e.message}`)));
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const w of this.replies.splice(0)) w.reject(e);
  }

  /** `native: false` makes it use TypeScript even where the addon is built (tests compare the two). */
  start(params: ChunkerParams, seed: Uint8Array, idKey: Buffer, opts: { native?: boolean } = {}): void {
    this.hasher = Blake3Hasher.newKeyed(idKey);
    this.idKey = Buffer.from(idKey);
    this.native = (opts.native ?? true) && nativeAddon() !== null;
    this.dataAt = params.maxSize;
    const maxChunks = (this.maxChunks = Math.ceil((SEGMENT + params.maxSize) / params.minSize) + 2);
    this.views.length = this.idViews.length = this.holds.length = this.handedOn.length = 0;
    this.free = [];
    this.held = 0;
    this.generation++;
    const data: SharedArrayBuffer[] = [];
    const ids: SharedArrayBuffer[] = [];
    for (let i = 0; i < SEGMENTS; i++) {
      const s = this.newSegment();
      data.push(s.data);
      ids.push(s.ids);
    }
    const init: PipelineInit = { params, seed: new Uint8Array(seed), data, ids, idKey: new Uint8Array(idKey), posted: this.posted.buffer as SharedArrayBuffer, dataAt: this.dataAt, maxChunks, native: this.native };
    this.worker.postMessage({ init } satisfies PipelineMessage);
  }

  private newSegment(): { data: SharedArrayBuffer; ids: SharedArrayBuffer } {
    const data = new SharedArrayBuffer(this.dataAt + SEGMENT);
    const ids = new SharedArrayBuffer(this.maxChunks * 32);
    this.free.push(this.views.length);
    this.views.push(Buffer.from(data));
    this.idViews.push(Buffer.from(ids));
    this.holds.push(0);
    this.handedOn.push(false);
    return { data, ids };
  }

  /** A segment to read into: a free one, else a new one (the others are held). */
  private takeFree(): number {
    if (this.free.length === 0) this.worker.postMessage({ add: this.newSegment() } satisfies PipelineMessage);
    const seg = this.free.shift()!;
    this.handedOn[seg] = false;
    return seg;
  }

  /** The pipeline is done with `seg`: it is free now, or when its last hold is released. */
  private handOn(seg: number): void {
    this.handedOn[seg] = true;
    if (this.holds[seg] === 0) this.free.push(seg);
  }

  private hold(seg: number): (() => void) | null {
    // (once handed on, a segment may be read into again: too late to hold it)
    if (this.handedOn[seg] || (this.holds[seg] === 0 && this.held >= HELD_MAX)) return null;
    if (this.holds[seg]!++ === 0) this.held++;
    const generation = this.generation;
    let released = false;
    return () => {
      if (released || generation !== this.generation) return;
      released = true;
      if (--this.holds[seg]! > 0) return;
      this.held--;
      if (this.handedOn[seg]) this.free.push(seg);
    };
  }

  private post(seg: number, len: number, finish: boolean): Promise<PipelineReply> {
    if (this.failure) return Promise.reject(this.failure);
    const p = new Promise<PipelineReply>((resolve, reject) => this.replies.push({ resolve, reject }));
    p.catch(() => {}); // awaited in order by run(); a failed run leaves some never awaited
    Atomics.add(this.posted, 0, 1);
    this.worker.postMessage({ seg, len, finish } satisfies PipelineMessage);
    return p;
  }

  /** The IDs of a segment's chunks, hashed here. */
  private hash(view: Buffer, cuts: Uint32Array, ids: Buffer): void {
    if (this.native) {
      nativeAddon()!.hashChunks(view, cuts, cuts.length / 2, this.idKey, ids);
      return;
    }
    const h = this.hasher!;
    for (let i = 0; i < cuts.length / 2; i++) {
      ids.set(h.update(view.subarray(cuts[2 * i]!, cuts[2 * i]! + cuts[2 * i + 1]!)).digestBuffer(), 32 * i);
      h.reset();
    }
  }

  /**
   * Cut and hash `input`; `onSegment` gets the chunks and IDs of each segment in order (the next
   * segment is read and cut while it runs, and not handed on before it has settled). An input
   * with a `fill` method (a file) is read straight into the segments; others are copied in.
   */
  async run(input: AsyncIterable<Uint8Array> | Fillable, onSegment: (s: Segment) => void | Promise<void>): Promise<void> {
    if (!this.hasher) throw new Error('ChunkPipeline.start() first');
    const src = 'fill' in input ? input : copier(input);
    const pending: Array<Promise<PipelineReply>> = [];
    // the segment handed on last: its tail is copied by the worker when it cuts the next one, so
    // it is reused only once the next one's reply came
    let last = -1;
    const consumeOldest = async () => {
      const r = await pending.shift()!;
      if (last >= 0) this.handOn(last);
      last = -1;
      const view = this.views[r.seg]!;
      const ids = this.idViews[r.seg]!.subarray(0, (r.cuts.length / 2) * 32);
      if (!r.hashed) this.hash(view, r.cuts, ids);
      await onSegment({ data: view, cuts: r.cuts, ids, hold: () => this.hold(r.seg) });
      last = r.seg;
    };
    // one segment is read while the worker cuts the one before and this thread hashes the oldest
    let cur = this.takeFree();
    const at = this.dataAt;
    let reading = src.fill(this.views[cur]!.subarray(at, at + SEGMENT));
    try {
      for (;;) {
        reading.catch(() => {}); // awaited below, after the hashing it overlaps
        if (pending.length >= 2) await consumeOldest();
        const len = await reading;
        const end = len < SEGMENT;
        pending.push(this.post(cur, len, end));
        if (end) break;
        if (this.free.length === 0) await consumeOldest();
        cur = this.takeFree();
        reading = src.fill(this.views[cur]!.subarray(at, at + SEGMENT));
      }
      while (pending.length > 0) await consumeOldest();
      if (last >= 0) this.handOn(last);
    } finally {
      await reading.catch(() => 0);
      await src.close?.();
    }
  }

  async close(): Promise<void> {
    this.fail(new KuraError('E_INTERNAL', 'chunking stopped'));
    await this.worker.terminate();
  }
}

/** An input that reads into a buffer it is given: fewer bytes than asked for means the end. */
export interface Fillable {
  fill(buf: Buffer): Promise<number>;
  /** stop reading (also after an error elsewhere) */
  close?(): Promise<void>;
}

/** `fill` over a stream of pieces: copies them in, keeping what did not fit for the next call. */
function copier(input: AsyncIterable<Uint8Array>): Required<Fillable> {
  const it = input[Symbol.asyncIterator]();
  let rest: Uint8Array | null = null;
  let done = false;
  const fill = async (buf: Buffer) => {
    let n = 0;
    while (n < buf.length) {
      if (!rest || rest.length === 0) {
        if (done) break;
        const r = await it.next();
        if (r.done) {
          done = true;
          break;
        }
        rest = r.value;
      }
      const k = Math.min(rest.length, buf.length - n);
      buf.set(rest.subarray(0, k), n);
      rest = rest.subarray(k);
      n += k;
    }
    return n;
  };
  const close = async () => {
    if (!done) {
      done = true;
      await it.return?.();
    }
  };
  return { fill, close };
}
