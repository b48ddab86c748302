import { hostname } from 'node:os';
import path from 'node:path';
import { parseDuration } from '../config/duration.js';
import type { KuraConfig } from '../config/schema.js';
import { log } from '../log.js';
import { registeredChannels, filterOf, type Channel, type ChannelFilter } from './channels/index.js';
import { makeEvent, wants, type EventInput, type NotifyEvent } from './events.js';
import { Outbox } from './outbox.js';
import type { Step } from './watch.js';

export type NotificationsConfig = KuraConfig['notifications'];

interface Destination {
  id: string;
  channel: Channel;
  filter: ChannelFilter;
  /** one attempt's limit: the channel's own timeouts, enforced here too whatever a library does */
  timeoutMs: number;
}

/** Reject when `p` has not settled within `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_r, reject) => {
    t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    t.unref();
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

/**
 * The notifications of one process: events go to the durable outbox (one row per destination
 * that wants them), and are delivered in the background with retries and back-off, at most
 * `maxPerHour` a destination; the same key within `dedupWindow` is sent once. Emitting never
 * waits for a mail server and never throws into a backup. With no destination configured it
 * does nothing and opens no file.
 */
export class Notifier {
  private readonly dests: Destination[];
  private readonly outbox: Outbox | null;
  private readonly where: { mode: NotifyEvent['mode']; host: string };
  private readonly dedupMs: number;
  private readonly retryInitial: number;
  private readonly retryMax: number;
  private readonly giveUpMs: number;
  private delivering: Promise<void> | null = null;
  /** rows the last delivery round attempted (0: nothing it could send now) */
  private attempted = 0;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(readonly cfg: NotificationsConfig, mode: NotifyEvent['mode'], spoolDir: string, host?: string) {
    this.where = { mode, host: host ?? hostname() };
    this.dests = [];
    const section = cfg as unknown as Record<string, unknown>;
    for (const def of registeredChannels()) {
      const list = (section[def.key] ?? []) as Array<Record<string, unknown>>;
      list.forEach((o, i) => {
        const id = `${def.key}[${i}]`;
        this.dests.push({ id, channel: def.create(o as never, id), filter: filterOf(o as never), timeoutMs: parseDuration(String(o.timeout ?? '10s')) ?? 10_000 });
      });
    }
    this.dedupMs = parseDuration(cfg.dedupWindow)!;
    this.retryInitial = parseDuration(cfg.retry.initial)!;
    this.retryMax = parseDuration(cfg.retry.max)!;
    this.giveUpMs = parseDuration(cfg.retry.giveUpAfter)!;
    this.outbox = this.dests.length > 0 ? new Outbox(cfg.spool ?? path.join(spoolDir, 'notifications.db')) : null;
  }

  static fromConfig(cfg: KuraConfig, mode: NotifyEvent['mode'], spoolDir: string): Notifier {
    return new Notifier(cfg.notifications, mode, spoolDir, cfg.host);
  }

  get enabled(): boolean {
    return this.outbox !== null;
  }

  get destinations(): ReadonlyArray<{ id: string; label: string }> {
    return this.dests.map((d) => ({ id: d.id, label: d.channel.label }));
  }

  /** Queue an event for every destination that wants it, and start delivering. */
  emit(input: EventInput): void {
    if (!this.outbox || this.closed) return;
    try {
      this.queue(makeEvent(input, this.where));
    } catch (e) {
      log().error({ event: input.event, err: (e as Error).message }, 'notification could not be queued');
    }
    this.kick();
  }

  private queue(e: NotifyEvent): void {
    const to = this.dests.filter((d) => wants(d.filter, e)).map((d) => d.id);
    if (to.length === 0) return;
    const queued = this.outbox!.enqueue(e, to, this.dedupMs);
    if (queued.length < to.length) log().debug({ event: e.event, key: e.key, suppressed: to.filter((t) => !queued.includes(t)) }, 'notification de-duplicated');
  }

