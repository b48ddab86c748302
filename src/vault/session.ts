import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import { KuraError, isKuraError } from '../errors.js';
import { Frame, FrameParser, PROTOCOL_VERSION, encodeFrame, frameName, type RawFrame } from '../protocol/frames.js';
import { keepChannelWindow } from '../protocol/window.js';
import type { Repository } from '../repository/repository.js';
import { roleMay, type Role } from './access.js';
import type { AuditLog } from './audit.js';
import type { SlotTable } from './slots.js';
import { TransferAccounting } from './transfer-accounting.js';
import { frameEntries } from './frames/index.js';
import { Uploads } from './frames/upload.js';
import { Announcements } from './frames/snapshots.js';

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
  /** the backup-window slots this vault leases (modules.virtualization coordinator) */
  slots?: SlotTable | undefined;
  log: { info: (o: object, m: string) => void; warn: (o: object, m: string) => void };
}

/** Per repository: its sessions that have not finished (their received batches may not be durable yet). */
const liveSessions = new WeakMap<object, Set<VaultSession>>();
const OTHERS_WAIT_MS = 30_000; // longest a WANT or HAS waits for other sessions' data to land
const SENDER_IDLE_MS = 1000; // a session receiving nothing this long has nothing more on the way

/**
 * One authenticated protocol session on a tenant's repository. Whatever a client sends, it only
 * reaches `ctx.repo` (its own tenant's), only through the operations its role allows, and every
 * refusal ends the session with an ERROR frame and an audit line. What each request needs and
 * does is its entry in ./frames/ (role, payload schema, handler); this loop checks and dispatches.
 */
export class VaultSession {
  readonly id = randomBytes(8).toString('hex');
  /** the protocol version both sides speak (HELLO settles it) */
  protocol = PROTOCOL_VERSION;
  greeted = false;
  readonly ops = { has: 0, present: 0, put: 0, putBytes: 0, putRuns: 0, commits: 0 };
  /** PUT data waiting for FLUSH, and the packs being written */
  readonly uploads: Uploads;
  /** snapshot files sent in WANT or COMMIT */
  readonly snapshots: Announcements;

  private closed = false;
  private stopping = false;
  /** the vault is stopping: a long reply (GET_CHUNKS) ends early, the client reads the rest from a vault that runs */
  get isStopping(): boolean {
    return this.stopping;
  }
  private wakeLoop: () => void = () => {};
  /** settles on stop(): a reply waiting for a client that does not read stops waiting */
  private readonly stopRequested: Promise<void>;
  private requestStop: () => void = () => {};
  /** when data last arrived, and whether the client's side of the channel has ended */
  private lastInputAt = Date.now();
  private inputEnded = false;
  /** settles when the session is over and every batch it received is durable */
  private readonly finished: Promise<void>;
  private finish: () => void = () => {};
  /** protocol bytes both ways, kept in the tenant's catalogue (kura vault usage) */
  private readonly transfer: TransferAccounting;

  constructor(readonly ctx: SessionContext, private readonly input: Readable, private readonly output: Writable) {
    this.finished = new Promise<void>((r) => (this.finish = r));
    this.transfer = new TransferAccounting(ctx.repo.catalogue, (e) => ctx.log.warn({ tenant: ctx.tenant, session: this.id }, `transfer bytes not recorded yet: ${(e as Error).message}`));
    this.uploads = new Uploads(this);
    this.snapshots = new Announcements(this);
    this.stopRequested = new Promise<void>((r) => (this.requestStop = r));
  }

  /**
   * End the session after the frame being handled (the vault is stopping). A reply stuck on a
   * client that does not read (a black-holed line) does not hold the frame up: the server then
   * cuts the connection.
   */
  stop(): void {
    this.stopping = true;
    this.requestStop();
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
          await this.dispatch(f);
          this.transfer.handled(f.type);
          continue;
        }
        if (failure) throw failure;
        if (this.inputEnded) break;
      }
      await this.uploads.drain();
      ctx.audit.write({ event: 'session-end', outcome: 'ok', tenant: ctx.tenant, session: this.id, ...this.ops });
    } catch (e) {
      const err = isKuraError(e) ? e : new KuraError('E_INTERNAL', (e as Error).message);
      ctx.audit.write({ event: 'session-refused', outcome: 'refused', tenant: ctx.tenant, session: this.id, code: err.code, reason: err.message, ...ctx.peer, ...this.ops });
      ctx.log.warn({ tenant: ctx.tenant, session: this.id, code: err.code }, err.message);
      await this.send(Frame.ERROR, { code: err.code, message: err.message }).catch(() => {});
    } finally {
      // batches already received are made durable even when the client is gone
      await this.uploads.written();
      dropPackLeasesQuietly(ctx.repo, this.id);
      this.transfer.record();
      this.closed = true;
      this.output.end();
      others.delete(this);
      this.finish();
    }
  }

  /**
   * One request: HELLO first; then the frame's entry decides. Its role is checked, then the
   * protocol version, then the payload's shape (a payload of the wrong shape is E_PROTOCOL,
   * here and nowhere else), and the handler gets the parsed value.
   */
  private async dispatch(f: RawFrame): Promise<void> {
    const entry = frameEntries.get(f.type);
    if (!this.greeted && f.type !== Frame.HELLO) throw new KuraError('E_PROTOCOL', `expected HELLO, got ${frameName(f.type)}`);
    if (!entry || (this.greeted && f.type === Frame.HELLO)) throw new KuraError('E_PROTOCOL', `unexpected ${frameName(f.type)} frame`);
    const name = frameName(f.type);
    if (!roleMay(this.ctx.role, entry.role)) {
      throw new KuraError('E_FORBIDDEN', `role ${this.ctx.role} of tenant ${this.ctx.tenant} may not ${name}; use a key registered with a role that may (restore or tenant-admin to read, backup or tenant-admin to send)`);
    }
    if (entry.since && this.protocol < entry.since.protocol) throw new KuraError('E_PROTOCOL', `${name} needs protocol version ${entry.since.protocol}: ${entry.since.instead}`);
    const body = entry.body.parse(f.payload);
    if (!body.ok) throw new KuraError('E_PROTOCOL', `malformed ${name} frame: ${body.problem}`);
    await entry.handle(this, body.value, f);
  }

  async send(type: number, payload?: Uint8Array | object): Promise<void> {
    const out = this.output;
    if (this.closed || out.destroyed || out.writableEnded) return; // the client is gone: nobody to answer
    const frame = encodeFrame(type, payload);
    this.transfer.wrote(type, frame.length);
    if (!out.write(frame)) {
      await Promise.race([once(out, 'drain'), once(out, 'close'), this.stopRequested]).catch(() => {});
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
    const s = id === undefined ? undefined : this.snapshots.get(id);
    return s !== undefined && !s.committed && Date.now() - this.lastInputAt < SENDER_IDLE_MS;
  }
}

function dropPackLeasesQuietly(repo: Repository, session: string): void {
  try {
    repo.catalogue.dropPackLeases(session);
  } catch {
    // the catalogue is closing; the leases expire on their own
  }
}
