import { randomFillSync } from 'node:crypto';
import { BLOB_OVERHEAD } from '../crypto/blob.js';
import type { NativeAddon } from '../native.js';

/**
 * The chunks of a batch that are stored whole (no bases to try), compressed and sealed by the
 * native addon on `parts` threads of libuv's pool while the seal worker's own thread makes the
 * batch's deltas. A seal worker used to do all of it on its one thread: on a first backup it
 * was the one busy thread (zstd was 55 % of it) while the main thread and the chunking thread
 * waited; a second worker did the same job at ~45 MB more peak RSS per isolate.
 *
 * The blobs are BlobSealer's, byte for byte but for the random nonces (test/native-blobs.test.ts):
 * zstd at the repository's level when that is smaller than the chunk, else the chunk as it is.
 * Up to level 4 the addon does not let zstd split a 128 KiB block ahead (kura_native.c,
 * seal_run): in a chunk over 128 KiB of mixed content a block may then end elsewhere, a frame
 * of other bytes (measured 0.09 % larger on binaries and documents, the same bytes on dumps).
 * Output buffers are kept per worker and reused once the pack has copied the blobs out of them.
 */
export class WholeSealer {
  /** output buffers of finished batches, for the next ones */
  private spare: Buffer[] = [];

  constructor(
    private readonly native: NativeAddon & Required<Pick<NativeAddon, 'sealWhole'>>,
    private readonly parts = 2,
  ) {}

  /** The addon, when it has sealWhole (an older build does not). */
  static of(native: NativeAddon | null, parts?: number): WholeSealer | null {
    return native && typeof native.sealWhole === 'function' ? new WholeSealer(native as NativeAddon & Required<Pick<NativeAddon, 'sealWhole'>>, parts) : null;
  }

  /**
   * Blob k of `blobs` seals chunk idx[k] (data[offsets[i] .. offsets[i+1]), ID ids[32i ..]); an
   * undefined one could not be sealed here, and the caller seals it itself. The blobs are views
   * of buffers that `release` hands to the next batch: call it once they are copied (into the pack).
   */
  async seal(dataKey: Buffer, level: number, data: Uint8Array, offsets: Uint32Array, ids: Uint8Array, idx: Uint32Array): Promise<{ blobs: Array<Buffer | undefined>; release: () => void }> {
    const groups = splitByBytes(offsets, idx, this.parts);
    const blobs: Array<Buffer | undefined> = new Array(idx.length);
    const taken: Buffer[] = [];
    const release = () => void this.spare.push(...taken.splice(0));
    // every part settles before this does: the addon's threads read `data` till then (a batch's
    // segments are reused once the request is answered)
    const settled = await Promise.allSettled(
      groups.map(async ([from, to]) => {
        const part = idx.subarray(from, to);
        let bytes = 0;
        for (const i of part) bytes += offsets[i + 1]! - offsets[i]! + BLOB_OVERHEAD;
        const at = this.spare.findIndex((b) => b.length >= bytes);
        const out = at >= 0 ? this.spare.splice(at, 1)[0]! : Buffer.allocUnsafe(Math.ceil((bytes * 1.25) / 65536) * 65536);
        taken.push(out);
        const nonces = randomFillSync(Buffer.allocUnsafe(12 * part.length));
        const ends = new Uint32Array(part.length);
        const bad = await this.native.sealWhole(dataKey, level, data, offsets, part, ids, nonces, out, ends);
        const sealed = bad < 0 ? part.length : bad;
        for (let k = 0; k < sealed; k++) blobs[from + k] = out.subarray(k === 0 ? 0 : ends[k - 1]!, ends[k]!);
      }),
    );
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      release();
      throw failed.reason;
    }
    return { blobs, release };
  }
}

/** `parts` runs of idx, as [from, to) positions, of about equal plaintext bytes (none empty). */
export function splitByBytes(offsets: Uint32Array, idx: Uint32Array, parts: number): Array<[number, number]> {
  let total = 0;
  for (const i of idx) total += offsets[i + 1]! - offsets[i]!;
  const runs: Array<[number, number]> = [];
  let from = 0;
  let acc = 0;
  for (let k = 0; k < idx.length; k++) {
    acc += offsets[idx[k]! + 1]! - offsets[idx[k]!]!;
    if (runs.length < parts - 1 && acc >= (total * (runs.length + 1)) / parts && k + 1 < idx.length) {
      runs.push([from, k + 1]);
      from = k + 1;
    }
  }
  if (from < idx.length) runs.push([from, idx.length]);
  return runs;
}
