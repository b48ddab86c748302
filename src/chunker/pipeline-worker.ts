import { parentPort } from 'node:worker_threads';
import { Blake3Hasher } from '@napi-rs/blake-hash';
import { FastCdc } from './fastcdc.js';
import { CLAIMED, HASHED, UNCLAIMED, type PipelineMessage, type PipelineReply } from './pipeline.js';

/**
 * The chunking thread of ChunkPipeline (pipeline.ts). For each segment the main thread filled it
 * finds the chunk boundaries and replies with them at once; then, until the main thread hands it
 * the next segment, it helps hashing that segment's chunks from the back while the main thread
 * hashes from the front. Each chunk is claimed with a compare-and-swap on its state word, tagged
 * with the segment's generation so a stale claim can never match a reused segment.
 *
 * A chunk that began in an earlier segment is copied to the spill area behind the segment's data
 * (room for two chunks of the maximum size: that one and, at the end of the input, the tail), so
 * every chunk lies whole inside one shared segment.
 */
let cdc: FastCdc | null = null;
let hasher: Blake3Hasher | null = null;
let data: Buffer[] = [];
let ids: Buffer[] = [];
let states: Int32Array[] = [];
let control: Int32Array = new Int32Array(1);
let spillAt = 0;
let handled = 0;

parentPort!.on('message', (m: PipelineMessage) => {
  if ('init' in m) {
    const i = m.init;
    cdc = new FastCdc(i.params, i.seed);
    hasher = Blake3Hasher.newKeyed(Buffer.from(i.idKey));
    data = i.data.map((s) => Buffer.from(s));
    ids = i.ids.map((s) => Buffer.from(s));
    states = i.states.map((s) => new Int32Array(s));
    control = new Int32Array(i.control);
    spillAt = i.spillAt;
    return;
  }
  handled++;
  let cuts: Uint32Array;
  try {
    const seg = data[m.seg]!;
    const list: number[] = [];
    let spill = spillAt;
    const sink = (c: Buffer) => {
      if (c.buffer === seg.buffer) list.push(c.byteOffset, c.length);
      else {
        c.copy(seg, spill);
        list.push(spill, c.length);
        spill += c.length;
      }
    };
    cdc!.push(seg.subarray(0, m.len), sink);
    if (m.finish) cdc!.finish(sink);
    cuts = Uint32Array.from(list);
  } catch (e) {
    parentPort!.postMessage({ seg: m.seg, cuts: new Uint32Array(0), error: (e as Error).message } satisfies PipelineReply);
    return;
  }
  parentPort!.postMessage({ seg: m.seg, cuts: cuts.slice() } satisfies PipelineReply);
  // help: hash from the back until the main thread meets us or has a new segment for us
  const seg = data[m.seg]!;
  const st = states[m.seg]!;
  const out = ids[m.seg]!;
  const base = m.gen * 4;
  const h = hasher!;
  for (let i = cuts.length / 2 - 1; i >= 0; i--) {
    if (Atomics.load(control, 0) !== handled) break;
    if (Atomics.compareExchange(st, i, base + UNCLAIMED, base + CLAIMED) !== base + UNCLAIMED) break;
    const off = cuts[2 * i]!;
    h.update(seg.subarray(off, off + cuts[2 * i + 1]!)).digestBuffer().copy(out, i * 32);
    h.reset();
    Atomics.store(st, i, base + HASHED);
    Atomics.notify(st, i);
  }
});
