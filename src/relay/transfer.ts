import { blake3 } from '@napi-rs/blake-hash';
import { Frame, jsonOf } from '../protocol/frames.js';
import { listFetcher, readBlobs } from '../repository/reader.js';
import type { Repository } from '../repository/repository.js';
import { decodeSnapshot, snapshotChunkIds } from '../repository/snapshot.js';
import { idsOf } from '../repository/chunklist.js';
import { snapshotName } from '../store/backend.js';
import { KuraError } from '../errors.js';
import type { VaultConnection } from './connection.js';

const HAS_BATCH = 8192; // IDs per HAS frame (256 KiB)
const FLUSH_WINDOW = 8;
const COALESCE_BYTES = 32 << 10; // one SSH packet's worth of small PUT frames per write // batches the vault may be making durable while more are sent

export interface TransferResult {
  snapshot: string;
  chunks: number;
  missing: number;
  missingBytes: number;
  bytesOnWire: number;
  existed: boolean;
}

/**
 * Ship one snapshot: ask which chunks the vault has (answers count only for this session),
 * stream the missing blobs, FLUSH every `batchBytes` so a broken link loses at most the batch
 * in flight, then COMMIT the snapshot file (the vault refuses it if any chunk is missing).
 */
export async function sendSnapshot(repo: Repository, conn: VaultConnection, snapshotId: string, batchBytes: number): Promise<TransferResult> {
  const startOut = conn.bytesOut;
  const bytes = await repo.store.get(snapshotName(snapshotId));
  if (!bytes) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `queued snapshot ${snapshotId} is not in the local repository; remove it from the queue or restore the repository`);
  const snap = decodeSnapshot(bytes, snapshotId);
  const seen = new Set<string>();
  const unique: Buffer[] = [];
  // the chunk list blocks first (the vault reads them to check the commit), then the data
  const blocks: Buffer[] = [];
  const data = await snapshotChunkIds(snap, listFetcher(repo), (b) => blocks.push(b));
  const dataIds = [...idsOf(data)];
  // then the base chunks of deltas, which the vault needs as much as the chunks themselves
  // (a base missing here is missing at the vault too, which then refuses the commit: kura check says more)
  for (const id of [...blocks, ...dataIds, ...repo.catalogue.basesNeeded(dataIds).found]) {
    const k = id.toString('base64');
    if (!seen.has(k)) {
      seen.add(k);
      unique.push(id);
    }
  }
  const missing: Buffer[] = [];
  for (let i = 0; i < unique.length; i += HAS_BATCH) {
    const batch = unique.slice(i, i + HAS_BATCH);
    const reply = await conn.request(Frame.HAS, Buffer.concat(batch), Frame.HAS_REPLY);
    batch.forEach((id, j) => {
      if (!(reply.payload[j >> 3]! & (1 << (j & 7)))) missing.push(id);
    });
  }

  let seq = 0;
  let inBatch = 0;
  let missingBytes = 0;
  // FLUSHes sent but not yet acknowledged. The vault makes every batch it fully received durable
  // even when the link then breaks, so a broken link costs at most the batch being sent.
  const outstanding: number[] = [];
  const awaitFlushed = async () => {
    const want = outstanding.shift()!;
    const f = jsonOf<{ seq: number }>(await conn.expect(Frame.FLUSHED));
    if (f.seq !== want) throw new KuraError('E_PROTOCOL', `vault acknowledged flush ${f.seq}, expected ${want}`);
  };
  const flush = async () => {
    await conn.send(Frame.FLUSH, { seq: ++seq });
    outstanding.push(seq);
    inBatch = 0;
    while (outstanding.length > FLUSH_WINDOW) await awaitFlushed();
  };
  // small PUT frames (deltas are often a few hundred bytes) go out together, so they share SSH
  // packets: one packet per frame cost ~40 bytes of SSH framing each
  let small: Buffer[] = [];
  let smallBytes = 0;
  const sendSmall = async () => {
    if (small.length === 0) return;
    const b = small.length === 1 ? small[0]! : Buffer.concat(small, smallBytes);
    small = [];
    smallBytes = 0;
    await conn.sendFrame(b);
  };
  for await (const { id, blob } of readBlobs(repo, missing, `snapshot ${snapshotId}`)) {
    const frame = putFrame(id, blob);
    if (frame.length >= COALESCE_BYTES) {
      await sendSmall();
      await conn.sendFrame(frame);
    } else {
      small.push(frame);
      smallBytes += frame.length;
      if (smallBytes >= COALESCE_BYTES) await sendSmall();
    }
    inBatch += blob.length;
    missingBytes += blob.length;
    if (inBatch >= batchBytes) {
      await sendSmall();
      await flush();
    }
  }
  await sendSmall();
  if (inBatch > 0) await flush();
  while (outstanding.length > 0) await awaitFlushed();
  const committed = jsonOf<{ id: string; existed: boolean }>(await conn.request(Frame.COMMIT, bytes, Frame.COMMITTED));
  if (committed.id !== snapshotId) throw new KuraError('E_PROTOCOL', `vault committed ${committed.id}, expected ${snapshotId}`);
  return { snapshot: snapshotId, chunks: unique.length, missing: missing.length, missingBytes, bytesOnWire: conn.bytesOut - startOut, existed: committed.existed };
}

/** PUT frame built in one allocation: length | type | chunk ID | BLAKE3(blob) | blob. */
function putFrame(id: Buffer, blob: Buffer): Buffer {
  const f = Buffer.allocUnsafe(5 + 64 + blob.length);
  f.writeUInt32BE(1 + 64 + blob.length, 0);
  f[4] = Frame.PUT;
  id.copy(f, 5);
  blake3(blob).copy(f, 37);
  blob.copy(f, 69);
  return f;
}
