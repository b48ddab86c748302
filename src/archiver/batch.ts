import type { Segment } from '../chunker/pipeline.js';
import type { ChunkPlaces } from './seal-worker.js';

/**
 * New chunks gathered into batches, one seal request (one pack) each. A chunk lies in the batch's
 * own buffer (copied there: a few new chunks of a segment) or is left in its segment, which the
 * batch holds till the answer (most of a segment new: a first backup, a heavy night): the copy of
 * a first backup's every byte into batch buffers took the main thread 355 ms of a 488 MB backup.
 */

/**
 * A segment whose new chunks make at least this share of its bytes is held for the seal workers
 * to read them where they are; fewer are copied into the batch's buffer (a night's scattered
 * changes would otherwise hold a segment per chunk or two).
 */
const HOLD_SHARE = 0.5;
const NO_BUFFER = new SharedArrayBuffer(0);

/** A new chunk to store: its bytes (a view of its segment), its ID, and the old chunks it may be a delta of. */
export interface NewChunk {
  chunk: Buffer;
  id: Buffer;
  key: string;
  bases: number[];
}

export interface Batch {
  /** the copied chunks, side by side (allocated at the first) */
  data: Buffer | null;
  copied: number;
  /** input bytes at which the batch is full */
  limit: number;
  /** input bytes in the batch; chunk i has offsets[i+1] - offsets[i] of them */
  used: number;
  offsets: number[];
  /** chunk i is in segments[src[i] - 1] from at[i] when src[i] > 0, else in data from at[i] */
  src: number[];
  at: number[];
  segments: SharedArrayBuffer[];
  /** the segment the last chunk was left in (the last of `segments`) */
  lastSegment: Segment | null;
  /** each segment's hold, released once the batch is answered */
  releases: Array<() => void>;
  ids: Buffer[];
  keys: string[];
  /** per chunk, the chunks of the previous generation it may be stored as a delta of (their places in it) */
  bases: number[][];
}

/** `seg` when its new chunks (`fresh` of its `total` bytes) are worth reading where they are, else null (copied). */
export function holdable(seg: Segment, fresh: number, total: number): Segment | null {
  return fresh > 0 && fresh >= HOLD_SHARE * total ? seg : null;
}

export class Batches {
  /**
   * Batch buffers are shared with the workers and reused once answered: 16 MiB ArrayBuffers
   * transferred to and fro cost the main thread a full GC every few batches (external memory).
   */
  private readonly free: ArrayBufferLike[] = [];

  /** `capacity`: the bytes a batch's buffer holds at most (its limit and one largest chunk). */
  constructor(private readonly capacity: number) {}

  create(limit: number): Batch {
    return { data: null, copied: 0, limit, used: 0, offsets: [0], src: [], at: [], segments: [], lastSegment: null, releases: [], ids: [], keys: [], bases: [] };
  }

  /** Adds `c` to `b`, left in its held segment (`seg`) or else copied; whether `b` is full. */
  add(b: Batch, c: NewChunk, seg: Segment | null): boolean {
    this.place(b, c.chunk, seg);
    b.used += c.chunk.length;
    b.offsets.push(b.used);
    b.ids.push(c.id);
    b.keys.push(c.key);
    b.bases.push(c.bases);
    return b.used >= b.limit;
  }

  private place(b: Batch, chunk: Buffer, seg: Segment | null): void {
    if (seg && b.lastSegment !== seg) {
      const release = seg.hold();
      if (release) {
        b.releases.push(release);
        b.segments.push(seg.data.buffer as SharedArrayBuffer);
        b.lastSegment = seg;
      }
    }
    if (seg && b.lastSegment === seg) {
      b.src.push(b.segments.length);
      b.at.push(chunk.byteOffset);
      return;
    }
    b.data ??= Buffer.from(this.free.pop() ?? new SharedArrayBuffer(this.capacity));
    chunk.copy(b.data, b.copied);
    b.src.push(0);
    b.at.push(b.copied);
    b.copied += chunk.length;
  }

  /** What a seal request takes of `b`: its own buffer, and where its other chunks lie. */
  static request(b: Batch): { data: ArrayBufferLike; elsewhere: ChunkPlaces | null } {
    return { data: b.data?.buffer ?? NO_BUFFER, elsewhere: b.segments.length > 0 ? { buffers: b.segments, src: Uint8Array.from(b.src), at: Uint32Array.from(b.at) } : null };
  }

  /**
   * `b` was answered (the worker is done with its chunks): its segments are released and its
   * buffer (`data`, handed back) serves the next batches. A batch that failed keeps its segments:
   * the addon may still be reading them, and the backup stops.
   */
  answered(b: Batch, data: ArrayBufferLike): void {
    for (const r of b.releases.splice(0)) r();
    if (data.byteLength > 0) this.free.push(data);
  }
}
