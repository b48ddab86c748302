import { once } from 'node:events';
import { promises as fsp, createWriteStream, fdatasync, type WriteStream } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Writable } from 'node:stream';
import { KuraError, ioError } from '../errors.js';
import { DeltaOpener, dictionaryPieces, type BlobSource } from './bases.js';
import { BufferPool } from './buffers.js';
import { readBlobs } from '../repository/reader.js';
import type { RepoKeys } from '../crypto/keys.js';
import type { Repository } from '../repository/repository.js';
import { openSnapshotPrivate, snapshotChunkIds, type DecodedSnapshot } from '../repository/snapshot.js';
import { idsOf } from '../repository/chunklist.js';
import { blobInfo, CHUNK_ID_BYTES } from '../crypto/blob.js';
import { openingAddon, type NativeAddon } from '../native.js';
import { holdHeapGrowth } from '../heap-growth.js';

export interface RestoreResult {
  id: string;
  bytes: number;
  chunks: number;
  seconds: number;
}

export type { BlobSource };

const SEGMENT_BYTES = 8 << 20; // chunk capacity of a segment: its deltas' bases are fetched after it
const PARTS = 2; // a segment is opened as this many pieces side by side on libuv's pool
const SEGMENTS_AHEAD = 3; // segments read and being opened while an earlier one is written
/**
 * Segments (and their deltas' bases) being read at once from an object store, ahead of the one
 * prepared, as long as the bytes they hold (estimated from those read so far) stay under
 * READING_BYTES; each is read a pack at a time (ReadOptions.byPack). Each read waits a round
 * trip, and a segment of a night of deltas needs two (its chunks, then their bases). A 488 MB
 * dump's fourth night from Ceph RGW, one segment at a time in runs as from a directory: 13-16 s
 * at the default chunk size, 177 s in 4 KiB chunks (3.2 s from a directory). Read a pack at a
 * time, 8 segments at once: 2.7-3.0 s; 24: 2.1-2.3 s at 149-153 MiB, and 5.2-5.4 s in 4 KiB
 * chunks at 176-178 MiB.
 */
const REMOTE_SEGMENTS_READING = 24;
const READING_BYTES = 32 << 20;

export interface RestoreOptions {
  /** segments the source may be reading at once (1: one stream at a time) */
  reading?: number | undefined;
  /** chunks those segments may ask for together (a vault's requests in flight); default: no limit */
  readingChunks?: number | undefined;
}

/**
 * Streams a snapshot's chunks in order into `out`, verifying every chunk (GCM tag, then the
 * plaintext re-hashed against its ID). The chunks are read in segments of at most 32 MiB of
 * chunk capacity; the base chunks the segment's deltas need are read after it. With the native
 * addon a segment is opened off the main thread in pieces side by side, while the main thread
 * reads the next segments and writes the last one out, in order; at most SEGMENTS_AHEAD segments
 * are held, so memory stays bounded whatever the snapshot's size.
 */
