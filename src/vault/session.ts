import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import { Blake3Hasher, blake3 } from '@napi-rs/blake-hash';
import { KuraError, isKuraError } from '../errors.js';
import { blobInfo, CHUNK_ID_BYTES } from '../crypto/blob.js';
import { Frame, FrameParser, OLDEST_PROTOCOL, PROTOCOL_VERSION, encodeFrame, frameName, jsonOf, type RawFrame } from '../protocol/frames.js';
import { keepChannelWindow } from '../protocol/window.js';
import { storePack } from '../repository/pack.js';
import { blobDigest, DIGEST_BYTES, runDigests } from '../repository/digest.js';
import type { Repository } from '../repository/repository.js';
import { decodeSnapshot, snapshotChunkIds, snapshotIdOf, type DecodedSnapshot } from '../repository/snapshot.js';
import { expandListTree, idsOf } from '../repository/chunklist.js';
import { snapshotName } from '../store/backend.js';
import { listFetcher, readChunk } from '../repository/reader.js';
import { setProtected } from '../retention/protect.js';
import { roleAllows, type Role } from './access.js';
import type { AuditLog } from './audit.js';
import { TransferAccounting } from './transfer-accounting.js';

export interface SessionContext {
  tenant: string;
  role: Role;
  repo: Repository;
  audit: AuditLog;
  peer: { ip?: string; user?: string; key?: string };
  maxFrame: number;
  leaseTtlMs: number;
  /** stored bytes the tenant may hold (vault.tenants.<t>.quota) */
  quota?: number | undefined;
  log: { info: (o: object, m: string) => void; warn: (o: object, m: string) => void };
}

const MAX_PENDING_BYTES = 64 << 20; // PUT data accepted before the client must FLUSH
const MAX_CHUNK_BLOB = (256 << 20) + 64;
const WANT_MAX = 65536; // IDs per WANT_REPLY (2 MiB); the client asks again after sending them

/** Per repository: its sessions that have not finished (their received batches may not be durable yet). */
const liveSessions = new WeakMap<object, Set<VaultSession>>();
const OTHERS_WAIT_MS = 30_000; // longest a WANT or HAS waits for other sessions' data to land
const SENDER_IDLE_MS = 1000; // a session receiving nothing this long has nothing more on the way

/**
 * One authenticated protocol session on a tenant's repository. Whatever a client sends, it only
 * reaches `ctx.repo` (its own tenant's), only through the operations its role allows, and every
 * refusal ends the session with an ERROR frame and an audit line.
 */
export class VaultSession {
  readonly id = randomBytes(8).toString('hex');
  private pending: Array<{ id: Buffer; blob: Buffer; digest: Buffer }> = [];
  private pendingBytes = 0;
  /** how many of `pending` came as PUT_NEXT (hashed by batchSum, in order) */
  private pendingNext = 0;
  private greeted = false;
  private closed = false;
  private ops = { has: 0, present: 0, put: 0, putBytes: 0, putRuns: 0, commits: 0 };
  /** Pack writes run behind the frame loop, so receiving continues during fdatasync. */
  private flushing: Promise<void> = Promise.resolve();
  private flushFailure: unknown = null;

  private stopping = false;
  private wakeLoop: () => void = () => {};
  /** when data last arrived, and whether the client's side of the channel has ended */
  private lastInputAt = Date.now();
  private inputEnded = false;
  /** settles when the session is over and every batch it received is durable */
  private readonly finished: Promise<void>;
  private finish: () => void = () => {};
  /** protocol bytes both ways, kept in the tenant's catalogue (kura vault usage) */
  private readonly transfer: TransferAccounting;

  constructor(private readonly ctx: SessionContext, private readonly input: Readable, private readonly output: Writable) {
    this.finished = new Promise<void>((r) => (this.finish = r));
    this.transfer = new TransferAccounting(ctx.repo.catalogue, (e) => ctx.log.warn({ tenant: ctx.tenant, session: this.id }, `transfer bytes not recorded yet: ${(e as Error).message}`));
  }

  /** End the session after the frame being handled (the vault is stopping). */
  stop(): void {
    this.stopping = true;
    this.wakeLoop();
  }

