import { promises as fsp, closeSync, openSync } from 'node:fs';

/** Files kept open at most (each by a handle, a descriptor or both), and how long one unused stays open. */
const MAX_OPEN = 64;
const IDLE_MS = 2000;

interface Entry {
  /** opened for `use` (null: not yet asked for) */
  fh: Promise<fsp.FileHandle> | null;
  /** opened for `useSync` (-1: not yet asked for) */
  fd: number;
  users: number;
  lastUsed: number;
  /** closed as soon as nobody uses it (its object was replaced or deleted, or the cache is full) */
  doomed: boolean;
}

/**
 * Read handles kept open between range reads of the same file. A vault answering a restore in
 * 4 KiB chunks reads a few chunks of a pack at a time, over and over: an open and a close per
 * read were a fifth of its CPU time. Range reads are of packs, which never change under their
 * name (content-addressed); one deleted meanwhile by another process reads as it was until its
 * handle closes, at most IDLE_MS after its last use (its disk space is freed then). This process's
 * own replace and delete drop the handle at once.
 */
export class ReadHandles {
  private readonly open = new Map<string, Entry>();
  private timer: NodeJS.Timeout | null = null;

  private entry(file: string): Entry {
    let e = this.open.get(file);
    if (!e) {
      e = { fh: null, fd: -1, users: 0, lastUsed: Date.now(), doomed: false };
      this.open.set(file, e);
      this.trim();
    }
    return e;
  }

  async use<T>(file: string, read: (fh: fsp.FileHandle) => Promise<T>): Promise<T> {
    const e = this.entry(file);
    if (!e.fh) {
      const fh = fsp.open(file, 'r');
      e.fh = fh;
      fh.catch(() => {
        if (e.fh === fh) e.fh = null;
        if (this.open.get(file) === e && e.fd < 0 && !e.fh) this.open.delete(file);
      });
    }
    e.users++;
    try {
      return await read(await e.fh);
    } catch (err) {
      if (this.open.get(file) === e) this.forget(file); // a handle that failed a read (EIO, ESTALE) is not used again
      throw err;
    } finally {
      this.done(e);
    }
  }

  /**
   * `use` on the calling thread: with a descriptor kept open (a restore reads its packs on the
   * main thread; an open and a close for each pack's few chunks of a 4 KiB-chunk night were a
   * fifth of that thread's time). Throws what the open throws (ENOENT for an absent file).
   */
  useSync<T>(file: string, read: (fd: number) => T): T {
    let e = this.open.get(file);
    if (!e || e.fd < 0) {
      const fd = openSync(file, 'r'); // first: a file that cannot be opened takes no entry and trims none
      e = this.entry(file);
      e.fd = fd;
    }
    e.users++;
    try {
      return read(e.fd);
    } catch (err) {
      if (this.open.get(file) === e) this.forget(file);
      throw err;
    } finally {
      this.done(e);
    }
  }

  private done(e: Entry): void {
    e.users--;
    e.lastUsed = Date.now();
    if (e.doomed && e.users === 0) this.close(e);
    this.watch();
  }

  /** The file was replaced or deleted: reads from now on open it again. */
  forget(file: string): void {
    const e = this.open.get(file);
    if (!e) return;
    this.open.delete(file);
    e.doomed = true;
    if (e.users === 0) this.close(e);
  }

  private close(e: Entry): void {
    e.fh?.then((fh) => fh.close()).catch(() => {});
    e.fh = null;
    if (e.fd >= 0) {
      try {
        closeSync(e.fd);
      } catch {} // a close that fails has nothing left to lose: the file is only read
      e.fd = -1;
    }
  }

  /** Over MAX_OPEN: the least recently used go (those in use once their reads are done). */
  private trim(): void {
    if (this.open.size <= MAX_OPEN) return;
    const byAge = [...this.open].sort((a, b) => a[1].lastUsed - b[1].lastUsed);
    for (const [file] of byAge.slice(0, this.open.size - MAX_OPEN)) this.forget(file);
  }

  /** Handles unused for IDLE_MS are closed; the timer runs only while some are open, and never keeps the process alive. */
  private watch(): void {
    if (this.timer || this.open.size === 0) return;
    this.timer = setInterval(() => {
      const now = Date.now();
      for (const [file, e] of this.open) if (e.users === 0 && now - e.lastUsed >= IDLE_MS) this.forget(file);
      if (this.open.size === 0) {
        clearInterval(this.timer!);
        this.timer = null;
      }
    }, IDLE_MS / 2);
    this.timer.unref();
  }

  /** Close every handle (as their reads end). */
  closeAll(): void {
    for (const file of [...this.open.keys()]) this.forget(file);
  }
}