export async function restoreStream(snap: DecodedSnapshot, keys: RepoKeys, blobs: BlobSource, out: Writable, progress?: Progress, o: RestoreOptions = {}): Promise<RestoreResult> {
  const t0 = process.hrtime.bigint();
  const snapshotId = snap.id;
  openSnapshotPrivate(snap, keys.dataKey); // authenticates header + chunk list
  const ids = [...idsOf(await snapshotChunkIds(snap, blobs))];
  const opener = new DeltaOpener(keys, blobs);
  const perSegment = chunksPerSegment(snap.header.chunker?.maxSize);
  const ctx: SegmentContext = { snapshotId, keys, opener, what: `snapshot ${snapshotId}`, progress, total: snap.header.logicalBytes };
  progress?.(0, ctx.total);
  const native = openingAddon();
  const reading = { segments: Math.max(1, o.reading ?? 1), chunks: o.readingChunks ?? Infinity };
  const bytes = native ? await pipelined(ids, perSegment, blobs, out, ctx, native, reading) : await oneByOne(ids, perSegment, blobs, out, ctx);
  if (bytes !== snap.header.logicalBytes) {
    throw new KuraError('E_SNAPSHOT_CORRUPT', `snapshot ${snapshotId} restored ${bytes} bytes but records ${snap.header.logicalBytes}`);
  }
  return { id: snapshotId, bytes, chunks: ids.length, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

/**
 * Chunks a segment holds: SEGMENT_BYTES of chunk capacity, at least two (one per piece at PARTS
 * 2), at most 4096. Sixteen at least held 16 chunks of 4 MiB capacity per segment: restoring a
 * repository of 1 MiB chunks peaked at 537-581 MiB of RSS. A snapshot whose header has no sizes
 * is of a kura whose chunks were at most 256 KiB.
 */
export function chunksPerSegment(maxChunkSize = 256 << 10): number {
  return Math.max(PARTS, Math.min(4096, Math.floor(SEGMENT_BYTES / maxChunkSize)));
}

/** Told the bytes written so far and the snapshot's size, after each write (a progress meter). */
export type Progress = (bytes: number, total: number) => void;

interface SegmentContext {
  snapshotId: string;
  progress?: Progress | undefined;
  total: number;
  keys: RepoKeys;
  opener: DeltaOpener;
  what: string;
}

type Blob = { id: Buffer; blob: Buffer };

async function readSegment(blobs: BlobSource, ids: Buffer[], ctx: SegmentContext): Promise<Blob[]> {
  const segment: Blob[] = [];
  for await (const b of blobs(ids, ctx.what)) segment.push(b);
  await ctx.opener.prepare(segment, ctx.what);
  return segment;
}

/** Open one blob on this thread (with these bases, or those prepared); a failure names the snapshot and the offset of the chunk. */
function openHere(ctx: SegmentContext, b: Blob, offset: number, bases: Buffer[] | null = null): Buffer {
  try {
    return ctx.opener.open(b.blob, b.id, bases);
  } catch (e) {
    if (e instanceof KuraError) throw new KuraError(e.code, `${e.message} (snapshot ${ctx.snapshotId}, offset ${offset})`, { ...e.details, snapshot: ctx.snapshotId });
    throw e;
  }
}

/** Write `b`; `written` is called once the stream is done with its bytes (never if it fails). */
async function write(out: Writable, b: Buffer, written?: () => void): Promise<void> {
  const more = written ? out.write(b, (e) => e || written()) : out.write(b);
  if (!more) await once(out, 'drain'); // rejects if the stream errors meanwhile
}

/** A piece of a segment opened: its plaintexts, and the pooled buffer they lie in (null: not pooled). */
type Opened = { plain: Buffer; buffer: Buffer | null };

/** Without the native addon: every chunk opened on the main thread, in turn. */
async function oneByOne(ids: Buffer[], perSegment: number, blobs: BlobSource, out: Writable, ctx: SegmentContext): Promise<number> {
  let bytes = 0;
  for (let at = 0; at < ids.length; at += perSegment) {
    for (const b of await readSegment(blobs, ids.slice(at, at + perSegment), ctx)) {
      const plain = openHere(ctx, b, bytes);
      bytes += plain.length;
      await write(out, plain);
      ctx.progress?.(bytes, ctx.total);
    }
  }
  return bytes;
}

/** The bytes blobs keep alive: the buffers they were read in (a read of near ranges joined holds the bytes between them too). */
function held(...lists: Blob[][]): number {
  const buffers = new Set<ArrayBufferLike>();
  let n = 0;
  for (const list of lists) {
    for (const { blob } of list) {
      if (buffers.has(blob.buffer)) continue;
      buffers.add(blob.buffer);
      n += blob.buffer.byteLength;
    }
  }
  return n;
}

/**
 * Opens a segment in PARTS pieces on libuv's pool; resolves with their plaintexts in order. A
 * piece that does not open is opened again here, blob by blob, for the error of the first damaged
 * chunk with its offset (`start`: the offset of the segment's first byte).
 */
function openSegment(native: NativeAddon, ctx: SegmentContext, segment: Blob[], start: number, pool: BufferPool): { opened: Promise<Opened[]>; bytes: number } {
  const size = Math.ceil(segment.length / PARTS);
  const pieces: Promise<Opened>[] = [];
  let offset = start;
  for (let at = 0; at < segment.length; at += size) {
    const piece = segment.slice(at, at + size);
    // each header parsed once (a night of 4 KiB-chunk deltas: 75 000 blobs, 56 000 bases)
    const infos = piece.map((b) => blobInfo(b.blob));
    const pieceStart = offset;
    for (const info of infos) offset += info?.plainLength ?? 0;
    const bytes = offset - pieceStart;
    // the deltas' bases, held from reuse until this piece's job and its error path are done
    const bases = infos.some((info) => (info?.bases.length ?? 0) > 0) ? infos.map((info) => ctx.opener.basesOf(info)) : null;
    const dicts = bases ? bases.map(dictionaryPieces) : null;
    const release = bases ? ctx.opener.pin(infos) : () => {};
    const ids = Buffer.allocUnsafe(piece.length * CHUNK_ID_BYTES);
    piece.forEach((b, i) => b.id.copy(ids, i * CHUNK_ID_BYTES));
    const buffer = pool.take(bytes);
    pieces.push(
      native
        .openBlobs(ctx.keys.dataKey, ctx.keys.idKey, piece.map((b) => b.blob), ids, dicts, buffer)
        .then((r) => {
          if (typeof r !== 'number') return { plain: r.subarray(0, bytes), buffer: r === buffer ? buffer : null };
          pool.give(buffer);
          let at = pieceStart;
          piece.forEach((b, j) => (at += openHere(ctx, b, at, bases?.[j] ?? null).length)); // throws at the damaged one
          throw new KuraError('E_CHUNK_CORRUPT', `a chunk of snapshot ${ctx.snapshotId} near offset ${pieceStart} did not open (reason ${r & 7}), yet opens on a second try; run "kura check --read-data"`, { snapshot: ctx.snapshotId });
        })
        .finally(release),
    );
  }
  return { opened: Promise.all(pieces), bytes: offset - start };
}

/**
 * The pipeline: read segment n+1 (and its bases) while segment n is opened on libuv's pool and
 * segment n-1 is written. Output order is the snapshot's; the first error stops both ends. With
 * `reading` above 1, that many segments are read at once (their chunks, then their bases), each
 * prepared in turn once read.
 */
async function pipelined(ids: Buffer[], perSegment: number, blobs: BlobSource, out: Writable, ctx: SegmentContext, native: NativeAddon, limits: { segments: number; chunks: number }): Promise<number> {
  const reading = limits.segments;
  const opened: Array<Promise<Opened[]>> = [];
  const pool = new BufferPool((SEGMENTS_AHEAD + 1) * PARTS);
  const wake: { room?: () => void; more?: () => void } = {};
  let readerDone = false;
  let failed: unknown = null;
  const reads: Array<Promise<{ segment: Blob[]; bases: Blob[] }>> = [];
  let readFrom = 0;
  let chunksReading = 0; // chunks of the segments in `reads`
  // stored bytes of the segments read so far (their bases too), for the next ones' estimate
  const seen = { bytes: 0, segments: 0 };
  // (until one is read, a segment is taken to hold its whole chunk capacity)
  const estimate = () => (seen.segments === 0 ? SEGMENT_BYTES : seen.bytes / seen.segments);
  const readAhead = () => {
    while (failed === null && reads.length < reading && readFrom < ids.length && (reads.length === 0 || ((reads.length + 1) * estimate() <= READING_BYTES && chunksReading + perSegment <= limits.chunks))) {
      const segmentIds = ids.slice(readFrom, (readFrom += perSegment));
      chunksReading += segmentIds.length;
      const p = (async () => {
        const segment: Blob[] = [];
        for await (const b of blobs(segmentIds, ctx.what)) segment.push(b);
        // one segment at a time: its bases are read by prepare, between two streams of the source
        const bases = reading > 1 ? await ctx.opener.fetch(segment, ctx.what) : [];
        seen.segments++;
        seen.bytes += held(segment, bases);
        return { segment, bases };
      })();
      p.catch(() => {}); // awaited below
      reads.push(p);
    }
  };
  const reader = (async () => {
    try {
      let start = 0;
      while (failed === null) {
        readAhead();
        const read = reads.shift();
        if (!read) break;
        const { segment, bases } = await read;
        chunksReading -= segment.length;
        if (reading > 1) readAhead();
        await ctx.opener.prepare(segment, ctx.what, bases);
        const { opened: p, bytes } = openSegment(native, ctx, segment, start, pool);
        p.catch(() => {}); // awaited by the writer
        start += bytes;
        opened.push(p);
        wake.more?.();
        while (opened.length >= SEGMENTS_AHEAD && failed === null) await new Promise<void>((r) => (wake.room = r));
      }
    } catch (e) {
      failed ??= e;
    } finally {
      // reads under way when the restore stops are waited for: none outlives the restore
      await Promise.allSettled(reads);
      readerDone = true;
      wake.more?.();
    }
  })();
  let bytes = 0;
  try {
    for (;;) {
      while (opened.length === 0 && !readerDone) await new Promise<void>((r) => (wake.more = r));
      if (failed !== null) throw failed;
      const next = opened.shift();
      if (!next) break;
      wake.room?.();
      for (const { plain, buffer } of await next) {
        bytes += plain.length;
        await write(out, plain, buffer ? () => pool.give(buffer) : undefined);
        ctx.progress?.(bytes, ctx.total);
      }
    }
  } catch (e) {
    failed ??= e;
    wake.room?.();
    await reader;
    throw failed;
  }
  await reader;
  if (failed !== null) throw failed;
  return bytes;
}

export async function restoreTo(repo: Repository, snapshotId: string, out: Writable, progress?: Progress): Promise<RestoreResult> {
  const snap = await repo.readSnapshot(snapshotId);
  if (repo.store.local) return restoreStream(snap, repo.keys, (ids, what) => readBlobs(repo, ids, what, { blocking: true }), out, progress);
  // an object store: many segments read at once, each a pack at a time (heap-growth.ts says why held)
  const release = holdHeapGrowth();
  try {
    return await restoreStream(snap, repo.keys, (ids, what) => readBlobs(repo, ids, what, { byPack: true }), out, progress, { reading: REMOTE_SEGMENTS_READING });
  } finally {
    release();
  }
}

/**
 * Restore into a file: written beside the target under a temporary name and renamed only when
 * every chunk verified, so a failed restore never leaves something that looks complete. On a
 * failure the temporary file is closed (a write still under way is waited for, and its
 * "destroyed" error is no news) and removed; the caller gets the failure that stopped the restore.
 */
export async function restoreToFile(target: string, run: (out: Writable) => Promise<RestoreResult>): Promise<RestoreResult> {
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.kura-partial-${randomBytes(4).toString('hex')}`);
  const ws = createWriteStream(tmp, { flags: 'wx', mode: 0o640 });
  let writeError: Error | null = null;
  ws.on('error', (e) => (writeError ??= e));
  let fd: number;
  try {
    [fd] = (await once(ws, 'open')) as [number];
  } catch (e) {
    throw ioError(`cannot create ${tmp}`, e);
  }
  const behind = new WriteBehind(ws, fd);
  try {
    const r = await run(ws);
    await behind.stop();
    ws.end();
    await once(ws, 'finish');
    const fh = await fsp.open(tmp, 'r');
    await fh.sync();
    await fh.close();
    await fsp.rename(tmp, target);
    return r;
  } catch (e) {
    await behind.stop();
    if (!ws.closed) {
      const closed = once(ws, 'close').catch(() => {});
      ws.destroy();
      await closed;
    }
    await fsp.unlink(tmp).catch(() => {});
    // the file could not be written (a full disk, say): that, not the stream's state, is the news
    if (writeError && !(e instanceof KuraError)) throw ioError(`cannot write ${tmp}`, writeError);
    throw e;
  }
}

const BEHIND_BYTES = 64 << 20; // written and not yet flushed before a flush starts
const BEHIND_CHECK_MS = 100;

/**
 * Flushes a file being written every BEHIND_BYTES, one fdatasync at a time on libuv's pool, while
 * the writing goes on: the disk writes the restored bytes while the next ones are opened, and the
 * fsync before the rename waits only for the tail (a 480 MiB restore: the final fsync took about
 * as long as a third of the restore when everything was left to it). A failed flush is no news
 * here: the final fsync reports it.
 */
class WriteBehind {
  private flushed = 0;
  private inFlight: Promise<void> | null = null;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly ws: WriteStream,
    private readonly fd: number,
  ) {
    this.timer = setInterval(() => this.check(), BEHIND_CHECK_MS);
  }

  private check(): void {
    const written = this.ws.bytesWritten;
    if (this.inFlight || written - this.flushed < BEHIND_BYTES || this.ws.closed) return;
    this.inFlight = new Promise<void>((resolve) =>
      fdatasync(this.fd, () => {
        this.flushed = written;
        this.inFlight = null;
        resolve();
      }),
    );
  }

  /** No more flushes; waits for one under way (the file is closed or removed only after it). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.inFlight;
  }
}
