import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { KuraError } from '../errors.js';
import type { NotifyEvent } from './events.js';

export interface OutboxRow {
  id: number;
  channel: string;
  event: NotifyEvent;
  attempts: number;
  lastError: string | null;
}

/**
 * The durable queue of notifications (SQLite, WAL, its own file beside the repository or the
 * vault's root): an event is written here, once per channel that wants it, before anyone tries
 * to deliver it, so a mail server that is down loses nothing and holds up no backup. Several
 * processes of one host (agent, relay, a later `agent run`) share it: a delivery is claimed in
 * a transaction first, so each row goes out once. The `state` table keeps what the watchers
 * last saw (an RPO crossing, a line down since when), compared and set in one transaction so
 * two processes never announce the same crossing.
 */
export class Outbox {
  private readonly db: Database.Database;
  private readonly owner = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

  constructor(readonly file: string) {
    try {
      mkdirSync(path.dirname(file), { recursive: true });
      this.db = new Database(file);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('busy_timeout = 10000');
      this.db.exec(`
        CREATE TABLE IF NOT EXISTS outbox (
          id INTEGER PRIMARY KEY, channel TEXT NOT NULL, key TEXT NOT NULL, event TEXT NOT NULL,
          created INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt INTEGER NOT NULL,
          claimed_by TEXT, claimed_until INTEGER, delivered INTEGER, gave_up INTEGER, last_error TEXT);
        CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered, gave_up, next_attempt);
        CREATE INDEX IF NOT EXISTS outbox_key ON outbox (channel, key, created);
        CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated INTEGER NOT NULL);
      `);
    } catch (e) {
      throw new KuraError('E_IO', `cannot open the notification queue ${file}: ${(e as Error).message} (check permissions and disk space, or set notifications.spool)`, undefined, { cause: e });
    }
  }

  /**
   * Queue the event for each channel, unless that channel already had an event with the same
   * key within `dedupMs`. Returns the channels it was queued for.
   */
  enqueue(e: NotifyEvent, channels: readonly string[], dedupMs: number, now = Date.now()): string[] {
    const seen = this.db.prepare<[string, string, number], { x: number }>('SELECT 1 AS x FROM outbox WHERE channel = ? AND key = ? AND created > ? LIMIT 1');
    const add = this.db.prepare('INSERT INTO outbox (channel, key, event, created, next_attempt) VALUES (?, ?, ?, ?, ?)');
    return this.db
      .transaction(() => {
        const queued: string[] = [];
        for (const ch of channels) {
          if (seen.get(ch, e.key, now - dedupMs)) continue;
          add.run(ch, e.key, JSON.stringify(e), now, now);
          queued.push(ch);
        }
        return queued;
      })
      .immediate();
  }

  /**
   * Claim the rows due now (for `claimMs`), at most `maxPerHour` deliveries per channel over the
   * last hour counted with those already made; rows over the limit wait.
   */
  claimDue(limits: ReadonlyMap<string, number>, claimMs: number, now = Date.now(), max = 50): OutboxRow[] {
    return this.db
      .transaction(() => {
        const rows = this.db
          .prepare<[number, number], { id: number; channel: string; event: string; attempts: number; last_error: string | null }>(
            `SELECT id, channel, event, attempts, last_error FROM outbox
             WHERE delivered IS NULL AND gave_up IS NULL AND next_attempt <= ? AND (claimed_until IS NULL OR claimed_until < ?)
             ORDER BY id LIMIT 500`,
          )
          .all(now, now);
        const sentLastHour = new Map<string, number>();
        for (const r of this.db.prepare<[number], { channel: string; n: number }>('SELECT channel, count(*) AS n FROM outbox WHERE delivered > ? GROUP BY channel').all(now - 3_600_000)) sentLastHour.set(r.channel, r.n);
        const claim = this.db.prepare('UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE id = ?');
        const out: OutboxRow[] = [];
        for (const r of rows) {
          if (out.length >= max) break;
          const used = sentLastHour.get(r.channel) ?? 0;
          if (used >= (limits.get(r.channel) ?? Infinity)) continue;
          sentLastHour.set(r.channel, used + 1);
          claim.run(this.owner, now + claimMs, r.id);
          out.push({ id: r.id, channel: r.channel, event: JSON.parse(r.event) as NotifyEvent, attempts: r.attempts, lastError: r.last_error });
        }
        return out;
      })
      .immediate();
  }

  delivered(id: number, now = Date.now()): void {
    this.db.prepare('UPDATE outbox SET delivered = ?, claimed_by = NULL, claimed_until = NULL, attempts = attempts + 1, last_error = NULL WHERE id = ?').run(now, id);
  }

  failed(id: number, error: string, retryAt: number | null): void {
    if (retryAt === null) this.db.prepare('UPDATE outbox SET gave_up = ?, claimed_by = NULL, claimed_until = NULL, attempts = attempts + 1, last_error = ? WHERE id = ?').run(Date.now(), error, id);
    else this.db.prepare('UPDATE outbox SET next_attempt = ?, claimed_by = NULL, claimed_until = NULL, attempts = attempts + 1, last_error = ? WHERE id = ?').run(retryAt, error, id);
  }

  /** Rows not yet delivered (waiting, or being delivered now). */
  pending(): Array<{ id: number; channel: string; event: string; key: string; attempts: number; next_attempt: number; last_error: string | null }> {
    return this.db.prepare<[], { id: number; channel: string; event: string; key: string; attempts: number; next_attempt: number; last_error: string | null }>(`SELECT id, channel, json_extract(event, '$.event') AS event, key, attempts, next_attempt, last_error FROM outbox WHERE delivered IS NULL AND gave_up IS NULL ORDER BY id`).all();
  }

  /** When the next waiting row falls due (ms since the epoch), or null when none waits. */
  nextDue(): number | null {
    const r = this.db.prepare<[], { t: number | null }>('SELECT min(max(next_attempt, coalesce(claimed_until, 0))) AS t FROM outbox WHERE delivered IS NULL AND gave_up IS NULL').get();
    return r?.t ?? null;
  }

  /** Forget delivered and abandoned rows older than `ms` (the dedup window must be shorter). */
  forgetOlderThan(ms: number, now = Date.now()): void {
    this.db.prepare('DELETE FROM outbox WHERE (delivered IS NOT NULL OR gave_up IS NOT NULL) AND created < ?').run(now - ms);
  }

  /**
   * Read the watchers' state, let `step` compute the next one and the events it implies, write
   * it back and queue those events: all in one transaction, so of two processes evaluating at
   * once only the first sees the change.
   */
  transition<T>(key: string, step: (prev: T | undefined) => { next: T; emit: NotifyEvent[] }, queue: (e: NotifyEvent) => void): NotifyEvent[] {
    return this.db
      .transaction(() => {
        const row = this.db.prepare<[string], { value: string }>('SELECT value FROM state WHERE key = ?').get(key);
        const { next, emit } = step(row ? (JSON.parse(row.value) as T) : undefined);
        if (next === undefined) this.db.prepare('DELETE FROM state WHERE key = ?').run(key);
        else this.db.prepare('INSERT INTO state (key, value, updated) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = excluded.updated').run(key, JSON.stringify(next), Date.now());
        for (const e of emit) queue(e);
        return emit;
      })
      .immediate();
  }

  close(): void {
    this.db.close();
  }
}