  /** Serve until the client closes the channel or an error ends the session. */
  async run(): Promise<void> {
    const { ctx } = this;
    const parser = new FrameParser(ctx.maxFrame);
    ctx.audit.write({ event: 'session-start', outcome: 'ok', tenant: ctx.tenant, session: this.id, role: ctx.role, ...ctx.peer });
    const queue: RawFrame[] = [];
    let wake: (() => void) | null = null;
    let failure: KuraError | null = null;
    const consumed = keepChannelWindow(this.input);
    let others = liveSessions.get(ctx.repo);
    if (!others) liveSessions.set(ctx.repo, (others = new Set()));
    others.add(this);
    this.input.on('data', (d: Buffer) => {
      consumed();
      this.transfer.read(d.length);
      this.lastInputAt = Date.now();
      if (failure) return;
      try {
        queue.push(...parser.push(d));
      } catch (e) {
        failure = e as KuraError;
      }
      if (queue.length > 256) this.input.pause();
      wake?.();
    });
    const onEnd = () => {
      // until its last batches are durable, a new session must not be told they are missing
      this.inputEnded = true;
      if (parser.pending > 0 && !failure) failure = new KuraError('E_FRAME_TRUNCATED', `the channel closed inside a frame (${parser.pending} bytes of it arrived)`);
      wake?.();
    };
    this.input.once('end', onEnd);
    this.input.once('close', onEnd);
    this.input.once('error', onEnd);
    this.wakeLoop = () => wake?.();
    try {
      for (;;) {
        if (queue.length === 0 && !failure && !this.inputEnded && !this.stopping) await new Promise<void>((r) => (wake = r));
        wake = null;
        // the vault is stopping: what was fully received and flushed is durable; the client resends the rest
        if (this.stopping) break;
        if (queue.length > 0) {
          const f = queue.shift()!;
          if (queue.length < 64) this.input.resume();
          await this.handle(f);
          this.transfer.handled(f.type);
          continue;
        }
        if (failure) throw failure;
        if (this.inputEnded) break;
      }
      await this.drainFlushes();
      ctx.audit.write({ event: 'session-end', outcome: 'ok', tenant: ctx.tenant, session: this.id, ...this.ops });
    } catch (e) {
      const err = isKuraError(e) ? e : new KuraError('E_INTERNAL', (e as Error).message);
      ctx.audit.write({ event: 'session-refused', outcome: 'refused', tenant: ctx.tenant, session: this.id, code: err.code, reason: err.message, ...ctx.peer, ...this.ops });
      ctx.log.warn({ tenant: ctx.tenant, session: this.id, code: err.code }, err.message);
      await this.send(Frame.ERROR, { code: err.code, message: err.message }).catch(() => {});
    } finally {
      // batches already received are made durable even when the client is gone
      await this.flushing;
      dropPackLeasesQuietly(ctx.repo, this.id);
      this.transfer.record();
      this.closed = true;
      this.output.end();
      others.delete(this);
      this.finish();
    }
  }

  private async send(type: number, payload?: Uint8Array | object): Promise<void> {
    const out = this.output;
    if (this.closed || out.destroyed || out.writableEnded) return; // the client is gone: nobody to answer
    const frame = encodeFrame(type, payload);
    this.transfer.wrote(type, frame.length);
    if (!out.write(frame)) {
      await Promise.race([once(out, 'drain'), once(out, 'close')]).catch(() => {});
    }
  }

  private allow(op: string): void {
    if (!roleAllows[this.ctx.role].has(op)) {
      throw new KuraError('E_FORBIDDEN', `role ${this.ctx.role} of tenant ${this.ctx.tenant} may not ${op}; use a key registered with a role that may (restore or tenant-admin to read, backup or tenant-admin to send)`);
    }
  }

