import { parentPort, workerData } from 'node:worker_threads';
import { BlobSealer, CHUNK_ID_BYTES } from '../crypto/blob.js';

/** Compresses and encrypts one batch of new chunks; runs in a worker thread. */
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
  blobs: ArrayBuffer;
  offsets: Uint32Array;
  error?: string;
}

const dataKey = Buffer.from(workerData.dataKey as Uint8Array);
const sealers = new Map<number, BlobSealer>();

parentPort!.on('message', (req: SealRequest) => {
  try {
    let sealer = sealers.get(req.level);
    if (!sealer) sealers.set(req.level, (sealer = new BlobSealer(dataKey, req.level)));
    const data = Buffer.from(req.data);
    const ids = Buffer.from(req.ids);
    const n = req.offsets.length - 1;
    const blobs: Buffer[] = new Array(n);
    let total = 0;
    for (let i = 0; i < n; i++) {
      const b = sealer.seal(data.subarray(req.offsets[i]!, req.offsets[i + 1]!), ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES));
      blobs[i] = b;
      total += b.length;
    }
    const out = Buffer.allocUnsafeSlow(total);
    const offsets = new Uint32Array(n + 1);
    let off = 0;
    for (let i = 0; i < n; i++) {
      offsets[i] = off;
      blobs[i]!.copy(out, off);
      off += blobs[i]!.length;
    }
    offsets[n] = off;
    const res: SealResponse = { seq: req.seq, blobs: out.buffer as ArrayBuffer, offsets };
    parentPort!.postMessage(res, [out.buffer as ArrayBuffer, offsets.buffer as ArrayBuffer]);
  } catch (e) {
    parentPort!.postMessage({ seq: req.seq, blobs: new ArrayBuffer(0), offsets: new Uint32Array(0), error: (e as Error).message } satisfies SealResponse);
  }
});
