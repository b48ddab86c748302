import { KuraError } from '../errors.js';
import { packName, type LocalDisk } from '../store/backend.js';
import type { Repository } from './repository.js';
import type { ChunkLocation } from './catalogue.js';

const MAX_RUN = 8 << 20; // bytes per range read
const READ_AHEAD = 4; // range reads in flight
/** on an object store, where each read waits a round trip before its first byte */
const REMOTE_READ_AHEAD = 12;
const LOCATE_AHEAD = 1000; // chunks looked up in the catalogue at a time

/** Consecutive chunks that sit back to back in one pack: read with one range read. */
interface Run {
  pack: string;
  offset: number;
  length: number;
  ids: Buffer[];
  lengths: number[];
  /** the digests recorded for them (null: written before pack format 2) */
  digests: Array<Buffer | null>;
}

/**
 * `ids` with their locations, looked up LOCATE_AHEAD at a time; a chunk not held fails
 * (E_CHUNK_MISSING). `digests: false`: without the digests recorded (null), for a reader that opens
 * the blobs.
 */
export function* located(repo: Repository, ids: Iterable<Buffer>, what: string, digests = true): Generator<{ id: Buffer; loc: ChunkLocation }> {
  const batch: Buffer[] = [];
  const flush = function* () {
    const locs = repo.catalogue.locations(batch, digests);
    for (let i = 0; i < batch.length; i++) {
      const id = batch[i]!;
      const loc = locs[i];
      if (!loc) {
        const hex = id.toString('hex');
        if (repo.catalogue.quarantine.chunkIds().has(hex)) {
          throw new KuraError('E_CHUNK_MISSING', `chunk ${hex} of ${what} is quarantined (its stored copy was found damaged); a backup that meets the same data stores it again, or restore from a vault that holds it ("kura restore --from ROUTE")`, { chunk: hex, quarantined: true });
        }
        throw new KuraError('E_CHUNK_MISSING', `chunk ${hex} of ${what} is not in the catalogue; run "kura check", or "kura repo rebuild-index" if the catalogue was lost`, { chunk: hex });
      }
      yield { id, loc };
    }
    batch.length = 0;
  };
  for (const id of ids) {
    batch.push(id);
    if (batch.length === LOCATE_AHEAD) yield* flush();
  }
  if (batch.length > 0) yield* flush();
}

function* planRuns(chunks: Iterable<{ id: Buffer; loc: ChunkLocation }>): Generator<Run> {
  let run: Run | null = null;
  for (const { id, loc } of chunks) {
    if (run && run.pack === loc.pack && run.offset + run.length === loc.offset && run.length + loc.length <= MAX_RUN) {
      run.length += loc.length;
    } else {
      if (run) yield run;
      run = { pack: loc.pack, offset: loc.offset, length: loc.length, ids: [], lengths: [], digests: [] };
    }
    run.ids.push(id);
    run.lengths.push(loc.length);
    run.digests.push(loc.digest ?? null);
  }
  if (run) yield run;
}

/**
 * The stored blobs of `ids`, in order, read from their packs with coalesced range reads and a
 * small read-ahead (bounded memory whatever the number of chunks).
 */
export function readBlobs(repo: Repository, ids: Iterable<Buffer>, what: string, how: ReadOptions = {}): AsyncGenerator<{ id: Buffer; blob: Buffer }> {
  return readBlobsAt(repo, located(repo, ids, what, false), what, how); // blobs only: their digests are not passed on
}

export interface ReadOptions {
  /**
   * On a local disk, read on the calling thread (a restore: its reads run ahead of the pool
   * threads that open them, and the thread has nothing else to do meanwhile). Not for a server.
   */
  blocking?: boolean;
  /**
   * Read every blob asked for from one pack with one getRanges call (the store joins near ranges
   * into one request), all the packs side by side, and yield them in the order asked: for an
   * object store, where each request waits a round trip, and a snapshot of many nights' small
   * chunks alternates between packs every few chunks. Holds all the blobs asked for at once: ask
   * for a segment at a time.
   */
  byPack?: boolean;
}

/**
 * A fetcher for chunk list blocks: read in pack order (a list's blocks come from many nights'
 * packs, interleaved; in order each block would open its pack again), yielded in the order asked.
 * Holds all the blocks asked for at once: lists are small (32 bytes per chunk).
 */