  /**
   * Run a watcher's step against its remembered state, in one transaction with the queueing of
   * what it says (so two processes never announce the same crossing).
   */
  transition<T>(key: string, step: (prev: T | undefined) => Step<T>): void {
    if (!this.outbox || this.closed) return;
    try {
      const said = this.outbox.transition<T>(
        key,
        (prev) => {
          const s = step(prev);
          return { next: s.next, emit: s.emit.map((e) => makeEvent(e, this.where)) };
        },
        (e) => this.queue(e),
      );
      if (said.length > 0) this.kick();
    } catch (e) {
      log().error({ key, err: (e as Error).message }, 'notification state could not be updated');
    }
  }

  /** Deliver in the background, and keep retrying what is due while the process runs. */
  start(): void {
    if (!this.outbox || this.timer) return;
    this.timer = setInterval(() => {
      const due = this.outbox!.nextDue();
      if (due !== null && due <= Date.now()) this.kick();
    }, 1000);
    this.timer.unref();
    this.kick();
  }

  private kick(): void {
    if (!this.outbox || this.closed) return;
    if (this.delivering) return;
    this.delivering = this.deliverDue()
      .catch((e: Error) => log().error({ err: e.message }, 'notification delivery failed'))
      .finally(() => (this.delivering = null));
  }

  /** Deliver every row due now (claimed first, so another process does not send it too). */
  private async deliverDue(): Promise<void> {
    const limits = new Map(this.dests.map((d) => [d.id, d.filter.maxPerHour]));
    const byId = new Map(this.dests.map((d) => [d.id, d]));
    this.attempted = 0;
    for (;;) {
      if (this.closed) return;
      // a claim outlives one attempt (channel timeouts are at most minutes); a process that dies
      // mid-send leaves its rows to others after it
      const rows = this.outbox!.claimDue(limits, 120_000);
      if (rows.length === 0) return;
      this.attempted += rows.length;
      await Promise.all(
        rows.map(async (r) => {
          const d = byId.get(r.channel);
          if (!d) {
            this.outbox!.failed(r.id, `destination ${r.channel} is no longer configured`, null);
            return;
          }
          try {
            await within(d.channel.send(r.event), d.timeoutMs * 3, `delivery to ${d.channel.label}`);
            this.outbox!.delivered(r.id);
            log().info({ event: r.event.event, to: d.channel.label, attempts: r.attempts + 1 }, 'notification delivered');
          } catch (e) {
            const msg = (e as Error).message;
            const age = Date.now() - Date.parse(r.event.time);
            const retryAt = age > this.giveUpMs ? null : Date.now() + Math.min(this.retryMax, this.retryInitial * 2 ** r.attempts);
            this.outbox!.failed(r.id, msg, retryAt);
            if (retryAt === null) log().error({ event: r.event.event, to: d.channel.label, attempts: r.attempts + 1, err: msg }, 'notification given up after notifications.retry.giveUpAfter');
            else log().warn({ event: r.event.event, to: d.channel.label, attempts: r.attempts + 1, retryAt: new Date(retryAt).toISOString(), err: msg }, 'notification not delivered yet; it stays queued');
          }
        }),
      );
    }
  }

  /**
   * Deliver what is due now and wait for it, at most `timeoutMs` (a one-shot command's last
   * act). Returns how many rows are still waiting (delivered later by any kura process of this host).
   */
  async flush(timeoutMs = parseDuration(this.cfg.flushTimeout)!): Promise<number> {
    if (!this.outbox) return 0;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.kick();
      const running = this.delivering;
      if (running) await Promise.race([running, new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())).unref())]);
      const due = this.outbox.nextDue();
      if (this.attempted === 0 || !(due !== null && due <= Date.now()) || Date.now() >= deadline) break;
    }
    return this.outbox.pending().length;
  }

  pending(): ReturnType<Outbox['pending']> {
    return this.outbox?.pending() ?? [];
  }

  /** Stop the background loop; what is still queued stays for the next process. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.delivering) await within(this.delivering, 30_000, 'notification delivery').catch(() => undefined);
    this.closed = true;
    for (const d of this.dests) d.channel.close?.();
    this.outbox?.forgetOlderThan(Math.max(30 * 86_400_000, 2 * this.dedupMs));
    this.outbox?.close();
  }
}
