import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import { KuraError, isKuraError } from '../errors.js';
import { Frame, FrameParser, PROTOCOL_VERSION, encodeFrame, type RawFrame } from '../protocol/frames.js';
import { CHANNEL_WINDOW, keepChannelWindow } from '../protocol/window.js';
import type { Repository } from '../repository/repository.js';
import type { Role } from './access.js';
import type { AuditEvent, AuditLog } from './audit.js';
import type { VaultConfig } from '../config/schema.js';
import type { UsageSources } from './maintenance.js';
import type { Person } from './rights.js';
import { operatorFields, type OperatorAuthority } from './operators.js';
import type { SlotTable } from './slots.js';
import { TransferAccounting } from './transfer-accounting.js';
import { dispatch } from './frames/dispatch.js';
import { Uploads } from './frames/upload.js';
import { Announcements } from './frames/snapshots.js';
import type { BudgetMember, Holding, MemoryBudget } from './memory.js';
import { refusalOf } from './refusal.js';
import type { SessionRouting } from './forward.js';
import type { OperatorEndpoint } from './operator/endpoint.js';

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
  /** where the quota check gets the tenant's stored bytes (vault nodes: the store's listing); absent: its catalogue */
  stored?: QuotaBase | undefined;
  /** the backup-window slots this vault leases (modules.virtualization coordinator) */
  slots?: SlotTable | undefined;
  log: { info: (o: object, m: string) => void; warn: (o: object, m: string) => void };
  /** the vault process's memory for sessions (vault.limits) */
  budget: MemoryBudget;
  /** the connection the channel runs on (ssh2's socket): answers wait while it is backed up, too */
  transport?: Writable | undefined;
  /** the vault's routing: MOVED answers, receive log, forwarding queues (vault.routes) */
  routing?: SessionRouting | undefined;
  /** the vault's config and its operator tickets: AUTH, PRUNE, DELETE, USAGE (absent: keys only, no administration frames) */
  vault?: VaultServices | undefined;
  /** the operator endpoint where people sign in (vault.sso; `kura vault serve` only) */
  operator?: OperatorEndpoint | undefined;
}

/** The tenant's stored bytes as the quota counts them, and the bytes a session adds. */
export interface QuotaBase {
  stored(): Promise<{ bytes: number; from: string }>;
  added(bytes: number): void;
}

export interface VaultServices {
  cfg: VaultConfig;
  /** where USAGE takes its figures (vault nodes: the store); absent: the tenants' catalogues */
  usage?: UsageSources | undefined;
  /** time zone of retention periods (PRUNE) */
  timeZone: string;
  /** vault.sso's tickets, or null without vault.sso */
  operators: OperatorAuthority | null;
}

/** Per repository: its sessions that have not finished (their received batches may not be durable yet). */
const liveSessions = new WeakMap<object, Set<VaultSession>>();
const OTHERS_WAIT_MS = 30_000; // longest a WANT or HAS waits for other sessions' data to land
const SENDER_IDLE_MS = 1000; // a session receiving nothing this long has nothing more on the way
/**
 * Bytes of handled-later frames a session reads ahead before it stops reading (and stops granting
 * SSH window): the window is granted again only as frames are handled. Less when many sessions
 * share the vault's memory, never less than ssh2's own window (2 MiB).
 */
const READ_AHEAD = CHANNEL_WINDOW;
const MIN_READ_AHEAD = 2 << 20;
/** Written but unsent bytes on the connection beyond which an answer waits (a client that does not read). */
const TRANSPORT_HIGH = 1 << 20;

/** Frames that carry PUT data, and those that make what came before durable. */
const CARRIES_DATA: ReadonlySet<number> = new Set([Frame.PUT, Frame.PUT_NEXT, Frame.PUT_RUN]);
const WRITES_PENDING: ReadonlySet<number> = new Set([Frame.FLUSH, Frame.WANT, Frame.COMMIT]);

/** The client closed its channel while it was being answered: the session ends, nobody is refused. */
class ClientGone extends Error {}

/**
 * One authenticated protocol session on a tenant's repository. Whatever a client sends, it only
 * reaches `ctx.repo` (its own tenant's), only through the operations its role allows, and every
 * refusal ends the session with an ERROR frame and an audit line. What each request needs and
 * does is its entry in ./frames/ (role, payload schema, handler); ./frames/dispatch.ts checks it and
 * calls it, one frame at a time, from this loop.
 */
