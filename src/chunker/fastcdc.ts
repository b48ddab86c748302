import { createHash } from 'node:crypto';

/**
 * Streaming FastCDC (gear hash, normalized chunking level 2), repository format v1.
 *
 * The exact rules are part of the repository format (docs/format.md); golden vectors in
 * test/chunker.test.ts pin them. Changing anything here needs a new format version.
 *
 * - gear[i] = first 4 bytes (little endian) of SHA-256(seed || i) for i in 0..255
 * - per chunk: h = 0; the first `min` bytes are not hashed; from byte `min` on,
 *   h = (h << 1) + gear[byte] (mod 2^32); while the chunk is shorter than `avg` a cut needs the
 *   top (bits+2) bits of h to be zero, afterwards the top (bits-2) bits, bits = log2(avg).
 *   The byte whose hash triggers the cut is the last byte of the chunk. A chunk never exceeds
 *   `max`; the stream's remainder is the last chunk.
 * High bits are used because bit k of a gear hash only depends on the last k+1 bytes: low-bit
 * masks see a window of a few bytes and skew chunk sizes on text dumps.
 */
export interface ChunkerParams {
  minSize: number;
  avgSize: number;
  maxSize: number;
}

/**
 * The sizes `kura repo init` gives a repository: 256 KiB on average. A changed chunk is stored as
 * a delta of the previous generation's chunk at its place, so what a night costs follows what
 * changed, not the chunk's size; larger chunks give zstd more of the dump in one frame and
 * cost fewer blobs. bench/daily, the same dumps replayed at 64 and 256 KiB (7 nights): OLTP
 * first night 6.82 → 5.83 MB, nights 2-7 24.7 → 19.1 MB; municipal first night 28.1 → 27.6 MB,
 * nights 2-7 2.57 → 2.17 MB, the heavy night the same. At 1 MiB both stored a little less again but
 * a restore peaked at 350-380 MiB of RSS and a night of deltas above 220 MiB. Repositories made
 * before keep their sizes (the repository's config holds them).
 */
export const defaultChunkerParams: ChunkerParams = { minSize: 64 << 10, avgSize: 256 << 10, maxSize: 1 << 20 };

/**
 * The chunk sizes database sources had by default while a changed chunk's delta bases were found
 * by bytes alone (small chunks then stored less around each change). Since deltas find their old
 * version by how chunks end, 64 KiB (the repository default until 256 KiB) stored less on every dump bench/daily has
 * (each stored chunk costs ~250 bytes of its own); sources backed up at these sizes keep them.
 */
export const databaseChunkerParams: ChunkerParams = { minSize: 1 << 10, avgSize: 4 << 10, maxSize: 16 << 10 };

/** min = avg/4, max = avg×4 around a power-of-two average. */
export function chunkerParamsForAverage(avgSize: number): ChunkerParams {
  return { minSize: Math.max(64, avgSize / 4), avgSize, maxSize: avgSize * 4 };
}

export function validateChunkerParams(p: ChunkerParams): string | null {
  const { minSize, avgSize, maxSize } = p;
  if (![minSize, avgSize, maxSize].every((n) => Number.isInteger(n) && n > 0)) return 'sizes must be positive integers';
  if (!(minSize < avgSize && avgSize < maxSize)) return 'sizes must satisfy min < avg < max';
  if ((avgSize & (avgSize - 1)) !== 0) return 'avg must be a power of two';
  const bits = Math.log2(avgSize);
  if (bits < 6 || bits > 28) return 'avg must be between 64 bytes and 256 MiB';
  if (minSize < 64) return 'min must be at least 64 bytes';
  return null;
}

export function gearTable(seed: Uint8Array): Int32Array {
  const table = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    const d = createHash('sha256').update(seed).update(Uint8Array.of(i)).digest();
    table[i] = d.readInt32LE(0);
  }
  return table;
}

function topBitsMask(bits: number): number {
  return bits >= 32 ? -1 : (0xffffffff << (32 - bits)) | 0;
}

/** The two gear-hash masks of the parameters (before / after the average size), as unsigned 32-bit. */
export function fastCdcMasks(params: ChunkerParams): { maskS: number; maskL: number } {
  const bits = Math.round(Math.log2(params.avgSize));
  return { maskS: topBitsMask(bits + 2) >>> 0, maskL: topBitsMask(bits - 2) >>> 0 };
}

export type ChunkSink = (chunk: Buffer) => void;

export class FastCdc {
  private readonly gear: Int32Array;
  private readonly min: number;
  private readonly avg: number;
  private readonly max: number;
  private readonly maskS: number;
  private readonly maskL: number;
  /** Bytes of the current chunk that arrived in earlier push() calls (copied: callers may reuse buffers). */
  private readonly carry: Buffer;
  private carryLen = 0;
  /** Length of the current chunk so far (== carryLen between calls). */
  private pos = 0;
  private h = 0;

