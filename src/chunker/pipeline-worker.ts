import { parentPort } from 'node:worker_threads';
import { FastCdc, fastCdcMasks, gearTable } from './fastcdc.js';
import { nativeAddon, type NativeAddon } from '../native.js';
import type { PipelineInit, PipelineMessage, PipelineReply } from './pipeline.js';

/**
 * The chunking thread of ChunkPipeline (pipeline.ts): finds the chunk boundaries of each segment
 * while the main thread hashes and deduplicates the segment before; with the native addon it
 * hashes a segment too when no other one waits to be cut. The unfinished chunk
 * of the segment before is copied from there into the carry area just in front of this segment's
 * data, so every chunk starts at a boundary and lies whole inside one segment (the main thread
 * does not reuse a segment before the reply for the next one says its tail was copied). Boundaries come from the
 * native addon when it is built, else from FastCdc (the same cuts).
 */
let init: PipelineInit | null = null;
let native: NativeAddon | null = null;
let cdc: FastCdc | null = null;
let gear: Int32Array = new Int32Array(256);
let masks = { maskS: 0, maskL: 0 };
let cuts = new Uint32Array(0);
/** the unfinished chunk: data[tail.seg][tail.from .. tail.to), copied in front of the next segment */
let tail: { seg: number; from: number; to: number } | null = null;
let data: Buffer[] = [];
let ids: Buffer[] = [];
let idKey: Buffer = Buffer.alloc(0);
let posted: Int32Array<ArrayBufferLike> = new Int32Array(1);
let received = 0;

parentPort!.on('message', (m: PipelineMessage) => {
  if ('init' in m) {
    const i = (init = m.init);
    data = i.data.map((s) => Buffer.from(s));
    ids = i.ids.map((s) => Buffer.from(s));
    idKey = Buffer.from(i.idKey);
    posted = new Int32Array(i.posted);
    cuts = new Uint32Array(2 * i.maxChunks);
    tail = null;
    native = i.native ? nativeAddon() : null;
    if (i.native && !native) throw new Error('the native addon did not load in the chunking thread');
    if (native) {
      gear = gearTable(i.seed);
      masks = fastCdcMasks(i.params);
    } else cdc = new FastCdc(i.params, i.seed);
    return;
  }
  if ('add' in m) {
    // a segment more: the others are held by batches being sealed
    data.push(Buffer.from(m.add.data));
    ids.push(Buffer.from(m.add.ids));
    return;
  }
  received++;
  try {
    const seg = data[m.seg]!;
    const at = init!.dataAt;
    const carryLen = tail ? tail.to - tail.from : 0;
    if (tail) data[tail.seg]!.copy(seg, at - carryLen, tail.from, tail.to);
    tail = null;
    const start = at - carryLen;
    const end = at + m.len;
    const n = native ? cutNative(seg, start, end, m.finish) : cutTs(seg, start, end, m.finish);
    const done = n > 0 ? cuts[2 * n - 2]! + cuts[2 * n - 1]! : start;
    // shorter than maxSize: a chunk is cut whenever that much is there
    if (end - done > init!.params.maxSize || (m.finish && end > done)) throw new Error(`chunking left ${end - done} bytes uncut`);
    if (end > done) tail = { seg: m.seg, from: done, to: end };
    // hash it here when no other segment waits to be cut: the main thread is the slower one then
    const hashed = native !== null && Atomics.load(posted, 0) === received;
    if (hashed) native!.hashChunks(seg, cuts, n, idKey, ids[m.seg]!);
    parentPort!.postMessage({ seg: m.seg, cuts: cuts.slice(0, 2 * n), hashed } satisfies PipelineReply);
  } catch (e) {
    parentPort!.postMessage({ seg: m.seg, cuts: new Uint32Array(0), hashed: false, error: (e as Error).message } satisfies PipelineReply);
  }
});

function cutNative(seg: Buffer, start: number, end: number, final: boolean): number {
  const p = init!.params;
  return native!.cut(seg, start, end, final, p.minSize, p.avgSize, p.maxSize, masks.maskS, masks.maskL, gear, cuts);
}

/** The same cuts with FastCdc, started at a boundary each time (it carries nothing itself). */
function cutTs(seg: Buffer, start: number, end: number, final: boolean): number {
  let n = 0;
  let done = start;
  cdc!.push(seg.subarray(start, end), (c) => {
    cuts[2 * n] = c.byteOffset;
    cuts[2 * n + 1] = c.length;
    n++;
    done = c.byteOffset + c.length;
  });
  cdc!.reset();
  if (final && done < end) {
    cuts[2 * n] = done;
    cuts[2 * n + 1] = end - done;
    n++;
  }
  return n;
}
