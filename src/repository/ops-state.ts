import type Database from 'better-sqlite3';

/**
 * The operational records of a repository, beside its chunk catalogue (same SQLite database):
 * the relay's queue (one entry per snapshot per route, durable before a backup reports
 * success), route states and operator controls, backup job records and heartbeats. They are
 * what `kura status`, `kura top` and the notifications read; none of it can be rebuilt from the
 * store, so `rebuild-index` leaves these tables alone.
 */
export interface RouteStateRow {
  route: string;
  state: string;
  last_error: string | null;
  attempts: number;
  next_attempt: number | null;
  last_success: string | null;
  bytes_sent: number;
  updated: string;
  paused: number;
  retry: number;
}

export interface AsideEntry {
  snapshot: string;
  route: string;
  source: string;
  endTime: string;
  /** when it was set aside */
  at: string;
  reason: string;
}

export interface JobRow {
  id: number;
  source: string;
  started: string;
  finished: string | null;
  result: 'running' | 'ok' | 'failed';
  snapshot: string | null;
  new_bytes: number | null;
  error_code: string | null;
  error: string | null;
  /** a planned job: "coordinated" (it held a slot of its group), or "uncoordinated: why" */
  coordination: string | null;
}

export class OpsState {
  constructor(private readonly db: Database.Database) {}

  enqueue(snapshot: string, route: string, source: string, endTime: string): void {
    this.db.prepare('INSERT OR IGNORE INTO queue (snapshot, route, source, end_time, enqueued) VALUES (?, ?, ?, ?, ?)').run(snapshot, route, source, endTime, new Date().toISOString());
  }

  /** The oldest snapshot the route still has to send (oldest first keeps each source in order); entries set aside are skipped. */
  nextQueued(route: string): { snapshot: string; source: string } | undefined {
    return this.db
      .prepare<[string], { snapshot: string; source: string }>('SELECT snapshot, source FROM queue WHERE route = ? AND sent IS NULL AND aside IS NULL ORDER BY end_time, snapshot LIMIT 1')
      .get(route);
  }

  queued(route?: string): Array<{ snapshot: string; route: string; source: string; end_time: string }> {
    return route
      ? this.db
          .prepare<[string], { snapshot: string; route: string; source: string; end_time: string }>('SELECT snapshot, route, source, end_time FROM queue WHERE route = ? AND sent IS NULL AND aside IS NULL ORDER BY end_time, snapshot')
          .all(route)
      : this.db
          .prepare<[], { snapshot: string; route: string; source: string; end_time: string }>('SELECT snapshot, route, source, end_time FROM queue WHERE sent IS NULL AND aside IS NULL ORDER BY route, end_time, snapshot')
          .all();
  }

  /**
   * Set a queue entry aside: it is not sent and no longer holds up the route (the snapshot is
   * damaged, or an operator said so). Kept with when and why, for kura status. False if the
   * entry is not waiting (sent, set aside already, or unknown).
   */
  setAside(snapshot: string, route: string, reason: string): boolean {
    return this.db.prepare('UPDATE queue SET aside = ?, aside_reason = ? WHERE snapshot = ? AND route = ? AND sent IS NULL AND aside IS NULL').run(new Date().toISOString(), reason, snapshot, route).changes > 0;
  }

  /** Entries set aside, oldest snapshot first. */
  asideEntries(route?: string): AsideEntry[] {
    const rows = this.db
      .prepare<[], { snapshot: string; route: string; source: string; end_time: string; aside: string; aside_reason: string | null }>(
        'SELECT snapshot, route, source, end_time, aside, aside_reason FROM queue WHERE sent IS NULL AND aside IS NOT NULL ORDER BY route, end_time, snapshot',
      )
      .all();
    return rows.filter((r) => !route || r.route === route).map((r) => ({ snapshot: r.snapshot, route: r.route, source: r.source, endTime: r.end_time, at: r.aside, reason: r.aside_reason ?? '' }));
  }