  constructor(params: ChunkerParams, seed: Uint8Array) {
    const problem = validateChunkerParams(params);
    if (problem) throw new RangeError(`chunker parameters: ${problem}`);
    this.gear = gearTable(seed);
    this.min = params.minSize;
    this.avg = params.avgSize;
    this.max = params.maxSize;
    const bits = Math.round(Math.log2(params.avgSize));
    this.maskS = topBitsMask(bits + 2);
    this.maskL = topBitsMask(bits - 2);
    this.carry = Buffer.allocUnsafe(params.maxSize);
  }

  /**
   * Feed bytes; `sink` receives every completed chunk in order. A chunk is only valid during the
   * sink call (it may alias `data` or an internal buffer): hash it or copy it there.
   */
  push(data: Buffer, sink: ChunkSink): void {
    const G = this.gear;
    const n = data.length;
    const min = this.min;
    const avg = this.avg;
    const max = this.max;
    const maskS = this.maskS;
    const maskL = this.maskL;
    let pos = this.pos;
    let h = this.h;
    let start = 0; // where the current chunk starts inside `data` (0 if it began earlier)
    let i = 0;
    while (i < n) {
      let cut = -1;
      if (pos < min) {
        const skip = Math.min(min - pos, n - i);
        i += skip;
        pos += skip;
        if (pos < min) break;
      }
      if (pos < avg) {
        const end = Math.min(n, i + (avg - pos));
        let j = i;
        // unrolled by four (chunking ~1.1 → ~1.6 GB/s here); same bytes, same cuts. The maskL
        // loop below is the same, written out: a shared helper measured 5-10% slower.
        for (; j + 3 < end; j += 4) {
          h = (h << 1) + G[data[j]!]! | 0;
          if ((h & maskS) === 0) { cut = j + 1; break; }
          h = (h << 1) + G[data[j + 1]!]! | 0;
          if ((h & maskS) === 0) { cut = j + 2; break; }
          h = (h << 1) + G[data[j + 2]!]! | 0;
          if ((h & maskS) === 0) { cut = j + 3; break; }
          h = (h << 1) + G[data[j + 3]!]! | 0;
          if ((h & maskS) === 0) { cut = j + 4; break; }
        }
        if (cut < 0) {
          for (; j < end; j++) {
            h = (h << 1) + G[data[j]!]! | 0;
            if ((h & maskS) === 0) {
              cut = j + 1;
              break;
            }
          }
        }
        pos += (cut >= 0 ? cut : end) - i;
        i = cut >= 0 ? cut : end;
        if (cut < 0 && pos < avg) break;
      }
      if (cut < 0) {
        const end = Math.min(n, i + (max - pos));
        let j = i;
        for (; j + 3 < end; j += 4) {
          h = (h << 1) + G[data[j]!]! | 0;
          if ((h & maskL) === 0) { cut = j + 1; break; }
          h = (h << 1) + G[data[j + 1]!]! | 0;
          if ((h & maskL) === 0) { cut = j + 2; break; }
          h = (h << 1) + G[data[j + 2]!]! | 0;
          if ((h & maskL) === 0) { cut = j + 3; break; }
          h = (h << 1) + G[data[j + 3]!]! | 0;
          if ((h & maskL) === 0) { cut = j + 4; break; }
        }
        if (cut < 0) {
          for (; j < end; j++) {
            h = (h << 1) + G[data[j]!]! | 0;
            if ((h & maskL) === 0) {
              cut = j + 1;
              break;
            }
          }
        }
        pos += (cut >= 0 ? cut : end) - i;
        i = cut >= 0 ? cut : end;
        if (cut < 0) {
          if (pos < max) break;
          cut = i;
        }
      }
      // emit data[start..cut) plus whatever was pending
      if (this.carryLen === 0) {
        sink(data.subarray(start, cut));
      } else {
        data.copy(this.carry, this.carryLen, start, cut);
        const len = this.carryLen + (cut - start);
        this.carryLen = 0;
        sink(this.carry.subarray(0, len));
      }
      start = cut;
      pos = 0;
      h = 0;
    }
    if (start < n) {
      data.copy(this.carry, this.carryLen, start, n);
      this.carryLen += n - start;
    }
    this.pos = pos;
    this.h = h;
  }

  /** Forget the unfinished chunk (a caller that carries it itself starts the next push at a boundary). */
  reset(): void {
    this.carryLen = 0;
    this.pos = 0;
    this.h = 0;
  }

  /** End of stream: emit the remainder (shorter than min is fine; empty input emits nothing). */
  finish(sink: ChunkSink): void {
    if (this.carryLen > 0) {
      const len = this.carryLen;
      this.carryLen = 0;
      sink(this.carry.subarray(0, len));
    }
    this.pos = 0;
    this.h = 0;
  }
}

/** Convenience for tests and small inputs: boundaries (chunk lengths) of a whole buffer. */
export function chunkLengths(data: Buffer, params: ChunkerParams, seed: Uint8Array, readSize = data.length || 1): number[] {
  const cdc = new FastCdc(params, seed);
  const out: number[] = [];
  const sink = (c: Buffer) => out.push(c.length);
  for (let o = 0; o < data.length; o += readSize) cdc.push(data.subarray(o, o + readSize), sink);
  cdc.finish(sink);
  return out;
}
