import { Blake3Hasher, blake3 } from '@napi-rs/blake-hash';
import { Frame, jsonOf } from '../protocol/frames.js';
import { readRuns } from '../repository/reader.js';
import { checkedForSending } from '../repository/verify.js';
import { DIGEST_BYTES } from '../repository/digest.js';
import type { Repository } from '../repository/repository.js';
import { decodeSnapshot } from '../repository/snapshot.js';
import { snapshotName } from '../store/backend.js';
import { KuraError } from '../errors.js';
import type { VaultConnection } from './connection.js';

const FLUSH_WINDOW = 8; // batches the vault may be making durable while more are sent
const COALESCE_BYTES = 32 << 10; // one SSH packet's worth of small frames per write

export interface TransferResult {
  snapshot: string;
  chunks: number;
  missing: number;
  missingBytes: number;
  bytesOnWire: number;
  existed: boolean;
  /** blobs sent that had no recorded digest (written before pack format 2): checked for their structure only */
  unverified: number;
}

/**
 * Ship one snapshot: send the snapshot file in WANT and let the vault work out what it lacks
 * from the chunk list it can read (answers count only for this session: it leases what is
 * present); stream those blobs in the order asked, FLUSH every `batchBytes` so a broken link
 * loses at most the batch in flight, and ask again until nothing is lacking (chunk list blocks,
 * then data, then the bases of deltas); then COMMIT.
 */
export async function sendSnapshot(repo: Repository, conn: VaultConnection, snapshotId: string, batchBytes: number): Promise<TransferResult> {
  const startOut = conn.bytesOut;
  const bytes = await repo.store.get(snapshotName(snapshotId));
  if (!bytes) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `queued snapshot ${snapshotId} is not in the local repository; remove it from the queue or restore the repository`);
  const snap = decodeSnapshot(bytes, snapshotId);
  const idBytes = Buffer.from(snapshotId, 'hex');

  let seq = 0;
  let inBatch = 0;
  let sum = new Blake3Hasher();
  // protocol 4: the digests recorded when the batch's blobs were written; the vault checks them
  let digests = new Blake3Hasher();
  let unverified = 0;
  let missing = 0;
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
    await sendSmall();
    await conn.send(Frame.FLUSH, { seq: ++seq, sum: sum.digest('hex'), ...(conn.protocol >= 4 ? { digests: digests.digest('hex') } : {}) });
    sum = new Blake3Hasher();
    digests = new Blake3Hasher();
    outstanding.push(seq);
    inBatch = 0;
    while (outstanding.length > FLUSH_WINDOW) await awaitFlushed();
  };
  // small frames (deltas are often a few hundred bytes) go out together, so they share SSH
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
  const sendFrame = async (frame: Buffer | Buffer[], blobBytes: number, blobs = 1) => {
    const parts = Buffer.isBuffer(frame) ? [frame] : frame;
    const length = parts.reduce((n, p) => n + p.length, 0);
    if (length >= COALESCE_BYTES) {
      await sendSmall();
      await conn.sendFrame(parts);
    } else {
      small.push(...parts);
      smallBytes += length;
      if (smallBytes >= COALESCE_BYTES) await sendSmall();
    }
    missing += blobs;
    inBatch += blobBytes;
    missingBytes += blobBytes;
    if (inBatch >= batchBytes) await flush();
  };
  // the blobs asked for, in order: blobs that lie back to back in a pack go as one PUT_RUN frame
  // (no copy, one header), cut where a batch ends or the vault's frame limit; alone, or to a
  // vault older than protocol 3, a blob goes as PUT_NEXT
  const perFrame = conn.protocol >= 3 ? Infinity : 1;
  const sendAsked = async (ids: Buffer[]) => {
    for await (const run of readRuns(repo, ids, `snapshot ${snapshotId}`)) {
      // every blob is verified against its recorded digest before it leaves (a damaged one is
      // quarantined and the snapshot set aside by the relay)
      const checked = checkedForSending(run, snapshotId);
      unverified += checked.unverified;
      for (let i = 0, off = 0; i < run.ids.length; ) {
        let j = i + 1;
        let bytes = run.lengths[i]!;
        const fits = () => j - i < perFrame && inBatch + bytes < batchBytes && 9 + 4 * (j - i + 1) + bytes + run.lengths[j]! <= conn.maxFrame;
        while (j < run.ids.length && fits()) bytes += run.lengths[j++]!;
        const piece = run.bytes.subarray(off, off + bytes);
        sum.update(piece);
        digests.update(checked.digests.subarray(i * DIGEST_BYTES, j * DIGEST_BYTES));
        await sendFrame(j - i === 1 ? nextFrame(piece) : runFrame(run.lengths.slice(i, j), piece), bytes, j - i);
        off += bytes;
        i = j;
      }
    }
  };

  let lastAsked = '';
  for (let round = 0; ; round++) {
    const reply = await conn.request(Frame.WANT, round === 0 ? bytes : idBytes, Frame.WANT_REPLY);
    const { ids, prefixes } = parseWant(reply.payload);
    if (ids.length === 0 && prefixes.length === 0) break;
    // the vault lacks again what it was just sent: it did not take it (bounded, never a loop)
    const first = (ids[0] ?? prefixes[0])!.toString('hex');
    const asked = `${ids.length}:${prefixes.length}:${first}`;
    if (asked === lastAsked) {
      throw new KuraError('E_PROTOCOL', `the vault still lacks ${ids.length + prefixes.length} chunk(s) of snapshot ${snapshotId} it was just sent (first ${first}); see the vault's log and audit for why it did not keep them`);
    }
    lastAsked = asked;
    await sendAsked(ids);
    // bases of deltas, named by their 8-byte prefix: every local chunk with that prefix is sent
    // (one, but for a 64-bit collision), with its ID; a base missing here is missing at the vault
    // too, which then refuses the commit: kura check says more
    const bases = repo.catalogue.bases.chunksUnder(prefixes.map((p) => p.toString('hex'))).map(([, id]) => id);
    if (prefixes.length > 0 && bases.length === 0) {
      throw new KuraError('E_CHUNK_MISSING', `snapshot ${snapshotId} needs ${prefixes.length} delta base chunk(s) that are not in the local repository either (first ${prefixes[0]!.toString('hex')}…); run "kura check"`);
    }
    for await (const run of readRuns(repo, bases, `snapshot ${snapshotId}`)) {
      unverified += checkedForSending(run, snapshotId).unverified;
      for (let i = 0, off = 0; i < run.ids.length; i++) await sendFrame(putFrame(run.ids[i]!, run.bytes.subarray(off, (off += run.lengths[i]!))), run.lengths[i]!);
    }
    if (inBatch > 0) await flush();
    while (outstanding.length > 0) await awaitFlushed();
  }
  const committed = jsonOf<{ id: string; existed: boolean }>(await conn.request(Frame.COMMIT, idBytes, Frame.COMMITTED));
  if (committed.id !== snapshotId) throw new KuraError('E_PROTOCOL', `vault committed ${committed.id}, expected ${snapshotId}`);
  return { snapshot: snapshotId, chunks: snap.header.chunkCount, missing, missingBytes, bytesOnWire: conn.bytesOut - startOut, existed: committed.existed, unverified };
}

