import { parentPort, workerData } from 'node:worker_threads';
import { BlobSealer, CHUNK_ID_BYTES, Compression, openBlob } from '../crypto/blob.js';
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
  /** base chunks for deltas against the previous generation, or null */
  bases: SealBases | null;
}

/**
 * The stored blobs of the base chunks a batch may be compressed against: base b is
 * blobs[blobOffsets[b] .. blobOffsets[b+1]) with ID ids[b]; chunk i may use the bases
 * refs[start[i] .. start[i+1]).
 */
export interface SealBases {
  blobs: ArrayBuffer;
  blobOffsets: Uint32Array;
  ids: Uint8Array;
  start: Uint32Array;
  refs: Uint32Array;
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
  /** delta[i] = 1: chunk i was stored as a delta of all its offered bases */
  delta: Uint8Array;
  error?: string;
}

let keys: { dataKey: Buffer; idKey: Buffer } | null = null; // sent by SealPool.setKey before any request
const directRoot = workerData.directRoot as string | null;
const sealers = new Map<number, BlobSealer>();

/** Plaintexts of the batch's base chunks, opened (and verified) on first use. */
function baseOpener(b: SealBases): (i: number) => Buffer {
  const blobs = Buffer.from(b.blobs);
  const opened: Array<Buffer | undefined> = [];
  return (i) => {
    let p = opened[i];
    if (!p) {
      const id = Buffer.from(b.ids.buffer, b.ids.byteOffset + i * CHUNK_ID_BYTES, CHUNK_ID_BYTES);
      // authenticated by its tag; not re-hashed: a base only shapes the delta, whose own
      // restore re-hashes what it produces
      opened[i] = p = openBlob(blobs.subarray(b.blobOffsets[i]!, b.blobOffsets[i + 1]!), id, keys!, undefined, { rehash: false });
    }
    return p;
  };
}

parentPort!.on('message', (msg: SealRequest | { key: Uint8Array; idKey: Uint8Array }) => {
  if ('key' in msg) {
    keys = { dataKey: Buffer.from(msg.key), idKey: Buffer.from(msg.idKey) };
    sealers.clear();
    return;
  }
  const req = msg;
  const n = req.offsets.length - 1;
  try {
    let sealer = sealers.get(req.level);
    if (!sealer) sealers.set(req.level, (sealer = new BlobSealer(keys!.dataKey, req.level)));
    const data = Buffer.from(req.data);
    const ids = Buffer.from(req.ids);
    const blobs: Buffer[] = new Array(n);
    const idList: Buffer[] = new Array(n);
    const delta = new Uint8Array(n);
    const b = req.bases;
    const base = b ? baseOpener(b) : null;
    for (let i = 0; i < n; i++) {
      idList[i] = ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES);
      const plain = data.subarray(req.offsets[i]!, req.offsets[i + 1]!);
      if (b && base && b.start[i + 1]! > b.start[i]!) {
        const refs = b.refs.subarray(b.start[i]!, b.start[i + 1]!);
        const baseIds = [...refs].map((r) => b.ids.subarray(r * CHUNK_ID_BYTES, (r + 1) * CHUNK_ID_BYTES));
        let dict: Buffer | null = null;
        try {
          dict = refs.length === 1 ? base(refs[0]!) : Buffer.concat([...refs].map(base));
        } catch {
          // a damaged base: the chunk is stored whole (kura check reports the damage)
        }
        blobs[i] = sealer.seal(plain, idList[i]!, dict ? { ids: baseIds, plain: dict } : undefined);
        delta[i] = blobs[i]![1] === Compression.DELTA ? 1 : 0;
      } else {
        blobs[i] = sealer.seal(plain, idList[i]!);
      }
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
    parentPort!.postMessage({ seq: req.seq, data: req.data, packId: pack.id, blobOffsets, pack: bytes, delta } satisfies SealResponse, transfer);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const res: SealResponse = { seq: req.seq, data: req.data, packId: '', blobOffsets: new Uint32Array(0), pack: null, delta: new Uint8Array(0), error: `${err.code ? err.code + ': ' : ''}${err.message}` };
    parentPort!.postMessage(res, [req.data]);
  }
});
