import { promises as fsp } from 'node:fs';
import { KuraError } from '../errors.js';

const READ_SIZE = 4 << 20;

/**
 * Reads a file in large blocks into two reused buffers: the next block is read while the
 * consumer works on the current one (the main thread would otherwise idle during every read).
 * Each block is valid until the consumer asks for the next one (the chunker copies what it
 * keeps), so reading allocates nothing per block.
 */
export async function* readFileBlocks(path: string): AsyncGenerator<Buffer> {
  const fh = await fsp.open(path, 'r');
  const bufs = [Buffer.allocUnsafeSlow(READ_SIZE), Buffer.allocUnsafeSlow(READ_SIZE)];
  let cur = 0;
  let pending: Promise<{ bytesRead: number }> | null = fh.read(bufs[0]!, 0, READ_SIZE, null);
  try {
    for (;;) {
      const { bytesRead } = await pending!;
      pending = null;
      if (bytesRead === 0) return;
      const block = bufs[cur]!.subarray(0, bytesRead);
      cur ^= 1;
      // the other buffer is free: the consumer asked for this block, so it is done with that one
      pending = fh.read(bufs[cur]!, 0, READ_SIZE, null);
      yield block;
    }
  } finally {
    await pending?.catch(() => {});
    await fh.close();
  }
}

/** A file as the backup's input: read straight into the chunking pipeline's segments (no copy). */
export class FileInput {
  private fh: fsp.FileHandle | null = null;
  constructor(readonly path: string) {}

  /** Fill `buf` from where the last call stopped; fewer bytes than its length means the end. */
  async fill(buf: Buffer): Promise<number> {
    try {
      this.fh ??= await fsp.open(this.path, 'r');
      let n = 0;
      while (n < buf.length) {
        const { bytesRead } = await this.fh.read(buf, n, buf.length - n, null);
        if (bytesRead === 0) break;
        n += bytesRead;
      }
      if (n < buf.length) await this.close();
      return n;
    } catch (e) {
      await this.close().catch(() => {});
      throw inputFailed(`reading ${this.path} failed`, e);
    }
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    await fh?.close();
  }
}

/** Fail loudly rather than record a snapshot of an input that ended badly. */
export function inputFailed(what: string, cause: unknown): KuraError {
  return new KuraError('E_INPUT_FAILED', `${what}: ${(cause as Error)?.message ?? String(cause)}; no snapshot was written`, undefined, { cause });
}

/**
 * Reads `src` ahead of its consumer, up to `maxBytes` held in memory, from the moment it is
 * made: an export (pg_dump) starts and runs while the backup is still getting ready instead of
 * waiting on a full pipe. Errors reach the consumer where they happened. `close()` stops the
 * reading (and so the export) whether or not the consumer ever started.
 */
export class ReadAhead implements AsyncIterable<Uint8Array> {
  private readonly it: AsyncIterator<Uint8Array>;
  private readonly queue: Uint8Array[] = [];
  private held = 0;
  private done = false;
  private failure: { error: unknown } | null = null;
  private closed = false;
  private wakeConsumer: (() => void) | null = null;
  private wakePump: (() => void) | null = null;
  private readonly pumping: Promise<void>;

  constructor(
    src: AsyncIterable<Uint8Array>,
    private readonly maxBytes: number,
  ) {
    this.it = src[Symbol.asyncIterator]();
    this.pumping = this.pump();
  }

  private async pump(): Promise<void> {
    try {
      while (!this.closed) {
        if (this.held >= this.maxBytes) {
          await new Promise<void>((r) => (this.wakePump = r));
          continue;
        }
        const r = await this.it.next();
        if (r.done) break;
        this.queue.push(r.value);
        this.held += r.value.length;
        this.wakeConsumer?.();
      }
    } catch (e) {
      this.failure = { error: e };
    }
    this.done = true;
    this.wakeConsumer?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
    try {
      for (;;) {
        const next = this.queue.shift();
        if (next) {
          this.held -= next.length;
          this.wakePump?.();
          yield next;
          continue;
        }
        if (this.failure) throw this.failure.error;
        if (this.done) return;
        await new Promise<void>((r) => (this.wakeConsumer = r));
        this.wakeConsumer = null;
      }
    } finally {
      await this.close();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.wakePump?.();
    await this.pumping; // ends after the read in progress, if any
    await this.it.return?.()?.catch(() => {}); // a source still running (an export) is stopped
    this.queue.length = 0;
    this.held = 0;
  }
}
