import { Blake3Hasher, blake3 } from '@napi-rs/blake-hash';
import { KuraError } from '../../errors.js';
import { blobInfo, CHUNK_ID_BYTES } from '../../crypto/blob.js';
import { Frame, type RawFrame } from '../../protocol/frames.js';
import { storePack } from '../../repository/pack.js';
import { blobDigest, DIGEST_BYTES, runDigests } from '../../repository/digest.js';
import type { VaultSession } from '../session.js';
import type { PutRun } from './body.js';

const MAX_CHUNK_BLOB = (256 << 20) + 64;
const MAX_QUEUED_FLUSHES = 8; // batches waiting for the disk before the session stops reading

/**
 * The data a session is sent (HAS, PUT, PUT_NEXT, PUT_RUN, FLUSH): blobs wait in memory until
 * the client FLUSHes, then go to the store as one pack, durable before they are recorded and
 * leased to the session.
 */
export class Uploads {
  private pending: Array<{ id: Buffer; blob: Buffer; digest: Buffer }> = [];
  private pendingBytes = 0;
  /** bytes of the batches being written as packs */
  private writingBytes = 0;
  /** how many of `pending` came as PUT_NEXT (hashed by batchSum, in order) */
  private pendingNext = 0;
  private batchSum: Blake3Hasher | null = null;
  /** protocol 4: the digests of the batch's blobs as they arrived, checked at FLUSH against those recorded when they were written */
  private batchDigests: Blake3Hasher | null = null;
  /** Pack writes run behind the frame loop, so receiving continues during fdatasync. */
  private flushing: Promise<void> = Promise.resolve();
  private flushFailure: unknown = null;
  private queuedFlushes = 0;
  /** The IDs of the last WANT_REPLY, which PUT_NEXT frames fill in order. */
  private expected: Buffer[] = [];
  private expectedAt = 0;
  /** Stored bytes of the tenant when this session first sent data, plus what it stored since. */
  private storedBase: number | null = null;
  private storedAdded = 0;
  /** the base being fetched (ctx.stored: the store's listing), and where it came from */
  private baseLoading: Promise<void> | null = null;
  private baseFrom = 'its catalogue';

  constructor(private readonly s: VaultSession) {}

  /** What this session's uploads hold in memory (MemoryBudget). */
  holding(): { pending: number; writing: number } {
    return { pending: this.pendingBytes, writing: this.writingBytes };
  }

  /** The session is refused: let go of the PUT data not flushed (packs being written still are). */
  drop(): void {
    this.pending = [];
    this.pendingBytes = 0;
    this.pendingNext = 0;
    this.batchSum = null;
    this.batchDigests = null;
  }

  /** PUT_NEXT and PUT_RUN fill `ids` (the last WANT_REPLY's) from now on, in order. */
  expect(ids: Buffer[]): void {
    this.expected = ids;
    this.expectedAt = 0;
  }

  /** Before WANT and COMMIT: every batch received so far is durable and recorded. */
  async settle(op: string): Promise<void> {
    if (this.batchSum) throw new KuraError('E_PROTOCOL', `PUT_NEXT data must be FLUSHed (with its checksum) before ${op}`);
    await this.drain();
    await this.quotaBeforeWrite();
    await this.writePack(this.takePending());
  }

  /** Every batch handed to the disk is written (and none failed). */
  async drain(): Promise<void> {
    await this.flushing;
    this.queuedFlushes = 0;
    if (this.flushFailure) throw this.flushFailure;
  }

  /** Settles when the pack writes under way are done, failed or not (the session is ending). */
  written(): Promise<void> {
    return this.flushing;
  }

  put(id: Buffer, sum: Buffer, blob: Buffer): void {
    if (!blake3(blob).equals(sum)) throw new KuraError('E_CHUNK_CORRUPT', `chunk ${id.toString('hex')} arrived damaged (checksum mismatch)`);
    this.accept(id, blob, blobDigest(blob));
  }

  putNext(blob: Buffer): void {
    const id = this.expected[this.expectedAt++];
    if (!id) throw new KuraError('E_PROTOCOL', `PUT_NEXT beyond the ${this.expected.length} chunk(s) the last WANT_REPLY listed`);
    (this.batchSum ??= new Blake3Hasher()).update(blob);
    const digest = blobDigest(blob);
    (this.batchDigests ??= new Blake3Hasher()).update(digest);
    this.pendingNext++;
    this.accept(id, blob, digest);
  }