export function listFetcher(repo: Repository): (ids: Buffer[], what: string) => AsyncGenerator<{ id: Buffer; blob: Buffer }> {
  return async function* (ids, what) {
    const sorted = [...located(repo, ids, what, false)].sort((a, b) => (a.loc.pack < b.loc.pack ? -1 : a.loc.pack > b.loc.pack ? 1 : a.loc.offset - b.loc.offset));
    const got = new Map<string, Buffer>();
    for await (const { id, blob } of readBlobsAt(repo, sorted, what)) got.set(id.toString('base64'), blob);
    for (const id of ids) yield { id, blob: got.get(id.toString('base64'))! };
  };
}

/** Like readBlobs, for chunks already located (sorted by pack and offset, they read in long runs). */
export async function* readBlobsAt(repo: Repository, chunks: Iterable<{ id: Buffer; loc: ChunkLocation }>, what: string, how: ReadOptions = {}): AsyncGenerator<{ id: Buffer; blob: Buffer }> {
  for await (const run of readRunsAt(repo, chunks, what, how)) {
    let off = 0;
    for (let i = 0; i < run.ids.length; i++) yield { id: run.ids[i]!, blob: run.bytes.subarray(off, (off += run.lengths[i]!)) };
  }
}

/** A run of blobs of `ids` that lie back to back: `bytes` holds them in order, `lengths` says where each ends. */
export interface BlobRun {
  ids: Buffer[];
  lengths: number[];
  bytes: Buffer;
  /** the digests recorded when they were written (null: before pack format 2) */
  digests: Array<Buffer | null>;
  /** where the run was read: its pack and the offset of its first blob */
  pack: string;
  offset: number;
}

/** The stored blobs of `ids`, in order, as the runs they were read in (a sender can pass a run on whole). */
export function readRuns(repo: Repository, ids: Iterable<Buffer>, what: string): AsyncGenerator<BlobRun> {
  return readRunsAt(repo, located(repo, ids, what), what);
}

async function* readRunsAt(repo: Repository, chunks: Iterable<{ id: Buffer; loc: ChunkLocation }>, what: string, how: ReadOptions = {}): AsyncGenerator<BlobRun> {
  const blocking = how.blocking ? repo.store.local : null;
  const readAhead = repo.store.local ? READ_AHEAD : REMOTE_READ_AHEAD;
  // one run, read again chunk by chunk: a GC may have moved them since the run was planned
  const refetch = async (run: Run, bytes: Buffer | null): Promise<Buffer> => {
    if (!bytes || bytes.length !== run.length) {
      const moved = repo.catalogue.location(run.ids[0]!);
      if (moved && moved.pack !== run.pack) {
        const parts: Buffer[] = [];
        for (const id of run.ids) {
          const b = await readChunk(repo, id);
          if (!b) break;
          parts.push(b);
        }
        if (parts.length === run.ids.length) bytes = Buffer.concat(parts);
      }
    }
    if (!bytes || bytes.length !== run.length) {
      const hex = run.ids[0]!.toString('hex');
      throw new KuraError('E_CHUNK_MISSING', `pack ${run.pack} holding chunk ${hex} of ${what} is missing or truncated; run "kura check"`, { chunk: hex, pack: run.pack });
    }
    return bytes;
  };
  if (blocking) {
    // on this thread, through windows of each pack (a pread each, not one for every few chunks)
    const windows = new ReadWindows(blocking);
    for (const run of planRuns(chunks)) {
      const got = windows.read(packName(run.pack), run.offset, run.length);
      const bytes = got && got.length === run.length ? got : await refetch(run, got);
      yield { ids: run.ids, lengths: run.lengths, bytes, digests: run.digests, pack: run.pack, offset: run.offset };
    }
    return;
  }
  const byPackReads = how.byPack;
  const groups = groupRuns(planRuns(chunks));
  const fetch = async (group: Run[]) => {
    const name = packName(group[0]!.pack);
    // a pack's runs read into one buffer of their size: the store joins near ranges into one
    // request, and the bytes between them are not kept with the runs
    const into = byPackReads ? Buffer.allocUnsafe(group.reduce((n, r) => n + r.length, 0)) : undefined;
    const got = group.length === 1 && !into ? [await repo.store.getRange(name, group[0]!.offset, group[0]!.length)] : await repo.store.getRanges(name, group, into);
    return Promise.all(group.map(async (run, i) => ({ run, bytes: await refetch(run, got?.[i] ?? null) })));
  };
  if (byPackReads) {
    yield* byPack([...planRuns(chunks)], fetch, readAhead);
    return;
  }
  const queue: Array<Promise<Array<{ run: Run; bytes: Buffer }>>> = [];
  const fill = () => {
    while (queue.length < readAhead) {
      const next = groups.next();
      if (next.done) return;
      const p = fetch(next.value);
      p.catch(() => {}); // observed when awaited below
      queue.push(p);
    }
  };
  fill();
  while (queue.length > 0) {
    const done = await queue.shift()!;
    fill();
    for (const { run, bytes } of done) yield { ids: run.ids, lengths: run.lengths, bytes, digests: run.digests, pack: run.pack, offset: run.offset };
  }
}