  /** The queue entries of a snapshot (by ID prefix) still waiting, for `kura relay skip`. */
  waitingEntries(prefix: string): Array<{ snapshot: string; route: string; source: string }> {
    return this.db
      .prepare<[string], { snapshot: string; route: string; source: string }>("SELECT snapshot, route, source FROM queue WHERE snapshot LIKE ? || '%' AND sent IS NULL AND aside IS NULL ORDER BY route")
      .all(prefix);
  }

  markSent(snapshot: string, route: string, bytes: number): void {
    this.db.prepare('UPDATE queue SET sent = ?, bytes_sent = ? WHERE snapshot = ? AND route = ?').run(new Date().toISOString(), bytes, snapshot, route);
  }

  setRouteState(route: string, s: { state: string; lastError?: string | null; attempts?: number; nextAttempt?: number | null; success?: boolean; addBytes?: number }): void {
    const now = new Date().toISOString();
    this.db
      .prepare(
        `INSERT INTO route_state (route, state, last_error, attempts, next_attempt, last_success, bytes_sent, updated)
         VALUES (@route, @state, @lastError, coalesce(@attempts, 0), @nextAttempt, CASE WHEN @success THEN @now END, @addBytes, @now)
         ON CONFLICT (route) DO UPDATE SET state = @state,
           last_error = CASE WHEN @keepError THEN last_error ELSE @lastError END,
           attempts = coalesce(@attempts, attempts), next_attempt = @nextAttempt,
           last_success = CASE WHEN @success THEN @now ELSE last_success END,
           bytes_sent = bytes_sent + @addBytes, updated = @now`,
      )
      .run({ route, state: s.state, lastError: s.lastError ?? null, keepError: s.lastError === undefined ? 1 : 0, attempts: s.attempts ?? null, nextAttempt: s.nextAttempt ?? null, success: s.success ? 1 : 0, addBytes: s.addBytes ?? 0, now });
  }

  routeStates(): RouteStateRow[] {
    return this.db.prepare<[], RouteStateRow>('SELECT * FROM route_state ORDER BY route').all();
  }

  /** Operator controls, read by a running relay (kura top, kura relay pause|resume|retry). */
  setRouteControl(route: string, c: { paused?: boolean; retry?: boolean }): void {
    const now = new Date().toISOString();
    this.db.prepare(`INSERT INTO route_state (route, state, updated) VALUES (?, 'idle', ?) ON CONFLICT (route) DO NOTHING`).run(route, now);
    if (c.paused !== undefined) this.db.prepare('UPDATE route_state SET paused = ?, updated = ? WHERE route = ?').run(c.paused ? 1 : 0, now, route);
    if (c.retry !== undefined) this.db.prepare('UPDATE route_state SET retry = ?, updated = ? WHERE route = ?').run(c.retry ? 1 : 0, now, route);
  }

  startJob(source: string, coordination?: string): number {
    return Number(this.db.prepare(`INSERT INTO jobs (source, started, result, coordination) VALUES (?, ?, 'running', ?)`).run(source, new Date().toISOString(), coordination ?? null).lastInsertRowid);
  }


  finishJob(id: number, r: { result: 'ok' | 'failed'; snapshot?: string; newBytes?: number; errorCode?: string; error?: string }): void {
    this.db
      .prepare('UPDATE jobs SET finished = ?, result = ?, snapshot = ?, new_bytes = ?, error_code = ?, error = ? WHERE id = ?')
      .run(new Date().toISOString(), r.result, r.snapshot ?? null, r.newBytes ?? null, r.errorCode ?? null, r.error ?? null, id);
  }

  recentJobs(limit: number): JobRow[] {
    return this.db.prepare<[number], JobRow>('SELECT * FROM jobs ORDER BY id DESC LIMIT ?').all(limit);
  }