export class VaultSession implements BudgetMember {
  readonly id = randomBytes(8).toString('hex');
  /** the protocol version both sides speak (HELLO settles it) */
  protocol = PROTOCOL_VERSION;
  greeted = false;
  /** what the session did, in its audit line; `frames`: the requests it took, a refused one included */
  readonly ops = { frames: 0, has: 0, present: 0, put: 0, putBytes: 0, putRuns: 0, commits: 0 };
  /** PUT data waiting for FLUSH, and the packs being written */
  readonly uploads: Uploads;
  /** snapshot files sent in WANT or COMMIT */
  readonly snapshots: Announcements;
  /** the person acting on this session (AUTH), or null: the SSH key alone */
  person: Person | null = null;
  /** the session passed a step-up check (a restore goes on reading its chunks) */
  steppedUp = false;

  private closed = false;
  private stopping = false;
  /** what ends the session at once: a refusal by the memory budget, a pack that could not be written, the end */
  private failure: unknown = null;
  /** a frame that could not be read (too large, truncated): the session ends once the frames before it are answered */
  private inputFailure: KuraError | null = null;
  private wakeLoop: () => void = () => {};
  /** frames received and not yet handled, and their bytes */
  private queue: RawFrame[] = [];
  private queuedBytes = 0;
  /** the frame being handled (a PUT's blob counts until it has joined the pending batch) */
  private handlingBytes = 0;
  private readonly parser: FrameParser;
  private grantWindow: (held: number, size: number) => void = () => {};
  private reading = true;
  /** settles when the client's side of the output is gone, or when the session fails */
  private readonly outputGone: Promise<void>;
  private outputClosed = false;
  /** settles when the session fails or the vault stops: what waits for the client gives up then */
  private readonly interrupted: Promise<void>;
  private markInterrupted: () => void = () => {};
  /** the vault is stopping: a long reply (GET_CHUNKS) ends early, the client reads the rest from a vault that runs */
  get isStopping(): boolean {
    return this.stopping;
  }
  /** when data last arrived, and whether the client's side of the channel has ended */
  private lastInputAt = Date.now();
  private inputEnded = false;
  /** this session is in othersLanded() */
  private waitingForOthers = false;
  /** settles when the session is over and every batch it received is durable */
  private readonly finished: Promise<void>;
  private finish: () => void = () => {};
  /** protocol bytes both ways, kept in the tenant's catalogue (kura vault usage) */
  private readonly transfer: TransferAccounting;

  constructor(readonly ctx: SessionContext, private readonly input: Readable, private readonly output: Writable) {
    this.finished = new Promise<void>((r) => (this.finish = r));
    this.transfer = new TransferAccounting(ctx.repo.catalogue.vault, (e) => ctx.log.warn({ tenant: ctx.tenant, session: this.id }, `transfer bytes not recorded yet: ${(e as Error).message}`));
    this.uploads = new Uploads(this);
    this.snapshots = new Announcements(this);
    this.parser = new FrameParser(ctx.maxFrame);
    this.outputGone = new Promise<void>((resolve) => {
      const gone = () => {
        this.outputClosed = true;
        resolve();
      };
      output.once('close', gone);
      output.once('error', gone);
    });
    this.interrupted = new Promise<void>((resolve) => (this.markInterrupted = resolve));
  }

  /**
   * End the session after the frame being handled (the vault is stopping). A reply stuck on a
   * client that does not read (a black-holed line) does not hold the frame up: the server then
   * cuts the connection.
   */
  stop(): void {
    this.stopping = true;
    this.markInterrupted();
    this.wakeLoop();
  }

