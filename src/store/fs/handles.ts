import { promises as fsp } from 'node:fs';

/** Handles kept open at most, and how long one unused stays open. */
const MAX_OPEN = 64;
const IDLE_MS = 2000;

interface Entry {
  fh: Promise<fsp.FileHandle>;
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

  async use<T>(file: string, read: (fh: fsp.FileHandle) => Promise<T>): Promise<T> {
    let e = this.open.get(file);
    if (!e) {
      const fh = fsp.open(file, 'r');
      const entry: Entry = { fh, users: 0, lastUsed: Date.now(), doomed: false };
      e = entry;
      this.open.set(file, entry);
      fh.catch(() => {
        if (this.open.get(file) === entry) this.open.delete(file);
      });
      this.trim();
    }
    e.users++;
    try {
      return await read(await e.fh);
    } catch (err) {
      if (this.open.get(file) === e) this.forget(file); // a handle that failed a read (EIO, ESTALE) is not used again
      throw err;
    } finally {
      e.users--;
      e.lastUsed = Date.now();
      if (e.doomed && e.users === 0) this.close(e);
      this.watch();
    }
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
    e.fh.then((fh) => fh.close()).catch(() => {});
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