  /** The last finished job of each source. */
  lastJobs(): JobRow[] {
    return this.db.prepare<[], JobRow>(`SELECT * FROM jobs WHERE id IN (SELECT max(id) FROM jobs WHERE result != 'running' GROUP BY source)`).all();
  }

  /** A running relay says so every few seconds (kura top shows whether one is running). */
  heartbeat(role: string): void {
    this.db.prepare(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(`heartbeat.${role}`, JSON.stringify({ at: Date.now(), pid: process.pid }));
  }

  lastHeartbeat(role: string): { at: number; pid: number } | null {
    const r = this.db.prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?').get(`heartbeat.${role}`);
    return r ? (JSON.parse(r.value) as { at: number; pid: number }) : null;
  }

  recentlySent(limit: number): Array<{ snapshot: string; route: string; source: string; sent: string; bytes_sent: number }> {
    return this.db.prepare<[number], { snapshot: string; route: string; source: string; sent: string; bytes_sent: number }>('SELECT snapshot, route, source, sent, bytes_sent FROM queue WHERE sent IS NOT NULL ORDER BY sent DESC LIMIT ?').all(limit);
  }

  routeControl(route: string): { paused: boolean; retry: boolean } {
    const r = this.db.prepare<[string], { paused: number; retry: number }>('SELECT paused, retry FROM route_state WHERE route = ?').get(route);
    return { paused: Boolean(r?.paused), retry: Boolean(r?.retry) };
  }

  /**
   * Per route and source: the end time of the newest snapshot the route delivered, and whether
   * entries still wait. The input of RPO exposure (a sent row outlives its pruned snapshot).
   */
  deliveries(): Array<{ route: string; source: string; newest_sent: string | null; pending: number }> {
    return this.db
      .prepare<[], { route: string; source: string; newest_sent: string | null; pending: number }>(
        `SELECT route, source, max(CASE WHEN sent IS NOT NULL THEN end_time END) AS newest_sent, sum(sent IS NULL AND aside IS NULL) AS pending
         FROM queue GROUP BY route, source ORDER BY route, source`,
      )
      .all();
  }

  /** Seconds the last `limit` successful jobs of a source took, oldest first (the plan's history). */
  jobSeconds(source: string, limit = 7): number[] {
    return this.db
      .prepare<[string, number], { s: number }>(`SELECT (julianday(finished) - julianday(started)) * 86400 AS s FROM (SELECT started, finished, id FROM jobs WHERE source = ? AND result = 'ok' AND finished IS NOT NULL ORDER BY id DESC LIMIT ?) ORDER BY id`)
      .all(source, limit)
      .map((r) => r.s);
  }

  /** When the newest job of a source started (ISO), or null: a daemon started late sees what it missed. */
  lastJobStart(source: string): string | null {
    return this.db.prepare<[string], { started: string }>('SELECT started FROM jobs WHERE source = ? ORDER BY id DESC LIMIT 1').get(source)?.started ?? null;
  }

  /** A daemon's slot state for a planned source (kura status, kura top): waiting for a slot, holding one, or none. */
  setSlotState(source: string, state: { state: 'waiting' | 'holding' | 'none'; group: string; since: string }): void {
    this.db.prepare(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(`slot.${source}`, JSON.stringify(state));
  }

  slotState(source: string): { state: 'waiting' | 'holding' | 'none'; group: string; since: string } | null {
    const r = this.db.prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?').get(`slot.${source}`);
    return r ? (JSON.parse(r.value) as { state: 'waiting' | 'holding' | 'none'; group: string; since: string }) : null;
  }

  /** Whether a job of the source that started at or after `since` (ISO) succeeded. */
  okJobSince(source: string, since: string): boolean {
    return Boolean(this.db.prepare<[string, string], { x: number }>(`SELECT 1 AS x FROM jobs WHERE source = ? AND result = 'ok' AND started >= ? LIMIT 1`).get(source, since));
  }
}
