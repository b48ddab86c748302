import { createHash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { blobInfo, BlobSealer, CHUNK_ID_BYTES, openBaseInto } from '../crypto/blob.js';
import { encodePack, PACK_ENTRY, PACK_TRAILER } from '../repository/pack.js';
import { DIGEST_BYTES } from '../repository/digest.js';
import { packName } from '../store/backend.js';
import { getRangesSync } from '../store/fs/index.js';
import { nativeAddon } from '../native.js';
import { WholeSealer } from './seal-whole.js';

/**
 * Compresses and encrypts one batch of new chunks into one pack, in a worker thread, and hands the
 * pack back (built in a buffer shared with the main thread) for the main thread to store alone or
 * gathered with others. With a local store (workerData.directRoot) it reads delta bases from there.
 */
export interface SealRequest {
  seq: number;
  level: number;
  /** shared (the caller's batch buffer, reused once this request is answered) or transferred */
  data: ArrayBufferLike;
  /** chunk i is data[offsets[i] .. offsets[i+1]), unless `elsewhere` says where it lies */
  offsets: Uint32Array;
  /** chunks left where they were read (segments of the chunking pipeline, held by the caller till the answer) */
  elsewhere?: ChunkPlaces | null;
  ids: ArrayBuffer;
  /** base chunks for deltas against the previous generation, or null */
  bases: SealBases | null;
  /** the pack's SHA-256 too (an object store signs an upload of it alone with it) */
  sha256: boolean;
  /** a shared buffer to build the pack in (an earlier response's, returned), or null */
  out: SharedArrayBuffer | null;
}

/**
 * Where a batch's chunks lie when not all in its own buffer: chunk i is buffers[src[i] - 1][at[i]
 * ..] when src[i] > 0, else data[at[i] ..]; offsets[i+1] - offsets[i] bytes either way.
 */
export interface ChunkPlaces {
  /** at most 255 (src is a byte): a batch holds at most HELD_MAX segments (chunker/pipeline.ts) */
  buffers: SharedArrayBuffer[];
  src: Uint8Array;
  at: Uint32Array;
}

/**
 * The base chunks a batch may be compressed against: base b has ID ids[b] and is stored in pack
 * packs[packOf[b]] at offset/length. The worker reads it from the local store, or takes it from
 * `blobs` when the caller read them (an object store). Chunk i may use the bases
 * refs[start[i] .. start[i+1]).
 */
export interface SealBases {
  ids: Uint8Array;
  packs: string[];
  packOf: Uint32Array;
  offset: Float64Array;
  length: Uint32Array;
  start: Uint32Array;
  refs: Uint32Array;
  /** again[i] = 1: chunk i's old version at its place was itself a delta (it changes night after night) */
  again: Uint8Array;
  /** the bases' stored blobs, read by the caller (null: unreadable); absent: read from the local store */
  blobs?: Array<Uint8Array | null>;
}

export interface SealResponse {
  seq: number;
  /** the request's data buffer, handed back for reuse */
  data: ArrayBufferLike;
  packId: string;
  /** blob i lies at blobOffsets[i] .. blobOffsets[i+1] in the pack */
  blobOffsets: Uint32Array;
  /** the pack's bytes from its start (the buffer may be larger: packLength); null in an answer with an error */
  pack: SharedArrayBuffer | null;
  packLength: number;
  /** SHA-256 of the pack handed back, hex (an object store signs its upload with it) */
  packSha256: string | null;
  /** delta[i] = 1: chunk i was stored as a delta */
  delta: Uint8Array;
  /** the bases of the deltas, in chunk order: baseCount[i] indexes into SealBases.ids each */
  baseCount: Uint8Array;
  usedBases: Uint32Array;
  /** the blobs' digests (pack format 2), 16 bytes each, as the pack's index records them */
  digests: Uint8Array;
  error?: string;
}

/** A buffer to list for transfer: a shared one is not moved, it is already on both sides. */
function transferable(b: ArrayBufferLike): ArrayBuffer[] {
  return b instanceof ArrayBuffer ? [b] : [];
}

let keys: { dataKey: Buffer; idKey: Buffer } | null = null; // sent by SealPool.setKey before any request
const directRoot = workerData.directRoot as string | null;
const sealers = new Map<number, BlobSealer>();
const whole = WholeSealer.of(nativeAddon());

/** The stored blobs of the batch's bases (undefined: unreadable), read pack by pack into one buffer reused by the next batch. */
function baseBlobs(b: SealBases): Array<Buffer | undefined> {
  if (b.blobs) return b.blobs.map((x, i) => (x && x.length === b.length[i] ? Buffer.from(x.buffer, x.byteOffset, x.length) : undefined));
  const out: Array<Buffer | undefined> = new Array(b.length.length);
  const byPack = new Map<number, number[]>();
  b.packOf.forEach((p, i) => {
    let list = byPack.get(p);
    if (!list) byPack.set(p, (list = []));
    list.push(i);
  });
  const reads: Array<{ pack: number; ranges: Array<{ offset: number; length: number; members: number[] }> }> = [];
  let total = 0;
  for (const [p, members] of byPack) {
    // neighbours (gaps under GAP_READ) are read in one range, scattered ones each on their own
    members.sort((x, y) => b.offset[x]! - b.offset[y]!);
    const ranges: Array<{ offset: number; length: number; members: number[] }> = [];
    for (const i of members) {
      const last = ranges.at(-1);
      const end = b.offset[i]! + b.length[i]!;
      if (last && b.offset[i]! - (last.offset + last.length) <= GAP_READ) {
        last.length = Math.max(last.length, end - last.offset);
        last.members.push(i);
      } else ranges.push({ offset: b.offset[i]!, length: b.length[i]!, members: [i] });
    }
    for (const r of ranges) total += r.length;
    reads.push({ pack: p, ranges });
  }
  const into = readBuffer.of(total);
  let at = 0;
  for (const { pack, ranges } of reads) {
    const room = into.subarray(at, (at += ranges.reduce((n, r) => n + r.length, 0)));
    let got: Buffer[] | null = null;
    try {
      got = getRangesSync(directRoot!, packName(b.packs[pack]!), ranges, room);
    } catch {
      // unreadable: those chunks are stored whole
    }
    if (!got) continue;
    ranges.forEach((r, k) => {
      for (const i of r.members) {
        const at = b.offset[i]! - r.offset;
        if (at + b.length[i]! <= got![k]!.length) out[i] = got![k]!.subarray(at, at + b.length[i]!);
      }
    });
  }
  return out;
}

const GAP_READ = 16 << 10;

/**
 * A buffer kept for the next batch: a batch's bases are read and opened in one synchronous turn
 * (before it awaits the addon's sealing of its whole chunks), and nothing of them outlives it. A
 * new one each batch is external memory the worker's GC frees late: for the base plaintexts (4-12
 * MiB a batch) that took ~60 MB of a churned night's peak RSS.
 */
class ReusedBuffer {
  private buf: Buffer | null = null;
  of(bytes: number): Buffer {
    if (!this.buf || this.buf.length < bytes) this.buf = Buffer.allocUnsafeSlow(Math.ceil((bytes * 1.25) / 65536) * 65536);
    return this.buf.subarray(0, bytes);
  }
}
const readBuffer = new ReusedBuffer(); // the stored blobs of the bases
const arenaBuffer = new ReusedBuffer(); // their plaintexts

/**
 * Plaintexts of the batch's base chunks, opened on first use into one buffer for the whole batch
 * (undefined: unreadable or damaged), and the dictionary of a chunk's bases: a view of that
 * buffer when they lie side by side there (neighbours in the previous generation usually do).
 */
function baseOpener(b: SealBases): { base: (i: number) => Buffer | undefined; dict: (refs: number[]) => Buffer } {
  const blobs = baseBlobs(b);
  const n = b.length.length;
  const infos = blobs.map((blob) => (blob ? blobInfo(blob) : null));
  const at = new Float64Array(n + 1);
  for (let i = 0; i < n; i++) at[i + 1] = at[i]! + (infos[i] && infos[i]!.bases.length === 0 ? infos[i]!.plainLength : 0);
  const arena = arenaBuffer.of(at[n]!);
  const state = new Uint8Array(n); // 0 not opened yet, 1 opened, 2 unusable
  const base = (i: number): Buffer | undefined => {
    if (state[i] === 0) {
      state[i] = 2;
      const blob = blobs[i];
      const info = infos[i];
      const id = Buffer.from(b.ids.buffer, b.ids.byteOffset + i * CHUNK_ID_BYTES, CHUNK_ID_BYTES);
      // authenticated by its tag; not re-hashed: a base only shapes the delta, whose own restore
      // re-hashes what it produces
      if (blob && info && info.bases.length === 0 && openBaseInto(blob, id, keys!, info, arena.subarray(at[i]!, at[i + 1]!))) state[i] = 1;
    }
    return state[i] === 1 ? arena.subarray(at[i]!, at[i + 1]!) : undefined;
  };
  const dict = (refs: number[]): Buffer => {
    let together = true;
    for (let k = 1; k < refs.length; k++) if (refs[k] !== refs[k - 1]! + 1) together = false;
    if (together) return arena.subarray(at[refs[0]!]!, at[refs.at(-1)! + 1]!);
    return Buffer.concat(refs.map((r) => base(r)!));
  };
  return { base, dict };
}

/**
 * The sets of a chunk's candidate bases to try: all of them and, for the usual two or three
 * neighbours, the one run among them that measured most worth a second compression. A base adds
 * 32 bytes to a delta's header and often saves less: on a heavy night of a dump (7 283 deltas)
 * trying [place, next] beside all three (and [place] beside two) stored 202 KB less (8 % of what
 * the deltas took) for one compression more each; trying every run saved 310 KB for three more.
 */
function baseSets(refs: number[]): number[][] {
  if (refs.length === 3) return [refs, [refs[1]!, refs[2]!]];
  if (refs.length === 2) return [refs, [refs[0]!]];
  return [refs];
}

/** The plaintexts of a request's chunks, wherever they lie. */
class BatchChunks {
  private readonly sources: Buffer[];
  private readonly src: Uint8Array | null;
  private readonly at: Uint32Array;
  private readonly offsets: Uint32Array;

  constructor(req: SealRequest) {
    const places = req.elsewhere ?? null;
    this.sources = [Buffer.from(req.data), ...(places?.buffers ?? []).map((b) => Buffer.from(b))];
    this.src = places?.src ?? null;
    this.at = places?.at ?? req.offsets;
    this.offsets = req.offsets;
  }

  length(i: number): number {
    return this.offsets[i + 1]! - this.offsets[i]!;
  }

  source(i: number): Buffer {
    return this.sources[this.src ? this.src[i]! : 0]!;
  }

  plain(i: number): Buffer {
    return this.source(i).subarray(this.at[i]!, this.at[i]! + this.length(i));
  }

  /** Whether chunk j follows chunk i in the same buffer, byte for byte. */
  follows(i: number, j: number): boolean {
    return (this.src ? this.src[i] === this.src[j] : true) && this.at[j] === this.at[i]! + this.length(i);
  }
}

/**
 * The whole chunks `idx` (in order) sealed by the addon, one call for each run of the batch's
 * consecutive chunks that lie side by side in one buffer (a batch of copied chunks is one run; one
 * left in the pipeline's segments has a run for each segment, and more where chunks the
 * catalogue had already are skipped). blobs[k] is chunk idx[k]'s blob, undefined if the addon
 * could not seal it. Settles only once every call has.
 */
async function sealWholeRuns(w: WholeSealer, dataKey: Buffer, level: number, chunks: BatchChunks, n: number, ids: Buffer, idx: Uint32Array): Promise<{ blobs: Array<Buffer | undefined>; release: () => void }> {
  const runs: Array<[number, number]> = []; // chunk indexes [from, to)
  for (let i = 0; i < n; i++) {
    const last = runs.at(-1);
    if (last && chunks.follows(i - 1, i)) last[1] = i + 1;
    else runs.push([i, i + 1]);
  }
  const calls: Array<{ ks: number[]; sealed: ReturnType<WholeSealer['seal']> }> = [];
  let k = 0;
  for (const [from, to] of runs) {
    const ks: number[] = [];
    const at: number[] = [];
    for (; k < idx.length && idx[k]! < to; k++) {
      ks.push(k);
      at.push(idx[k]! - from);
    }
    if (ks.length === 0) continue;
    const offsets = new Uint32Array(to - from + 1);
    offsets[0] = chunks.plain(from).byteOffset;
    for (let i = from; i < to; i++) offsets[i - from + 1] = offsets[i - from]! + chunks.length(i);
    calls.push({ ks, sealed: w.seal(dataKey, level, chunks.source(from), offsets, ids.subarray(from * CHUNK_ID_BYTES, to * CHUNK_ID_BYTES), Uint32Array.from(at)) });
  }
  const settled = await Promise.allSettled(calls.map((c) => c.sealed));
  const releases: Array<() => void> = [];
  for (const r of settled) if (r.status === 'fulfilled') releases.push(r.value.release);
  const release = () => releases.forEach((r) => r());
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed) {
    release();
    throw (failed as PromiseRejectedResult).reason;
  }
  const blobs: Array<Buffer | undefined> = new Array(idx.length);
  settled.forEach((r, c) => {
    const sealed = (r as PromiseFulfilledResult<{ blobs: Array<Buffer | undefined> }>).value.blobs;
    calls[c]!.ks.forEach((k, j) => (blobs[k] = sealed[j]));
  });
  return { blobs, release };
}