  private async handle(f: RawFrame): Promise<void> {
    const { repo } = this.ctx;
    if (!this.greeted) {
      if (f.type !== Frame.HELLO) throw new KuraError('E_PROTOCOL', `expected HELLO, got ${frameName(f.type)}`);
      const h = jsonOf<{ protocol?: number; tenant?: string }>(f);
      if (typeof h.protocol !== 'number' || !Number.isInteger(h.protocol) || h.protocol < OLDEST_PROTOCOL) {
        throw new KuraError('E_PROTOCOL', `protocol version ${h.protocol} is not supported (this vault speaks ${OLDEST_PROTOCOL} to ${PROTOCOL_VERSION}); upgrade the older side`);
      }
      // a newer client is answered with this vault's version, which it then speaks
      this.protocol = Math.min(h.protocol, PROTOCOL_VERSION);
      if (h.tenant !== this.ctx.tenant) throw new KuraError('E_TENANT_MISMATCH', `session of tenant ${this.ctx.tenant} asked for tenant ${JSON.stringify(h.tenant)}`);
      this.greeted = true;
      return this.send(Frame.HELLO_OK, { protocol: this.protocol, tenant: this.ctx.tenant, role: this.ctx.role, session: this.id, maxFrame: this.ctx.maxFrame });
    }
    switch (f.type) {
      case Frame.HAS: {
        this.allow('HAS');
        await this.othersLanded();
        if (f.payload.length % CHUNK_ID_BYTES !== 0) throw new KuraError('E_PROTOCOL', 'HAS payload is not a list of 32-byte IDs');
        const n = f.payload.length / CHUNK_ID_BYTES;
        // what this session is told is present stays until it commits or the lease ends
        const bitmap = repo.catalogue.hasAndLease(this.id, f.payload, CHUNK_ID_BYTES, Date.now() + this.ctx.leaseTtlMs);
        let present = 0;
        for (let i = 0; i < n; i++) if (bitmap[i >> 3]! & (1 << (i & 7))) present++;
        this.ops.has += n;
        this.ops.present += present;
        return this.send(Frame.HAS_REPLY, bitmap);
      }
      case Frame.PUT: {
        this.allow('PUT');
        if (f.payload.length < 64) throw new KuraError('E_PROTOCOL', 'PUT frame too short');
        // kept until the flush: copied unless the frame was gathered into memory of its own
        const id = Buffer.from(f.payload.subarray(0, 32));
        const sum = f.payload.subarray(32, 64);
        const blob = f.owned ? f.payload.subarray(64) : Buffer.from(f.payload.subarray(64));
        if (!blake3(blob).equals(sum)) throw new KuraError('E_CHUNK_CORRUPT', `chunk ${id.toString('hex')} arrived damaged (checksum mismatch)`);
        return this.accept(id, blob, blobDigest(blob));
      }
      case Frame.WANT: {
        this.allow('WANT');
        if (this.protocol < 2) throw new KuraError('E_PROTOCOL', 'WANT needs protocol version 2: say so in HELLO (a kura relay of this version does), or use HAS and PUT');
        await this.settle('WANT');
        const s = this.announced(f.payload);
        if (!s.data) await this.othersLanded(s.id);
        const want = await this.lacking(s);
        this.expected = want.ids;
        this.expectedAt = 0;
        const out = Buffer.allocUnsafe(8 + 32 * want.ids.length + 8 * want.prefixes.length);
        out.writeUInt32BE(want.ids.length, 0);
        want.ids.forEach((id, i) => id.copy(out, 4 + 32 * i));
        const at = 4 + 32 * want.ids.length;
        out.writeUInt32BE(want.prefixes.length, at);
        want.prefixes.forEach((p, i) => p.copy(out, at + 4 + 8 * i));
        return this.send(Frame.WANT_REPLY, out);
      }
      case Frame.PUT_NEXT: {
        this.allow('PUT_NEXT');
        const id = this.expected[this.expectedAt++];
        if (!id) throw new KuraError('E_PROTOCOL', `PUT_NEXT beyond the ${this.expected.length} chunk(s) the last WANT_REPLY listed`);
        const blob = f.owned ? f.payload : Buffer.from(f.payload);
        (this.batchSum ??= new Blake3Hasher()).update(blob);
        const digest = blobDigest(blob);
        (this.batchDigests ??= new Blake3Hasher()).update(digest);
        this.pendingNext++;
        return this.accept(id, blob, digest);
      }
      case Frame.PUT_RUN: {
        this.allow('PUT_RUN');
        if (this.protocol < 3) throw new KuraError('E_PROTOCOL', 'PUT_RUN needs protocol version 3: say so in HELLO, or use PUT_NEXT');
        const p = f.owned ? f.payload : Buffer.from(f.payload);
        const n = p.length >= 4 ? p.readUInt32BE(0) : -1;
        const start = 4 + 4 * n;
        let total = 0;
        for (let i = 0; i < n && start <= p.length; i++) total += p.readUInt32BE(4 + 4 * i);
        if (n < 1 || start > p.length || start + total !== p.length) throw new KuraError('E_PROTOCOL', `a PUT_RUN frame whose blob lengths do not add up to its size (${p.length} bytes)`);
        if (this.expectedAt + n > this.expected.length) throw new KuraError('E_PROTOCOL', `PUT_RUN beyond the ${this.expected.length} chunk(s) the last WANT_REPLY listed`);
        (this.batchSum ??= new Blake3Hasher()).update(p.subarray(start));
        // the blobs' digests, side by side in one call: recorded in the pack's index, checked at FLUSH
        const lengths = Array.from({ length: n }, (_, i) => p.readUInt32BE(4 + 4 * i));
        const digests = runDigests(p.subarray(start), lengths);
        (this.batchDigests ??= new Blake3Hasher()).update(digests);
        this.ops.putRuns++;
        for (let i = 0, at = start; i < n; i++) {
          const blob = p.subarray(at, (at += lengths[i]!));
          this.pendingNext++;
          this.accept(this.expected[this.expectedAt++]!, blob, digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES));
        }
        return;
      }
      case Frame.FLUSH: {
        this.allow('FLUSH');
        const { seq, sum, digests } = jsonOf<{ seq: number; sum?: string; digests?: string }>(f);
        if (this.flushFailure) throw this.flushFailure;
        this.checkBatchDigests(seq, digests);
        let hashed: Blake3Hasher | undefined;
        if (this.batchSum) {
          // PUT_NEXT blobs carry no checksum each: the batch's is checked before it is written
          hashed = this.batchSum;
          const got = hashed.digest('hex');
          this.batchSum = null;
          if (sum !== got) {
            this.pending = [];
            this.pendingNext = 0;
            throw new KuraError('E_CHUNK_CORRUPT', `the batch flushed as ${seq} arrived damaged (checksum ${String(sum)} expected, ${got} received); nothing of it was stored, send it again`);
          }
        }
        // a batch of PUT_NEXT blobs only: the pack's ID continues the checksum's hash
        const allNext = this.pendingNext === this.pending.length ? hashed : undefined;
        // packs are written concurrently (fdatasync latency dominates); replies go out in order
        const written = this.writePack(this.takePending(), allNext);
        written.catch(() => {});
        this.flushing = Promise.all([this.flushing, written])
          .then(([, w]) => this.send(Frame.FLUSHED, { seq, ...w }))
          .catch((e) => {
            this.flushFailure ??= e;
          });
        // too many batches waiting for the disk: stop reading until they are written
        if (this.queuedFlushes++ >= 8) {
          await this.flushing;
          this.queuedFlushes = 0;
        }
        return;
      }
      case Frame.COMMIT: {
        this.allow('COMMIT');
        await this.settle('COMMIT');
        const announced = this.announced(f.payload);
        const { id, snap, bytes, complete } = announced;
        // after a WANT that found nothing lacking, everything is leased to this session: no need
        // to read the chunk list again
        const missing = complete ? [] : await this.missingFor(snap);
        if (missing.length > 0) throw new KuraError('E_CHUNK_MISSING', `snapshot ${id} refers to ${missing.length} chunk(s) this vault does not hold (first ${missing[0]}); send them and commit again (a kura relay does so on its next attempt; if it keeps failing, run "kura check" on the sending repository)`, { missing: missing.length });
        const existed = !(await repo.store.putIfAbsent(snapshotName(id), bytes));
        await repo.store.sync();
        repo.catalogue.commitSnapshot(this.id, id, snap.header);
        announced.committed = true;
        this.ops.commits++;
        this.ctx.audit.write({ event: 'commit', outcome: 'ok', tenant: this.ctx.tenant, session: this.id, snapshot: id, source: snap.header.source, existed });
        return this.send(Frame.COMMITTED, { id, existed });
      }
      case Frame.LIST: {
        this.allow('LIST');
        const { source } = jsonOf<{ source?: string }>(f);
        const rows = repo.catalogue.snapshots(source ? { source } : {}).map((r) => {
          const received = repo.catalogue.receivedAt(r.id);
          return { id: r.id, ...r.header, receivedAt: received?.at ?? null, receivedSeq: received?.seq ?? null };
        });
        return this.send(Frame.LIST_REPLY, rows);
      }
      case Frame.GET_SNAPSHOT: {
        this.allow('GET_SNAPSHOT');
        const { id } = jsonOf<{ id: string }>(f);
        if (!/^[0-9a-f]{64}$/.test(String(id))) throw new KuraError('E_PROTOCOL', 'GET_SNAPSHOT needs a full snapshot ID');
        const bytes = await repo.store.get(snapshotName(id));
        if (!bytes) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `snapshot ${id} is not in tenant ${this.ctx.tenant}'s vault repository`);
        this.ctx.audit.write({ event: 'get-snapshot', outcome: 'ok', tenant: this.ctx.tenant, session: this.id, snapshot: id });
        return this.send(Frame.SNAPSHOT, bytes);
      }
      case Frame.GET_CHUNKS: {
        this.allow('GET_CHUNKS');
        if (f.payload.length % CHUNK_ID_BYTES !== 0) throw new KuraError('E_PROTOCOL', 'GET_CHUNKS payload is not a list of 32-byte IDs');
        for (let o = 0; o < f.payload.length; o += CHUNK_ID_BYTES) {
          const id = f.payload.subarray(o, o + CHUNK_ID_BYTES);
          const blob = await readChunk(repo, id);
          if (!blob) throw new KuraError('E_CHUNK_MISSING', `chunk ${id.toString('hex')} is not in tenant ${this.ctx.tenant}'s vault repository`);
          await this.send(Frame.CHUNK, Buffer.concat([id, blob]));
        }
        return;
      }
      case Frame.PROTECT: {
        this.allow('PROTECT');
        const { id, protect } = jsonOf<{ id: string; protect: boolean }>(f);
        if (!/^[0-9a-f]{64}$/.test(String(id))) throw new KuraError('E_PROTOCOL', 'PROTECT needs a full snapshot ID');
        const changed = await setProtected(repo, id, Boolean(protect));
        this.ctx.audit.write({ event: protect ? 'protect' : 'unprotect', outcome: 'ok', tenant: this.ctx.tenant, session: this.id, snapshot: id, changed });
        return this.send(Frame.PROTECTED, { id, protected: Boolean(protect), changed });
      }
      case Frame.STATS: {
        this.allow('STATS');
        return this.send(Frame.STATS_REPLY, { tenant: this.ctx.tenant, ...repo.catalogue.counts() });
      }
      default:
        throw new KuraError('E_PROTOCOL', `unexpected ${frameName(f.type)} frame`);
    }
  }

  private protocol = PROTOCOL_VERSION;
  /** Snapshot files this session was sent (WANT), by ID: later WANTs and the COMMIT name them. */
  private snapshotFiles = new Map<string, Announced>();
  /** The IDs of the last WANT_REPLY, which PUT_NEXT frames fill in order. */
  private expected: Buffer[] = [];
  private expectedAt = 0;
  private batchSum: Blake3Hasher | null = null;

  /** Protocol 4: the digests of the batch's blobs, as recorded when they were written, must be those of the blobs that arrived. */
  private batchDigests: Blake3Hasher | null = null;
  private checkBatchDigests(seq: number, sent: string | undefined): void {
    const got = this.batchDigests?.digest('hex');
    this.batchDigests = null;
    if (this.protocol < 4 || got === undefined || sent === got) return;
    this.pending = [];
    this.pendingNext = 0;
    this.batchSum = null;
    throw new KuraError('E_CHUNK_CORRUPT', `a blob of the batch flushed as ${seq} does not match the digest recorded when it was written (digests ${String(sent)} expected, ${got} received); nothing of it was stored, send it again`);
  }

  private accept(id: Buffer, blob: Buffer, digest: Buffer): void {
    const info = blobInfo(blob);
    if (!info || blob.length > MAX_CHUNK_BLOB) throw new KuraError('E_CHUNK_CORRUPT', `chunk ${id.toString('hex')} is not a valid blob`);
    this.pending.push({ id, blob, digest });
    this.pendingBytes += blob.length;
    this.checkQuota();
    this.ops.put++;
    this.ops.putBytes += blob.length;
    if (this.pendingBytes > MAX_PENDING_BYTES) throw new KuraError('E_PROTOCOL', `more than ${MAX_PENDING_BYTES} bytes of PUT without FLUSH`);
  }

  /** What a snapshot refers to that this vault does not hold: chunks by ID, delta bases by prefix. */
  private async missingFor(snap: DecodedSnapshot): Promise<string[]> {
    const { catalogue } = this.ctx.repo;
    const missing: string[] = [];
    // the chunk list blocks are plaintext: the vault reads them (a missing one refuses the commit)
    const ids = [...idsOf(await snapshotChunkIds(snap, listFetcher(this.ctx.repo)))];
    for (const c of ids) if (!catalogue.hasChunk(c)) missing.push(c.toString('hex'));
    for (const prefix of catalogue.basesNeeded(ids).missing) missing.push(`${prefix.toString('hex')}… (a delta's base)`);
    return missing;
  }

  /** Before WANT and COMMIT: every batch received so far is durable and recorded. */
  private async settle(op: string): Promise<void> {
    if (this.batchSum) throw new KuraError('E_PROTOCOL', `PUT_NEXT data must be FLUSHed (with its checksum) before ${op}`);
    await this.drainFlushes();
    await this.writePack(this.takePending());
  }

  /** The snapshot file of a WANT or COMMIT payload: the file itself, or the ID of one sent before. */
  private announced(payload: Buffer): Announced {
    if (payload.length === CHUNK_ID_BYTES) {
      const known = this.snapshotFiles.get(payload.toString('hex'));
      if (!known) throw new KuraError('E_PROTOCOL', `snapshot ${payload.toString('hex')} was not sent in this session; send the snapshot file itself`);
      return known;
    }
    const id = snapshotIdOf(payload);
    const snap = decodeSnapshot(payload, id);
    if (snap.header.tenant !== this.ctx.tenant) {
      throw new KuraError('E_TENANT_MISMATCH', `snapshot ${id} belongs to tenant ${snap.header.tenant}, not ${this.ctx.tenant}`);
    }
    const known = this.snapshotFiles.get(id);
    if (known) return known;
    const a: Announced = { id, snap, bytes: Buffer.from(payload), open: [], complete: false, committed: false };
    if (this.snapshotFiles.size >= 16) this.snapshotFiles.delete(this.snapshotFiles.keys().next().value!);
    this.snapshotFiles.set(id, a);
    return a;
  }

  /**
   * What the vault lacks to commit a snapshot, as far as it can see now: its missing chunk list
   * blocks (the data they list comes next round), else its missing data chunks (at most
   * WANT_MAX), and the bases missing for the deltas it holds (prefixes). Whatever is present is
   * leased to this session, as a HAS answer is.
   */
  private async lacking(s: Announced): Promise<{ ids: Buffer[]; prefixes: Buffer[] }> {
    const { repo } = this.ctx;
    const expires = Date.now() + this.ctx.leaseTtlMs;
    const absent = (ids: Buffer[]): Buffer[] => {
      const bitmap = repo.catalogue.hasAndLease(this.id, Buffer.concat(ids), CHUNK_ID_BYTES, expires);
      this.ops.has += ids.length;
      const out = ids.filter((_, i) => !(bitmap[i >> 3]! & (1 << (i & 7))));
      this.ops.present += ids.length - out.length;
      return out;
    };
    if (!s.data) {
      let level = s.snap.listIds;
      for (let d = s.snap.listDepth; d > 0; d--) {
        const missing = absent(distinct(level));
        if (missing.length > 0) return { ids: missing.slice(0, WANT_MAX), prefixes: [] };
        level = await expandListTree(level, 1, listFetcher(repo), `snapshot ${s.id}`);
      }
      if (level.length !== s.snap.header.chunkCount * CHUNK_ID_BYTES) {
        throw new KuraError('E_SNAPSHOT_CORRUPT', `snapshot ${s.id}: its chunk list holds ${level.length / CHUNK_ID_BYTES} chunks, its header ${s.snap.header.chunkCount}`, { snapshot: s.id });
      }
      s.open = s.data = distinct(level);
    }
    // what was present when asked before in this session is leased: only the rest is asked again
    s.open = absent(s.open);
    if (s.open.length > 0) return { ids: s.open.slice(0, WANT_MAX), prefixes: [] };
    const prefixes = repo.catalogue.basesNeeded(s.data).missing;
    s.complete = prefixes.length === 0;
    return { ids: [], prefixes };
  }

  /**
   * Before telling a client what is missing, let data already on its way to this repository land
   * (at most OTHERS_WAIT_MS): sessions whose client is gone but which still make received
   * batches durable, and, for a snapshot (`id`), sessions still receiving data for it. The
   * latter is a killed or cut-off relay's connection: what it had written before it died (socket
   * buffers on the way hold megabytes) still arrives, and a restarted relay must not be told to
   * send it again.
   */
  private async othersLanded(id?: string): Promise<void> {
    const deadline = Date.now() + OTHERS_WAIT_MS;
    for (;;) {
      const waitFor = [...(liveSessions.get(this.ctx.repo) ?? [])].filter((o) => o !== this && o.mayStillLand(id));
      const left = deadline - Date.now();
      if (waitFor.length === 0 || left <= 0 || this.stopping) return;
      // a sender that goes quiet is re-examined: it may have nothing more on the way
      await Promise.race([Promise.all(waitFor.map((o) => o.finished)), new Promise((r) => setTimeout(r, Math.min(left, SENDER_IDLE_MS / 4)).unref())]);
    }
  }

  /** Whether data this session received, or is still receiving for snapshot `id`, may yet become durable. */
  private mayStillLand(id: string | undefined): boolean {
    if (this.closed) return false;
    if (this.inputEnded) return true;
    const s = id === undefined ? undefined : this.snapshotFiles.get(id);
    return s !== undefined && !s.committed && Date.now() - this.lastInputAt < SENDER_IDLE_MS;
  }

  private queuedFlushes = 0;
  /** Stored bytes of the tenant when this session first sent data, plus what it stored since. */
  private storedBase: number | null = null;
  private storedAdded = 0;

  private checkQuota(): void {
    const quota = this.ctx.quota;
    if (quota === undefined) return;
    this.storedBase ??= this.ctx.repo.catalogue.counts().storedBytes;
    const total = this.storedBase + this.storedAdded + this.pendingBytes;
    if (total > quota) {
      throw new KuraError(
        'E_QUOTA',
        `tenant ${this.ctx.tenant} would exceed its quota of ${quota} bytes (${this.storedBase + this.storedAdded} stored, ${this.pendingBytes} more sent); the vault operator can raise vault.tenants.${this.ctx.tenant}.quota, or prune and gc`,
        { quota, stored: this.storedBase + this.storedAdded },
      );
    }
  }

  private async drainFlushes(): Promise<void> {
    await this.flushing;
    this.queuedFlushes = 0;
    if (this.flushFailure) throw this.flushFailure;
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
    const { repo } = this.ctx;
    let bytes = 0;
    const seen = new Set<string>();
    const fresh = batch.filter((p) => {
      bytes += p.blob.length;
      const k = p.id.toString('base64');
      if (seen.has(k) || repo.catalogue.hasChunk(p.id)) return false;
      seen.add(k);
      return true;
    });
    if (fresh.length > 0) {
      const expires = Date.now() + this.ctx.leaseTtlMs;
      // the pack lease keeps a concurrent GC off the file until its chunks are recorded
      const pack = await storePack(repo.store, fresh, (id) => repo.catalogue.leasePack(id, this.id, expires), fresh.length === batch.length ? blobsHashed : undefined);
      const rows = pack.entries.map((e, i) => {
        const info = blobInfo(fresh[i]!.blob)!;
        return { id: e.id, pack: pack.id, offset: e.offset, storedSize: e.length, plainSize: info.plainLength, bases: info.bases.map((b) => Buffer.from(b)), digest: e.digest };
      });
      repo.catalogue.addSessionPack(this.id, pack.id, rows, expires, pack.size);
      this.storedAdded += pack.size;
    }
    return { chunks: fresh.length, bytes };
  }
}

/** A snapshot file a client sent in WANT or COMMIT, and what WANT found of its data chunks. */
interface Announced {
  id: string;
  snap: DecodedSnapshot;
  bytes: Buffer;
  /** its distinct data chunks, once its chunk list could be read */
  data?: Buffer[];
  /** those not present when last asked */
  open: Buffer[];
  /** the last WANT found nothing lacking (all it found present is leased to this session) */
  complete: boolean;
  /** this session committed it */
  committed: boolean;
}

function distinct(list: Buffer): Buffer[] {
  const seen = new Set<string>();
  const out: Buffer[] = [];
  for (const id of idsOf(list)) {
    const k = id.toString('base64');
    if (!seen.has(k)) {
      seen.add(k);
      out.push(id);
    }
  }
  return out;
}

function dropPackLeasesQuietly(repo: Repository, session: string): void {
  try {
    repo.catalogue.dropPackLeases(session);
  } catch {
    // the catalogue is closing; the leases expire on their own
  }
}
