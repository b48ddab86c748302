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

/**
 * A file as the backup's input. Iterated, it yields blocks like readFileBlocks; the backup
 * instead asks it to `fill` its shared segments directly, which saves a copy of every byte.
 */
export class FileInput implements AsyncIterable<Buffer> {
  private fh: fsp.FileHandle | null = null;
  constructor(readonly path: string) {}

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    return readFileBlocks(this.path);
  }

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