  putRun(p: Buffer, run: PutRun): void {
    const n = run.lengths.length;
    if (this.expectedAt + n > this.expected.length) throw new KuraError('E_PROTOCOL', `PUT_RUN beyond the ${this.expected.length} chunk(s) the last WANT_REPLY listed`);
    (this.batchSum ??= new Blake3Hasher()).update(p.subarray(run.start));
    // the blobs' digests, side by side in one call: recorded in the pack's index, checked at FLUSH
    const digests = runDigests(p.subarray(run.start), run.lengths);
    (this.batchDigests ??= new Blake3Hasher()).update(digests);
    this.s.ops.putRuns++;
    for (let i = 0, at = run.start; i < n; i++) {
      const blob = p.subarray(at, (at += run.lengths[i]!));
      this.pendingNext++;
      this.accept(this.expected[this.expectedAt++]!, blob, digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES));
    }
  }

  async flush(seq: number, sum: string | undefined, digests: string | undefined): Promise<void> {
    if (this.flushFailure) throw this.flushFailure;
    this.checkBatchDigests(seq, digests);
    await this.quotaBeforeWrite();
    let hashed: Blake3Hasher | undefined;
    if (this.batchSum) {
      // PUT_NEXT blobs carry no checksum each: the batch's is checked before it is written
      hashed = this.batchSum;
      const got = hashed.digest('hex');
      this.batchSum = null;
      if (sum !== got) {
        this.drop();
        throw new KuraError('E_CHUNK_CORRUPT', `the batch flushed as ${seq} arrived damaged (checksum ${String(sum)} expected, ${got} received); nothing of it was stored, send it again`);
      }
    }
    // a batch of PUT_NEXT blobs only: the pack's ID continues the checksum's hash
    const allNext = this.pendingNext === this.pending.length ? hashed : undefined;
    // packs are written concurrently (fdatasync latency dominates); replies go out in order
    const batch = this.takePending();
    let bytes = 0;
    for (const p of batch) bytes += p.blob.length;
    this.writingBytes += bytes;
    const written = this.writePack(batch, allNext).finally(() => {
      this.writingBytes -= bytes;
      this.s.ctx.budget.released();
    });
    written.catch(() => {});
    // FLUSHED answers go out in order, and none after a batch that failed: the session ends then
    this.flushing = Promise.all([this.flushing, written])
      .then(([, w]) => {
        if (this.flushFailure) throw this.flushFailure;
        return this.s.send(Frame.FLUSHED, { seq, ...w });
      })
      .catch((e) => {
        this.flushFailure ??= e;
        this.s.fail(this.flushFailure);
      });
    // too many batches or bytes waiting for the disk: stop reading until they are written
    if (this.queuedFlushes++ >= MAX_QUEUED_FLUSHES || this.writingBytes > this.s.ctx.budget.limits.sessionBytes) {
      await this.flushing;
      this.queuedFlushes = 0;
    }
  }

  /** Protocol 4: the digests of the batch's blobs, as recorded when they were written, must be those of the blobs that arrived. */
  private checkBatchDigests(seq: number, sent: string | undefined): void {
    const got = this.batchDigests?.digest('hex');
    this.batchDigests = null;
    if (this.s.protocol < 4 || got === undefined || sent === got) return;
    this.drop();
    throw new KuraError('E_CHUNK_CORRUPT', `a blob of the batch flushed as ${seq} does not match the digest recorded when it was written (digests ${String(sent)} expected, ${got} received); nothing of it was stored, send it again`);
  }

  private accept(id: Buffer, blob: Buffer, digest: Buffer): void {
    const info = blobInfo(blob);
    if (!info || blob.length > MAX_CHUNK_BLOB) throw new KuraError('E_CHUNK_CORRUPT', `chunk ${id.toString('hex')} is not a valid blob`);
    this.pending.push({ id, blob, digest });
    this.pendingBytes += blob.length;
    this.checkQuota();
    this.s.ops.put++;
    this.s.ops.putBytes += blob.length;
    const { budget } = this.s.ctx;
    const limit = budget.limits.sessionBytes;
    if (this.pendingBytes > limit) {
      this.drop();
      throw new KuraError(
        'E_BUSY',
        `this session sent more than ${limit} bytes of PUT data without FLUSH (vault.limits.sessionBytes); FLUSH more often (a kura relay flushes every relay.batchBytes, which must stay below it) and send again`,
        { sessionBytes: limit },
      );
    }
    budget.enforce();
  }

  /** A base from the store is known, and checked, before the first batch is written. */
  private async quotaBeforeWrite(): Promise<void> {
    if (this.storedBase !== null || this.s.ctx.quota === undefined || !this.s.ctx.stored || this.pending.length === 0) return;
    await this.loadBase();
    try {
      this.checkQuota();
    } catch (e) {
      this.drop();
      throw e;
    }
  }

  /** The tenant's stored bytes from ctx.stored (vault nodes: the store's listing), once a session. */
  private loadBase(): Promise<void> {
    const src = this.s.ctx.stored!;
    this.baseLoading ??= src.stored().then(
      (b) => {
        this.storedBase ??= b.bytes;
        this.baseFrom = b.from;
      },
      (e: unknown) => {
        this.baseLoading = null;
        throw new KuraError('E_IO', `the quota of tenant ${this.s.ctx.tenant} cannot be checked: its stored bytes could not be listed in the store (${(e as Error).message}); the relay sends again later`, { retryable: true }, { cause: e });
      },
    );
    return this.baseLoading;
  }

  private checkQuota(): void {
    const { quota, repo, tenant, stored } = this.s.ctx;
    if (quota === undefined) return;
    if (stored) {
      // from the store: fetched at the first PUT, checked here once known (and at FLUSH before anything is written)
      if (this.storedBase === null) {
        this.loadBase().catch(() => {});
        return;
      }
    } else this.storedBase ??= repo.catalogue.counts().storedBytes;
    const base = this.storedBase!;
    const total = base + this.storedAdded + this.pendingBytes;
    if (total > quota) {
      throw new KuraError(
        'E_QUOTA',
        `tenant ${tenant} would exceed its quota of ${quota} bytes (${base + this.storedAdded} stored, by ${this.baseFrom}${this.storedAdded ? ' and this session' : ''}; ${this.pendingBytes} more sent); the vault operator can raise vault.tenants.${tenant}.quota, or prune and gc`,
        { quota, stored: base + this.storedAdded },
      );
    }
  }

  private takePending(): Array<{ id: Buffer; blob: Buffer; digest: Buffer }> {
    const batch = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    this.pendingNext = 0;
    return batch;
  }

  /** Write one batch of PUT data as a pack, durable, then record and lease its chunks. */
  private async writePack(batch: Array<{ id: Buffer; blob: Buffer; digest: Buffer }>, blobsHashed?: Blake3Hasher): Promise<{ chunks: number; bytes: number }> {
    const { repo, leaseTtlMs } = this.s.ctx;
    let bytes = 0;
    const seen = new Set<string>();
    const held = repo.catalogue.present(batch.map((p) => p.id));
    const fresh = batch.filter((p, i) => {
      bytes += p.blob.length;
      const k = p.id.toString('base64');
      if (seen.has(k) || held[i]) return false;
      seen.add(k);
      return true;
    });
    if (fresh.length > 0) {
      const expires = Date.now() + leaseTtlMs;
      // the pack lease keeps a concurrent GC off the file until its chunks are recorded
      const lease = async (id: string) => {
        // a GC deleting an object of this very name right now: wait for its delete to land
        while (!repo.catalogue.vault.leasePack(id, this.s.id, expires)) await new Promise((r) => setTimeout(r, 50));
      };
      const pack = await storePack(repo.store, fresh, lease, fresh.length === batch.length ? blobsHashed : undefined);
      const rows = pack.entries.map((e, i) => {
        const info = blobInfo(fresh[i]!.blob)!;
        return { id: e.id, pack: pack.id, offset: e.offset, storedSize: e.length, plainSize: info.plainLength, bases: info.bases.map((b) => Buffer.from(b)), digest: e.digest };
      });
      repo.catalogue.vault.addSessionPack(this.s.id, pack.id, rows, expires, pack.size);
      this.storedAdded += pack.size;
      this.s.ctx.stored?.added(pack.size);
    }
    return { chunks: fresh.length, bytes };
  }
}