// up to two requests at once (SealPool): they interleave only where one awaits the addon's sealing
// of its whole chunks (its deltas are made by then), and each has its own output buffers (both
// may read one segment of the pipeline)
parentPort!.on('message', async (msg: SealRequest | { key: Uint8Array; idKey: Uint8Array }) => {
  if ('key' in msg) {
    keys = { dataKey: Buffer.from(msg.key), idKey: Buffer.from(msg.idKey) };
    sealers.clear();
    return;
  }
  const req = msg;
  const n = req.offsets.length - 1;
  let sealing: ReturnType<typeof sealWholeRuns> | null = null;
  let release = () => {};
  try {
    let sealer = sealers.get(req.level);
    if (!sealer) sealers.set(req.level, (sealer = new BlobSealer(keys!.dataKey, req.level)));
    const chunks = new BatchChunks(req);
    const ids = Buffer.from(req.ids);
    const blobs: Buffer[] = new Array(n);
    const idList: Buffer[] = new Array(n);
    const delta = new Uint8Array(n);
    const baseCount = new Uint8Array(n);
    const usedBases: number[] = [];
    const b = req.bases;
    const opener = b ? baseOpener(b) : null;
    const hasBases = (i: number) => b !== null && b.start[i + 1]! > b.start[i]!;
    // chunks with no bases to try go to the addon's threads while this one makes the deltas
    const wholeIdx = whole ? Uint32Array.from({ length: n }, (_, i) => i).filter((i) => !hasBases(i)) : new Uint32Array(0);
    sealing = wholeIdx.length > 0 ? sealWholeRuns(whole!, keys!.dataKey, req.level, chunks, n, ids, wholeIdx) : null;
    for (let i = 0; i < n; i++) {
      idList[i] = ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES);
      if (sealing && !hasBases(i)) continue;
      const plain = chunks.plain(i);
      if (b && opener && hasBases(i)) {
        // the bases that could be opened, in order; the chunk's row records exactly these
        const refs = [...b.refs.subarray(b.start[i]!, b.start[i + 1]!)].filter((r) => opener.base(r) !== undefined);
        const sets = refs.length === 0 ? [] : baseSets(refs);
        const { blob, chosen } = sealer.sealBest(
          plain,
          idList[i]!,
          sets.map((set) => ({ ids: set.map((r) => b.ids.subarray(r * CHUNK_ID_BYTES, (r + 1) * CHUNK_ID_BYTES)), plain: opener.dict(set), stored: set.reduce((n, r) => n + b.length[r]!, 0) })),
          { again: b.again[i] === 1 },
        );
        blobs[i] = blob;
        if (chosen >= 0) {
          delta[i] = 1;
          usedBases.push(...sets[chosen]!);
          baseCount[i] = sets[chosen]!.length;
        }
      } else {
        blobs[i] = sealer.seal(plain, idList[i]!);
      }
    }
    if (sealing) {
      const sealed = await sealing;
      release = sealed.release;
      wholeIdx.forEach((i, k) => (blobs[i] = sealed.blobs[k] ?? sealer.seal(chunks.plain(i), idList[i]!)));
    }
    // the pack is built in a shared buffer: no copy when it is posted, and none of the
    // external memory churn that costs the receiving thread a full GC every few transferred packs
    let out = req.out;
    const size = blobs.reduce((a, b) => a + b.length, 0) + n * PACK_ENTRY + PACK_TRAILER;
    if (!out || out.byteLength < size) out = new SharedArrayBuffer(Math.ceil((size * 1.25) / 65536) * 65536);
    const pack = encodePack(blobs, idList, out);
    release(); // the pack holds its own copy of the blobs
    const digests = new Uint8Array(n * DIGEST_BYTES);
    pack.entries.forEach((e, i) => digests.set(e.digest!, i * DIGEST_BYTES));
    const blobOffsets = new Uint32Array(n + 1);
    for (let i = 0; i < n; i++) blobOffsets[i] = pack.entries[i]!.offset;
    blobOffsets[n] = n > 0 ? pack.entries[n - 1]!.offset + pack.entries[n - 1]!.length : 0;
    const transfer: ArrayBuffer[] = [...transferable(req.data), blobOffsets.buffer as ArrayBuffer, digests.buffer as ArrayBuffer];
    let sha256: string | null = null;
    if (req.sha256) sha256 = createHash('sha256').update(pack.bytes).digest('hex');
    parentPort!.postMessage({ seq: req.seq, data: req.data, packId: pack.id, blobOffsets, pack: out, packLength: pack.bytes.length, packSha256: sha256, delta, baseCount, usedBases: Uint32Array.from(usedBases), digests } satisfies SealResponse, transfer);
  } catch (e) {
    // the addon's threads write into this worker's buffers: they are done before these are reused
    await sealing?.then((s) => s.release()).catch(() => {});
    const err = e as NodeJS.ErrnoException;
    const res: SealResponse = { seq: req.seq, data: req.data, packId: '', blobOffsets: new Uint32Array(0), pack: null, packLength: 0, packSha256: null, delta: new Uint8Array(0), baseCount: new Uint8Array(0), usedBases: new Uint32Array(0), digests: new Uint8Array(0), error: `${err.code ? err.code + ': ' : ''}${err.message}` };
    parentPort!.postMessage(res, transferable(req.data));
  }
});
