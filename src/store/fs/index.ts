import { randomBytes } from 'node:crypto';
import { promises as fsp, constants as fsc, closeSync, openSync, readSync } from 'node:fs';
import path from 'node:path';
import { threadId } from 'node:worker_threads';
import { ioError } from '../../errors.js';
import type { LocalDisk, StoreBackend, StoreStat } from '../backend.js';
import { ReadHandles } from './handles.js';
import { spansOf } from '../spans.js';

/** ranges at most this far apart are read together (the bytes between are read and dropped), in reads of at most MAX_SPAN */
const JOIN_GAP = 64 << 10;
const MAX_SPAN = 1 << 20;

const TMP_PREFIX = '.tmp-';

let tempCounter = 0;
function tempName(dir: string): string {
  return path.join(dir, `${TMP_PREFIX}${process.pid}-${threadId}-${(tempCounter++).toString(36)}`);
}

/**
 * Ranges of one object, read synchronously (compression workers reading delta bases); null
 * when the object is absent. `into`: a buffer at least as long as the ranges together, that they
 * are read into back to back (else each gets a buffer of its own).
 */
export function getRangesSync(root: string, name: string, ranges: ReadonlyArray<{ offset: number; length: number }>, into?: Buffer): Buffer[] | null {
  let fd: number;
  try {
    fd = openSync(path.join(root, ...name.split('/')), 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  try {
    let at = 0;
    return ranges.map(({ offset, length }) => {
      const buf = into ? into.subarray(at, (at += length)) : Buffer.allocUnsafe(length);
      const got = readFullySync(fd, buf, offset);
      return got === length ? buf : buf.subarray(0, got);
    });
  } finally {
    closeSync(fd);
  }
}

/**
 * Local directory backend.
 * - putIfAbsent (snapshots, keys): temp file → fdatasync → link to the final name (link fails if
 *   it exists: a true put-if-absent) → unlink temp → directory fsync in sync().
 * - put (packs): temp file → fdatasync → rename; sync() fsyncs the directory before the
 *   catalogue records anything in the pack.
 * Only kura's own files are flushed: syncfs(2) of the whole file system would also flush
 * whatever else the server is writing (its database, say).
 */
export class FsBackend implements StoreBackend, LocalDisk {
  readonly location: string;
  /** a local directory: seal workers read delta bases straight from it */
  readonly local: LocalDisk = this;
  /** directories whose entries changed since their last fsync, and how often (a sync forgets one only if unchanged meanwhile) */
  private readonly touchedDirs = new Map<string, number>();
  private readonly handles = new ReadHandles();

  constructor(readonly root: string) {
    this.location = root;
  }

  private pathOf(name: string): string {
    return path.join(this.root, ...name.split('/'));
  }

  async get(name: string): Promise<Buffer | null> {
    try {
      return await fsp.readFile(this.pathOf(name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw ioError(`cannot read ${name} in ${this.root}`, e);
    }
  }

  private async writeTemp(dir: string, data: Uint8Array | readonly Uint8Array[]): Promise<string> {
    const tmp = `${tempName(dir)}-${randomBytes(4).toString('hex')}`;
    let fh: fsp.FileHandle | undefined;
    try {
      fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o640);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      await fsp.mkdir(dir, { recursive: true });
      fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o640);
    }
    try {
      await writeAllv(fh, data instanceof Uint8Array ? [data] : data);
      await fh.datasync();
    } catch (e) {
      await fh.close().catch(() => {});
      await fsp.unlink(tmp).catch(() => {});
      throw e;
    }
    await fh.close();
    return tmp;
  }

  /**
   * Ranges within JOIN_GAP of each other are read with one read of at most MAX_SPAN (a vault
   * answering a restore reads a pack's few chunks of each request, a few KiB apart), and copied out
   * of it.
   */
  async getRanges(name: string, ranges: ReadonlyArray<{ offset: number; length: number }>, into?: Buffer): Promise<Buffer[] | null> {
    try {
      return await this.handles.use(this.pathOf(name), async (fh) => {
        const size = ranges.some((r) => r.offset < 0) ? (await fh.stat()).size : 0;
        const resolved = ranges.map(({ offset, length }) => ({ offset: offset < 0 ? Math.max(0, size + offset) : offset, length }));
        const fits = into !== undefined && ranges.reduce((n, r) => n + r.length, 0) <= into.length;
        const place = new Array<number>(ranges.length);
        for (let i = 0, at = 0; i < ranges.length; at += ranges[i]!.length, i++) place[i] = at;
        const out = new Array<Buffer>(ranges.length);
        // every span settled before the answer: nothing still writes into `into` once this returns or throws
        const settled = await Promise.allSettled(
          spansOf(resolved, JOIN_GAP, MAX_SPAN).map(async (s) => {
            const alone = s.members.length === 1;
            const m0 = s.members[0]!;
            // a range alone is read where it goes; a span into a buffer of its own, then copied out
            const buf = alone ? (fits ? into.subarray(place[m0.i]!, place[m0.i]! + m0.length) : Buffer.allocUnsafe(m0.length)) : Buffer.allocUnsafe(s.end - s.start);
            const got = await readFully(fh, buf, s.start);
            for (const m of s.members) {
              const length = Math.max(0, Math.min(m.length, got - (m.offset - s.start)));
              if (alone) out[m.i] = buf.subarray(0, length);
              else if (fits) out[m.i] = into.subarray(place[m.i]!, place[m.i]! + buf.copy(into, place[m.i]!, m.offset - s.start, m.offset - s.start + length));
              else out[m.i] = buf.subarray(m.offset - s.start, m.offset - s.start + length);
            }
          }),
        );
        const failed = settled.find((r) => r.status === 'rejected');
        if (failed) throw (failed as PromiseRejectedResult).reason;
        return out;
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw ioError(`cannot read ${name} in ${this.root}`, e);
    }
  }

  /**
   * getRanges on the calling thread, the file kept open between calls as for getRanges, and
   * ranges within JOIN_GAP of each other read at once (a restore's runs of one pack lie near
   * each other when a night's chunks alternate with older ones): one pread a span, and each
   * range a view of it.
   */
  getRangesSync(name: string, ranges: ReadonlyArray<{ offset: number; length: number }>): Buffer[] | null {
    try {
      return this.handles.useSync(this.pathOf(name), (fd) => {
        const out = new Array<Buffer>(ranges.length);
        for (const s of spansOf(ranges, JOIN_GAP, MAX_SPAN)) {
          const buf = Buffer.allocUnsafe(s.end - s.start);
          const got = readFullySync(fd, buf, s.start);
          for (const m of s.members) out[m.i] = buf.subarray(m.offset - s.start, Math.max(m.offset - s.start, Math.min(m.offset - s.start + m.length, got)));
        }
        return out;
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw ioError(`cannot read ${name} in ${this.root}`, e);
    }
  }

  async getRange(name: string, offset: number, length: number): Promise<Buffer | null> {
    return (await this.getRanges(name, [{ offset, length }]))?.[0] ?? null;
  }

  async putIfAbsent(name: string, data: Uint8Array): Promise<boolean> {
    const target = this.pathOf(name);
    const dir = path.dirname(target);
    try {
      const tmp = await this.writeTemp(dir, data);
      try {
        await fsp.link(tmp, target);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
        throw e;
      } finally {
        await fsp.unlink(tmp).catch(() => {});
      }
      this.touch(dir);
      return true;
    } catch (e) {
      throw ioError(`cannot write ${name} in ${this.root}`, e);
    }
  }

  async put(name: string, data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    const target = this.pathOf(name);
    const dir = path.dirname(target);
    try {
      const tmp = await this.writeTemp(dir, data); // fdatasync'd
      await fsp.rename(tmp, target);
      this.handles.forget(target);
      this.touch(dir);
    } catch (e) {
      throw ioError(`cannot write ${name} in ${this.root}`, e);
    }
  }

  async replace(name: string, data: Uint8Array): Promise<void> {
    const target = this.pathOf(name);
    const dir = path.dirname(target);
    try {
      const tmp = await this.writeTemp(dir, data);
      await fsp.rename(tmp, target);
      this.handles.forget(target);
      await fsyncDir(dir);
    } catch (e) {
      throw ioError(`cannot write ${name} in ${this.root}`, e);
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    const base = this.pathOf(prefix.replace(/\/$/, ''));
    yield* walk(base, prefix.replace(/\/?$/, '/'));
  }

  async *listWithSizes(prefix: string): AsyncIterable<{ name: string; size: number }> {
    for await (const name of this.list(prefix)) {
      const st = await this.stat(name);
      if (st) yield { name, size: st.size }; // gone meanwhile: not listed
    }
  }

  async delete(name: string): Promise<void> {
    this.handles.forget(this.pathOf(name));
    try {
      await fsp.unlink(this.pathOf(name));
      this.touch(path.dirname(this.pathOf(name)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw ioError(`cannot delete ${name} in ${this.root}`, e);
    }
  }

  async stat(name: string): Promise<StoreStat | null> {
    try {
      const s = await fsp.stat(this.pathOf(name));
      return { size: s.size, mtimeMs: s.mtimeMs };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw ioError(`cannot stat ${name} in ${this.root}`, e);
    }
  }

  /** Close the read handles kept open. */
  close(): void {
    this.handles.closeAll();
  }

  removeStaleTemps(olderThanMs: number): Promise<number> {
    return removeStaleTemps(this.root, olderThanMs);
  }

  private touch(dir: string): void {
    this.touchedDirs.set(dir, (this.touchedDirs.get(dir) ?? 0) + 1);
  }

  /**
   * A directory is forgotten only once its fsync succeeded and nothing was renamed into it
   * meanwhile: a sync that starts while another is flushing the same directory flushes it too
   * rather than return early, and a failed fsync is tried again by the next sync.
   */
  async sync(): Promise<void> {
    const dirs = [...this.touchedDirs];
    try {
      await Promise.all(dirs.map(([dir]) => fsyncDir(dir)));
    } catch (e) {
      throw ioError(`cannot make writes in ${this.root} durable`, e);
    }
    for (const [dir, n] of dirs) if (this.touchedDirs.get(dir) === n) this.touchedDirs.delete(dir);
  }
}

/** Read into all of `buf` from `pos`, or up to the end of the file: the bytes read. */
/** readFully on the calling thread: the bytes read into `buf` from `pos` (fewer only at the end of the file). */
function readFullySync(fd: number, buf: Buffer, pos: number): number {
  let got = 0;
  while (got < buf.length) {
    const n = readSync(fd, buf, got, buf.length - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

async function readFully(fh: fsp.FileHandle, buf: Buffer, pos: number): Promise<number> {
  let got = 0;
  while (got < buf.length) {
    const { bytesRead } = await fh.read(buf, got, buf.length - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

/** writev of all `parts`, continuing after short writes (IOV_MAX: at most 1024 buffers a call). */
async function writeAllv(fh: fsp.FileHandle, parts: readonly Uint8Array[]): Promise<void> {
  let queue = parts.filter((p) => p.length > 0);
  while (queue.length > 0) {
    const batch = queue.slice(0, 1024);
    let { bytesWritten } = await fh.writev(batch as Uint8Array[]);
    let i = 0;
    while (i < batch.length && bytesWritten >= batch[i]!.length) bytesWritten -= batch[i++]!.length;
    const rest = i < batch.length ? [batch[i]!.subarray(bytesWritten), ...batch.slice(i + 1)] : [];
    queue = [...rest, ...queue.slice(1024)];
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function* walk(dir: string, prefix: string): AsyncIterable<string> {
  let entries: import('node:fs').Dirent[];
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw ioError(`cannot list ${dir}`, e);
  }
  for (const ent of entries) {
    if (ent.name.startsWith(TMP_PREFIX)) continue;
    if (ent.isDirectory()) yield* walk(path.join(dir, ent.name), `${prefix}${ent.name}/`);
    else if (ent.isFile()) yield `${prefix}${ent.name}`;
  }
}

/** Remove temp files left by a killed writer; only those older than `olderThanMs`. */
export async function removeStaleTemps(root: string, olderThanMs: number): Promise<number> {
  let removed = 0;
  const now = Date.now();
  async function visit(dir: string): Promise<void> {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const ent of entries) {
      const p = path.join(dir, ent.name);
      if (ent.isDirectory()) await visit(p);
      else if (ent.name.startsWith(TMP_PREFIX)) {
        const s = await fsp.stat(p).catch(() => null);
        if (s && now - s.mtimeMs > olderThanMs) {
          await fsp.unlink(p).catch(() => {});
          removed++;
        }
      }
    }
  }
  await visit(root);
  return removed;
}