/** WANT_REPLY: u32 n | n × 32-byte IDs | u32 m | m × 8-byte prefixes. */
export function parseWant(p: Buffer): { ids: Buffer[]; prefixes: Buffer[] } {
  const bad = () => new KuraError('E_PROTOCOL', 'malformed WANT_REPLY from the vault');
  if (p.length < 8) throw bad();
  const n = p.readUInt32BE(0);
  const at = 4 + 32 * n;
  if (p.length < at + 4) throw bad();
  const m = p.readUInt32BE(at);
  if (p.length !== at + 4 + 8 * m) throw bad();
  const ids: Buffer[] = [];
  for (let i = 0; i < n; i++) ids.push(p.subarray(4 + 32 * i, 36 + 32 * i));
  const prefixes: Buffer[] = [];
  for (let i = 0; i < m; i++) prefixes.push(p.subarray(at + 4 + 8 * i, at + 12 + 8 * i));
  return { ids, prefixes };
}

/** PUT_NEXT frame: length | type | blob (the vault knows the ID from its WANT_REPLY). */
function nextFrame(blob: Buffer): Buffer {
  const f = Buffer.allocUnsafe(5 + blob.length);
  f.writeUInt32BE(1 + blob.length, 0);
  f[4] = Frame.PUT_NEXT;
  blob.copy(f, 5);
  return f;
}

/** PUT_RUN frame as two parts: length | type | u32 n | n × u32 blob length, then the blobs as read. */
function runFrame(lengths: number[], blobs: Buffer): Buffer[] {
  const head = Buffer.allocUnsafe(9 + 4 * lengths.length);
  head.writeUInt32BE(1 + 4 + 4 * lengths.length + blobs.length, 0);
  head[4] = Frame.PUT_RUN;
  head.writeUInt32BE(lengths.length, 5);
  lengths.forEach((l, i) => head.writeUInt32BE(l, 9 + 4 * i));
  return [head, blobs];
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
