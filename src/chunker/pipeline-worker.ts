import { parentPort } from 'node:worker_threads';
import { Blake3Hasher } from '@napi-rs/blake-hash';
import { FastCdc, fastCdcMasks, gearTable } from './fastcdc.js';
import { nativeAddon, type NativeAddon } from '../native.js';
import { CLAIMED, HASHED, UNCLAIMED, type PipelineInit, type PipelineMessage, type PipelineReply } from './pipeline.js';

/**
 * The chunking thread of ChunkPipeline (pipeline.ts).
 *
 * With the native addon it cuts each segment in one call (the main thread hashes the chunks
 * with the addon while this thread cuts the next): the unfinished chunk of the segment before
 * is copied into the carry area just in front of this segment's data, so every chunk lies
 * whole inside one segment.
 *
 * Without it, FastCdc finds the boundaries and the reply goes out at once; then, until the main
 * thread hands it the next segment, the worker helps hashing that segment's chunks from the back
 * while the main thread hashes from the front. Each chunk is claimed with a compare-and-swap on
 * its state word, tagged with the segment's generation so a stale claim never matches a reused
 * segment. A chunk that began in an earlier segment (FastCdc's carry) is copied to the spill area
 * behind the data (room for two: that one and, at the end of the input, the tail).
 */
let init: PipelineInit | null = null;
let native: NativeAddon | null = null;
let gear: Int32Array = new Int32Array(256);
let masks = { maskS: 0, maskL: 0 };
let key = Buffer.alloc(0);
let cuts = new Uint32Array(0);
let carry = Buffer.alloc(0);
let carryLen = 0;
let cdc: FastCdc | null = null;
let hasher: Blake3Hasher | null = null;
let data: Buffer[] = [];
let ids: Buffer[] = [];
let states: Int32Array[] = [];
let control: Int32Array = new Int32Array(1);
let handled = 0;
const NO_KEY = new Uint8Array(0);
const NO_IDS = new Uint8Array(0);

parentPort!.on('message', (m: PipelineMessage) => {
  if ('init' in m) {
    const i = (init = m.init);
    data = i.data.map((s) => Buffer.from(s));
    ids = i.ids.map((s) => Buffer.from(s));
    states = i.states.map((s) => new Int32Array(s));
    control = new Int32Array(i.control);
    key = Buffer.from(i.idKey);
    native = i.native ? nativeAddon() : null;
    if (i.native && !native) throw new Error('the native addon did not load in the chunking thread');
    if (native) {
      gear = gearTable(i.seed);
      masks = fastCdcMasks(i.params);
      cuts = new Uint32Array(2 * i.maxChunks);
      carry = Buffer.allocUnsafe(i.params.maxSize);
    } else {
      cdc = new FastCdc(i.params, i.seed);
      hasher = Blake3Hasher.newKeyed(key);
    }
    return;
  }
  handled++;
  try {
    if (native) cutAndHashNative(m);
    else cutThenHelp(m);
  } catch (e) {
    parentPort!.postMessage({ seg: m.seg, cuts: new Uint32Array(0), error: (e as Error).message } satisfies PipelineReply);
  }
});

function cutAndHashNative(m: { seg: number; len: number; finish: boolean }): void {
  const i = init!;
  const seg = data[m.seg]!;
  const at = i.dataAt;
  carry.copy(seg, at - carryLen, 0, carryLen);
  const start = at - carryLen;
  const end = at + m.len;
  // cut only: the main thread hashes this segment's chunks while this thread cuts the next
  const n = native!.cutAndHash(seg, start, end, m.finish, i.params.minSize, i.params.avgSize, i.params.maxSize, masks.maskS, masks.maskL, gear, NO_KEY, cuts, NO_IDS);
  const done = n > 0 ? cuts[2 * n - 2]! + cuts[2 * n - 1]! : start;
  carryLen = end - done; // shorter than maxSize: the addon cuts whenever it has that much
  if (carryLen > carry.length || (m.finish && carryLen > 0)) throw new Error(`chunking left ${carryLen} bytes uncut`);
  seg.copy(carry, 0, done, end);
  parentPort!.postMessage({ seg: m.seg, cuts: cuts.slice(0, 2 * n), native: true } satisfies PipelineReply);
}

function cutThenHelp(m: { seg: number; len: number; finish: boolean; gen: number }): void {
  const i = init!;
  const seg = data[m.seg]!;
  const list: number[] = [];
  let spill = i.spillAt;
  const sink = (c: Buffer) => {
    if (c.buffer === seg.buffer) list.push(c.byteOffset, c.length);
    else {
      c.copy(seg, spill);
      list.push(spill, c.length);
      spill += c.length;
    }
  };
  cdc!.push(seg.subarray(i.dataAt, i.dataAt + m.len), sink);
  if (m.finish) cdc!.finish(sink);
  const cutList = Uint32Array.from(list);
  parentPort!.postMessage({ seg: m.seg, cuts: cutList.slice() } satisfies PipelineReply);
  // help: hash from the back until the main thread meets us or has a new segment for us
  const st = states[m.seg]!;
  const out = ids[m.seg]!;
  const base = m.gen * 4;
  const h = hasher!;
  for (let k = cutList.length / 2 - 1; k >= 0; k--) {
    if (Atomics.load(control, 0) !== handled) break;
    if (Atomics.compareExchange(st, k, base + UNCLAIMED, base + CLAIMED) !== base + UNCLAIMED) break;
    const off = cutList[2 * k]!;
    h.update(seg.subarray(off, off + cutList[2 * k + 1]!)).digestBuffer().copy(out, k * 32);
    h.reset();
    Atomics.store(st, k, base + HASHED);
    Atomics.notify(st, k);
  }
}
