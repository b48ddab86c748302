import { parentPort, workerData } from 'node:worker_threads';
import { BlobSealer, CHUNK_ID_BYTES } from '../crypto/blob.js';
import { chunkName } from '../store/backend.js';
import { putBlobSync } from '../store/fs/index.js';

/**
 * Compresses and encrypts one batch of new chunks in a worker thread. With a local store it
 * also writes the blobs itself (durable at the main thread's next store sync); otherwise it
 * hands them back for the main thread to upload.
 */
export interface SealRequest {
  seq: number;
  level: number;
  data: ArrayBuffer;
  /** chunk i is data[offsets[i] .. offsets[i+1]) */
  offsets: Uint32Array;
  ids: ArrayBuffer;
}

export interface SealResponse {
  seq: number;
  /** the request's data buffer, handed back for reuse */
  data: ArrayBuffer;
  /** stored size of each blob */
  sizes: Uint32Array;
  /** blobs back to back, when the worker did not write them itself */
  blobs: ArrayBuffer | null;
  error?: string;
}

const dataKey = Buffer.from(workerData.dataKey as Uint8Array);
const directRoot = workerData.directRoot as string | null;
const sealers = new Map<number, BlobSealer>();

parentPort!.on('message', (req: SealRequest) => {
  const n = req.offsets.length - 1;
  try {
    let sealer = sealers.get(req.level);
    if (!sealer) sealers.set(req.level, (sealer = new BlobSealer(dataKey, req.level)));
    const data = Buffer.from(req.data);
    const ids = Buffer.from(req.ids);
    const sizes = new Uint32Array(n);
    const kept: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      const id = ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES);
      const blob = sealer.seal(data.subarray(req.offsets[i]!, req.offsets[i + 1]!), id);
      sizes[i] = blob.length;
      if (directRoot) putBlobSync(directRoot, chunkName(id.toString('hex')), blob);
      else kept.push(blob);
    }
    let blobs: ArrayBuffer | null = null;
    const transfer: ArrayBuffer[] = [req.data, sizes.buffer as ArrayBuffer];
    if (!directRoot) {
      const all = Buffer.concat(kept);
      blobs = all.buffer.slice(all.byteOffset, all.byteOffset + all.length) as ArrayBuffer;
      transfer.push(blobs);
    }
    parentPort!.postMessage({ seq: req.seq, data: req.data, sizes, blobs } satisfies SealResponse, transfer);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    parentPort!.postMessage({ seq: req.seq, data: req.data, sizes: new Uint32Array(0), blobs: null, error: `${err.code ? err.code + ': ' : ''}${err.message}` } satisfies SealResponse, [req.data]);
  }
});