/** HAS: which of these chunks the vault holds (those it holds are now leased to the session). */
export async function has(s: VaultSession, ids: Buffer): Promise<void> {
  await s.othersLanded();
  const n = ids.length / CHUNK_ID_BYTES;
  // what this session is told is present stays until it commits or the lease ends
  const bitmap = s.ctx.repo.catalogue.vault.hasAndLease(s.id, ids, CHUNK_ID_BYTES, Date.now() + s.ctx.leaseTtlMs);
  let present = 0;
  for (let i = 0; i < n; i++) if (bitmap[i >> 3]! & (1 << (i & 7))) present++;
  s.ops.has += n;
  s.ops.present += present;
  return s.send(Frame.HAS_REPLY, bitmap);
}

/** PUT: chunk ID ‖ BLAKE3 of the blob ‖ blob. */
export function put(s: VaultSession, p: Buffer, f: RawFrame): void {
  // kept until the flush: copied unless the frame was gathered into memory of its own
  const id = Buffer.from(p.subarray(0, 32));
  const sum = p.subarray(32, 64);
  const blob = f.owned ? p.subarray(64) : Buffer.from(p.subarray(64));
  s.uploads.put(id, sum, blob);
}

/** PUT_NEXT: the blob of the next chunk the last WANT_REPLY named. */
export function putNext(s: VaultSession, p: Buffer, f: RawFrame): void {
  s.uploads.putNext(f.owned ? p : Buffer.from(p));
}

/** PUT_RUN: the blobs of the next n chunks the last WANT_REPLY named. */
export function putRun(s: VaultSession, run: PutRun, f: RawFrame): void {
  s.uploads.putRun(f.owned ? f.payload : Buffer.from(f.payload), run);
}

/** FLUSH: make the batch durable (FLUSHED answers once it is). */
export function flush(s: VaultSession, b: { seq: number; sum?: string | undefined; digests?: string | undefined }): Promise<void> {
  return s.uploads.flush(b.seq, b.sum, b.digests);
}