  /** Serve until the client closes the channel or an error ends the session. */
  async run(): Promise<void> {
    const { ctx, parser, queue } = this;
    ctx.audit.write({ event: 'session-start', outcome: 'ok', tenant: ctx.tenant, session: this.id, role: ctx.role, ...ctx.peer });
    let wake: (() => void) | null = null;
    this.grantWindow = keepChannelWindow(this.input, READ_AHEAD);
    let others = liveSessions.get(ctx.repo);
    if (!others) liveSessions.set(ctx.repo, (others = new Set()));
    others.add(this);
    const leaveBudget = ctx.budget.join(this);
    this.input.on('data', (d: Buffer) => {
      this.transfer.read(d.length);
      this.lastInputAt = Date.now();
      if (this.failure || this.inputFailure) return; // an ending session drops what is still on its way
      const { frames, error } = parser.pushSome(d);
      for (const f of frames) {
        queue.push(f);
        this.queuedBytes += 5 + f.payload.length;
      }
      if (error) {
        this.inputFailure = error;
        parser.reset();
      }
      ctx.budget.enforce();
      this.flow();
      wake?.();
    });
    const onEnd = () => {
      // until its last batches are durable, a new session must not be told they are missing
      this.inputEnded = true;
      if (parser.pending > 0 && !this.failure && !this.inputFailure) this.inputFailure = new KuraError('E_FRAME_TRUNCATED', `the channel closed inside a frame (${parser.pending} bytes of it arrived)`);
      wake?.();
    };
    this.input.once('end', onEnd);
    this.input.once('close', onEnd);
    this.input.once('error', onEnd);
    this.wakeLoop = () => wake?.();
    this.flow();
    try {
      for (;;) {
        if (queue.length === 0 && !this.failure && !this.inputFailure && !this.inputEnded && !this.stopping) await new Promise<void>((r) => (wake = r));
        wake = null;
        // the vault is stopping: what was fully received and flushed is durable; the client resends the rest
        if (this.stopping) break;
        if (this.failure) throw this.failure;
        // frames received before one that could not be read are answered first
        if (queue.length > 0) {
          const f = queue.shift()!;
          this.queuedBytes -= (this.handlingBytes = 5 + f.payload.length);
          this.ops.frames++;
          await dispatch(this, f);
          this.handlingBytes = 0;
          this.transfer.handled(f.type);
          this.flow();
          ctx.budget.released();
          continue;
        }
        if (this.inputFailure) {
          this.ops.frames++;
          throw this.inputFailure;
        }
        if (this.inputEnded) break;
      }
      await this.uploads.drain();
      ctx.audit.write({ event: 'session-end', outcome: 'ok', tenant: ctx.tenant, session: this.id, ...operatorFields(this.person), ...this.ops });
    } catch (e) {
      if (e instanceof ClientGone) {
        ctx.audit.write({ event: 'session-end', outcome: 'ok', tenant: ctx.tenant, session: this.id, ended: e.message, ...operatorFields(this.person), ...this.ops });
      } else {
        const err = await refusalOf(e, ctx);
        ctx.audit.write({ event: 'session-refused', outcome: 'refused', tenant: ctx.tenant, session: this.id, code: err.code, reason: err.message, ...ctx.peer, ...operatorFields(this.person), ...this.ops });
        ctx.log.warn({ tenant: ctx.tenant, session: this.id, code: err.code }, err.message);
        await this.send(Frame.ERROR, { code: err.code, message: err.message }).catch(() => {});
      }
    } finally {
      // nothing more is read: what it held goes (batches already received are written below)
      this.fail(new ClientGone('the session ended'));
      this.dropInput();
      this.uploads.drop();
      this.flow();
      // batches already received are made durable even when the client is gone
      await this.uploads.written();
      dropPackLeasesQuietly(ctx.repo, this.id);
      this.transfer.record();
      this.closed = true;
      this.output.end();
      others.delete(this);
      leaveBudget();
      this.finish();
    }
  }

  /**
   * PUT data received that is still to become durable: packs being written, and data (pending,
   * or in queued frames) that a queued FLUSH, WANT or COMMIT will write. Data nothing will
   * write (the client went away before a FLUSH) never lands.
   */
  private uploadsOnTheWay(): boolean {
    const h = this.uploads.holding();
    if (h.writing > 0) return true;
    const writes = this.queue.some((f) => WRITES_PENDING.has(f.type));
    return writes && (h.pending > 0 || this.queue.some((f) => CARRIES_DATA.has(f.type)));
  }

  /** What this session holds in memory now (MemoryBudget). */
  holding(): Holding {
    return { input: this.parser.pending + this.queuedBytes + this.handlingBytes + this.input.readableLength, ...this.uploads.holding() };
  }

  /** The memory budget refuses this session: it lets go of its input and PUT data and ends with `err`. */
  refuse(err: KuraError): void {
    this.fail(err);
    this.dropInput();
    this.uploads.drop();
    this.flow();
  }

  /** The memory budget has room again: read on, if this session stopped for want of it. */
  roomAgain(): void {
    this.flow();
  }

  /** End the session with `e` once the frame being handled is done (the first failure is the one reported). */
  fail(e: unknown): void {
    if (this.failure === null) {
      this.failure = e;
      this.markInterrupted();
    }
    this.wakeLoop();
  }

  private dropInput(): void {
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.parser.reset();
  }

  /**
   * Read on, granting the client SSH window for what it may send next, only while the frames
   * read ahead are fewer than READ_AHEAD bytes and the vault has memory for sessions; else stop
   * reading (a paused channel also stops ssh2 from topping the window up), so what a client
   * sends beyond that waits on its side of the line. An ending session is granted nothing more.
   */
  private flow(): void {
    if (this.failure || this.inputFailure) {
      // an ending session reads on and drops what still arrives: nothing piles up in the channel
      if (!this.reading) this.input.resume();
      this.reading = true;
      return;
    }
    // with many sessions each reads ahead less: half its share of the vault's memory at most
    const ahead = Math.min(READ_AHEAD, Math.max(MIN_READ_AHEAD, this.ctx.budget.share() / 2));
    const go = this.queuedBytes < ahead / 2 && !this.ctx.budget.full();
    if (go) {
      if (!this.reading) this.input.resume();
      this.reading = true;
      this.grantWindow(this.queuedBytes, ahead);
    } else if (this.reading) {
      this.input.pause();
      this.reading = false;
    }
  }

