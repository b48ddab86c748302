import { promises as fsp } from 'node:fs';
import { KuraError } from '../errors.js';

const READ_SIZE = 4 << 20;

/**
 * Reads a file in large blocks into one reused buffer: each block is valid until the consumer
 * asks for the next (the chunker copies what it keeps), so reading allocates nothing per block.
 */
export async function* readFileBlocks(path: string): AsyncGenerator<Buffer> {
  const fh = await fsp.open(path, 'r');
  try {
    const buf = Buffer.allocUnsafeSlow(READ_SIZE);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, READ_SIZE, null);
      if (bytesRead === 0) return;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

/** Fail loudly rather than record a snapshot of an input that ended badly. */
export function inputFailed(what: string, cause: unknown): KuraError {
  return new KuraError('E_INPUT_FAILED', `${what}: ${(cause as Error)?.message ?? String(cause)}; no snapshot was written`, undefined, { cause });
}
