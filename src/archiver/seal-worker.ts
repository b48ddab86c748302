import { parentPort, workerData } from 'node:worker_threads';
import { BlobSealer, CHUNK_ID_BYTES } from '../crypto/blob.js';
import { encodePack } from '../repository/pack.js';
import { packName } from '../store/backend.js';
import { putObjectSync } from '../store/fs/index.js';

/**
 * Compresses and encrypts one batch of new chunks into one pack, in a worker thread. With a
 * local store it also writes the pack itself (durable at the main thread's next store sync);
 * otherwise it hands the pack back for the main thread to upload.
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
  packId: string;
  /** blob i lies at blobOffsets[i] .. blobOffsets[i+1] in the pack */
  blobOffsets: Uint32Array;
  /** the pack's bytes, when the worker did not write it itself */
  pack: ArrayBuffer | null;
  error?: string;
}

let dataKey: Buffer | null = null; // sent by SealPool.setKey before any request
const directRoot = workerData.directRoot as string | null;
const sealers = new Map<number, BlobSealer>();

parentPort!.on('message', (msg: SealRequest | { key: Uint8Array }) => {
  if ('key' in msg) {
    dataKey = Buffer.from(msg.key);
    sealers.clear();
    return;
  }
  const req = msg;
  const n = req.offsets.length - 1;
  try {
    let sealer = sealers.get(req.level);
    if (!sealer) sealers.set(req.level, (sealer = new BlobSealer(dataKey!, req.level)));
    const data = Buffer.from(req.data);
    const ids = Buffer.from(req.ids);
    const blobs: Buffer[] = new Array(n);
    const idList: Buffer[] = new Array(n);
    for (let i = 0; i < n; i++) {
      idList[i] = ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES);
      blobs[i] = sealer.seal(data.subarray(req.offsets[i]!, req.offsets[i + 1]!), idList[i]!);
    }
    const pack = encodePack(blobs, idList);
    const blobOffsets = new Uint32Array(n + 1);
    for (let i = 0; i < n; i++) blobOffsets[i] = pack.entries[i]!.offset;
    blobOffsets[n] = n > 0 ? pack.entries[n - 1]!.offset + pack.entries[n - 1]!.length : 0;
    const transfer: ArrayBuffer[] = [req.data, blobOffsets.buffer as ArrayBuffer];
    let bytes: ArrayBuffer | null = null;
    if (directRoot) putObjectSync(directRoot, packName(pack.id), pack.bytes);
    else {
      bytes = pack.bytes.buffer.slice(pack.bytes.byteOffset, pack.bytes.byteOffset + pack.bytes.length) as ArrayBuffer;
      transfer.push(bytes);
    }
    parentPort!.postMessage({ seq: req.seq, data: req.data, packId: pack.id, blobOffsets, pack: bytes } satisfies SealResponse, transfer);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const res: SealResponse = { seq: req.seq, data: req.data, packId: '', blobOffsets: new Uint32Array(0), pack: null, error: `${err.code ? err.code + ': ' : ''}${err.message}` };
    parentPort!.postMessage(res, [req.data]);
  }
});