  /** The frames received after the one being handled, as long as they are of `type` (a restore's GET_CHUNKS read ahead). */
  following(type: number): RawFrame[] {
    const n = this.queue.findIndex((f) => f.type !== type);
    return this.queue.slice(0, n < 0 ? this.queue.length : n);
  }

  /** An audit line of an operator action on this session: its tenant, session and person. */
  audit(e: { event: string; outcome?: AuditEvent['outcome'] } & Record<string, unknown>): void {
    this.ctx.audit.write({ tenant: this.ctx.tenant, session: this.id, ...operatorFields(this.person), ...e, event: e.event, outcome: e.outcome ?? 'ok' });
  }

  /**
   * Write one frame to the client, then wait until it has gone: the channel's buffer drained (the
   * SSH window is open) and the connection is not backed up. So a handler that answers frame after
   * frame (GET_CHUNKS) reads from storage only a bounded read-ahead beyond what the client took.
   */
  send(type: number, payload?: Uint8Array | object): Promise<void> {
    return this.sendEncoded(type, encodeFrame(type, payload));
  }

  /** Like send, for frames of `type` already encoded back to back in `frames`: one write for many small answers (GET_CHUNKS). */
  async sendEncoded(type: number, frame: Buffer): Promise<void> {
    const out = this.output;
    if (this.closed || this.outputClosed || out.destroyed || out.writableEnded) throw new ClientGone('the client closed the channel');
    this.transfer.wrote(type, frame.length);
    out.write(frame);
    if (type === Frame.ERROR) return; // the session ends now: no waiting for a client that may not read
    const transport = this.ctx.transport;
    for (;;) {
      if (this.closed || this.outputClosed || out.destroyed) throw new ClientGone('the client closed the channel');
      // a connection that died does not always close its channels (ssh2): its answer never drains
      if (transport?.destroyed) throw new ClientGone('the client\'s connection closed');
      if (this.failure) throw this.failure;
      const backedUp = out.writableNeedDrain ? out : transport && transport.writableLength > TRANSPORT_HIGH ? transport : null;
      if (!backedUp) return;
      if (this.stopping) throw new ClientGone('the vault stopped while the client was not reading its answer');
      // the listeners go when the wait is over (the connection is shared by many sessions)
      const over = new AbortController();
      const on = (e: NodeJS.EventEmitter, ev: string) => once(e, ev, { signal: over.signal }).catch(() => {});
      try {
        await Promise.race([on(backedUp, 'drain'), on(backedUp, 'close'), ...(transport && transport !== backedUp ? [on(transport, 'close')] : []), this.outputGone, this.interrupted]);
      } finally {
        over.abort();
      }
    }
  }

  /**
   * Before telling a client what is missing, let data already on its way to this repository land
   * (at most OTHERS_WAIT_MS): sessions whose client is gone but which still make received
   * batches durable, and, for a snapshot (`id`), sessions still receiving data for it. The
   * latter is a killed or cut-off relay's connection: what it had written before it died (socket
   * buffers on the way hold megabytes) still arrives, and a restarted relay must not be told to
   * send it again.
   */
  async othersLanded(id?: string): Promise<void> {
    const deadline = Date.now() + OTHERS_WAIT_MS;
    this.waitingForOthers = true;
    try {
      for (;;) {
        const waitFor = [...(liveSessions.get(this.ctx.repo) ?? [])].filter((o) => o !== this && o.mayStillLand(id));
        const left = deadline - Date.now();
        if (waitFor.length === 0 || left <= 0 || this.stopping || this.failure) return;
        // a sender that goes quiet is re-examined: it may have nothing more on the way
        await Promise.race([Promise.all(waitFor.map((o) => o.finished)), this.interrupted, new Promise((r) => setTimeout(r, Math.min(left, SENDER_IDLE_MS / 4)).unref())]);
      }
    } finally {
      this.waitingForOthers = false;
    }
  }

  /** Whether data this session received, or is still receiving for snapshot `id`, may yet become durable. */
  private mayStillLand(id: string | undefined): boolean {
    // one that waits for others itself is not waited for: two such sessions would wait for each other
    if (this.closed || this.waitingForOthers) return false;
    // the client is gone: only PUT data it sent is still to land (a session with none, waiting for others itself, is not waited for)
    if (this.inputEnded) return this.uploadsOnTheWay();
    const s = id === undefined ? undefined : this.snapshots.get(id);
    return s !== undefined && !s.committed && Date.now() - this.lastInputAt < SENDER_IDLE_MS;
  }
}

function dropPackLeasesQuietly(repo: Repository, session: string): void {
  try {
    repo.catalogue.vault.dropPackLeases(session);
  } catch {
    // the catalogue is closing; the leases expire on their own
  }
}