const WINDOW_BYTES = 32 << 10;
const WINDOWS = 8;

/**
 * Blocking reads of a local disk (one readBlobs call: a restore's segment, or its bases) through
 * a window of each of the last WINDOWS packs read: a
 * range outside its pack's window reads the WINDOW_BYTES from its start (or the range, if
 * longer). A snapshot of small chunks from many nights alternates between packs every few
 * chunks, each pack's chunks in rising offsets: one pread for every few chunks becomes one a
 * window. A window's buffer stays alive while blobs read from it do.
 */
class ReadWindows {
  private readonly byName = new Map<string, { start: number; bytes: Buffer }>();

  constructor(private readonly disk: LocalDisk) {}

  /** The bytes of a range (shorter at the object's end), or null when the object is absent. */
  read(name: string, offset: number, length: number): Buffer | null {
    let w = this.byName.get(name);
    if (!w || offset < w.start || offset + length > w.start + w.bytes.length) {
      const got = this.disk.getRangesSync(name, [{ offset, length: Math.max(length, WINDOW_BYTES) }]);
      if (!got) return null;
      w = { start: offset, bytes: got[0]! };
      if (this.byName.size >= WINDOWS && !this.byName.has(name)) this.byName.delete(this.byName.keys().next().value!);
    }
    this.byName.delete(name); // most recently used last
    this.byName.set(name, w);
    return w.bytes.subarray(offset - w.start, offset - w.start + length);
  }
}

/**
 * Runs read a pack at a time (every run of one pack in one fetch, up to `inFlight` fetches at
 * once, packs in the order first needed) and yielded in their order: a run waits only for its
 * own pack's fetch.
 */
async function* byPack(runs: Run[], fetch: (group: Run[]) => Promise<Array<{ run: Run; bytes: Buffer }>>, inFlight: number): AsyncGenerator<BlobRun> {
  const packs = new Map<string, Run[]>();
  const place = new Map<Run, number>(); // a run's place in its pack's fetch
  for (const run of runs) {
    let group = packs.get(run.pack);
    if (!group) packs.set(run.pack, (group = []));
    place.set(run, group.length);
    group.push(run);
  }
  const order = [...packs.values()];
  const fetched = new Map<Run[], Promise<Array<{ run: Run; bytes: Buffer }>>>();
  let next = 0;
  let running = 0;
  const start = () => {
    const group = order[next++]!;
    running++;
    const p = fetch(group);
    fetched.set(group, p);
    p.catch(() => {}).finally(() => {
      running--;
      fill();
    });
  };
  let stopped = false; // the reader failed or stopped early: no more packs are started
  const fill = () => {
    while (!stopped && next < order.length && running < inFlight) start();
  };
  try {
    fill();
    for (const run of runs) {
      const group = packs.get(run.pack)!;
      while (!fetched.has(group)) start(); // needed now, whatever else is being read
      const { bytes } = (await fetched.get(group)!)[place.get(run)!]!;
      yield { ids: run.ids, lengths: run.lengths, bytes, digests: run.digests, pack: run.pack, offset: run.offset };
    }
  } finally {
    stopped = true;
  }
}

/** Consecutive runs in one pack, read with the pack opened once (at most MAX_RUN bytes per group). */
function* groupRuns(runs: Iterable<Run>): Generator<Run[]> {
  let group: Run[] = [];
  let bytes = 0;
  for (const run of runs) {
    if (group.length > 0 && (group[0]!.pack !== run.pack || bytes + run.length > MAX_RUN)) {
      yield group;
      group = [];
      bytes = 0;
    }
    group.push(run);
    bytes += run.length;
  }
  if (group.length > 0) yield group;
}

/**
 * One stored blob by chunk ID, or null when the repository does not hold it. A GC that moves the
 * chunk between the catalogue lookup and the read is seen as a missing pack: look it up again.
 */
export async function readChunk(repo: Repository, id: Buffer): Promise<Buffer | null> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const loc = repo.catalogue.location(id);
    if (!loc) return null;
    const blob = await repo.store.getRange(packName(loc.pack), loc.offset, loc.length);
    if (blob && blob.length === loc.length) return blob;
    const again = repo.catalogue.location(id);
    if (!again || again.pack === loc.pack) return null;
  }
  return null;
}
