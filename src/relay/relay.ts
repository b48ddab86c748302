import { readFileSync } from 'node:fs';
import { KuraError, isKuraError } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import type { KuraConfig } from '../config/schema.js';
import type { Repository } from '../repository/repository.js';
import { log } from '../log.js';
import { backoffDelay } from './backoff.js';
import { TokenBucket, rateAt } from './bandwidth.js';
import { VaultConnection } from './connection.js';
import { sendSnapshot } from './transfer.js';
import type { Notifier } from '../notify/notifier.js';
import { observeLine } from '../notify/evaluate.js';
import { clockSkewEvent, routeMovedEvent } from '../notify/routing.js';
import { clockSkewed, nextTurnIn } from './route-policy.js';
import { routingRecords } from './transfer-log.js';
import type { MovedAnswer } from './moved.js';
import { AuditLog } from '../vault/audit.js';
import path from 'node:path';
import cron from 'node-cron';
import { relayRefused, snapshotDamaged } from '../notify/jobs.js';
import { quarantineBlobs, type DamagedBlob } from '../repository/quarantine.js';

import { routesOf, type StaticRoute } from './routes.js';
export type { StaticRoute };

export interface RouteReport {
  route: string;
  state: 'idle' | 'waiting-for-line' | 'refused' | 'paused' | 'quota-exceeded';
  sent: number;
  left: number;
  bytesOnWire: number;
  /** time spent sending snapshots (first WANT to COMMITTED), without connecting */
  sendingSeconds: number;
  error?: { code: string; message: string };
  /** entries set aside in this run: their snapshot could not be sent because of its own data */
  setAside?: Array<{ snapshot: string; source: string; code: string; message: string }>;
}

/** The routes of the config (routing module `static`), by name. */
export { routesOf };

/**
 * Faults of one queued snapshot's own data, met while reading it here (a blob that fails its
 * digest, a chunk quarantined or missing, a damaged snapshot file): that entry is set aside and
 * the route goes on. What the vault refuses is the route's business, as before.
 */
export function isEntryFault(e: unknown): e is KuraError {
  return isKuraError(e) && !e.details?.fromVault && ['E_CHUNK_CORRUPT', 'E_CHUNK_MISSING', 'E_SNAPSHOT_CORRUPT', 'E_SNAPSHOT_NOT_FOUND'].includes(e.code);
}

/**
 * Faults of the line (retry later) versus refusals that need an operator. A vault that is out of
 * memory for sessions (E_BUSY) or whose storage failed or is full (E_IO) is the far end of the
 * line: the snapshot stays queued and goes when the vault can take it.
 */
function isLineFault(e: unknown): boolean {
  // a vault node that does not (or no longer) hold the tenant: another node takes it over, the route retries
  return !isKuraError(e) || e.code === 'E_LINK_DOWN' || e.code === 'E_IO' || e.code === 'E_BUSY' || e.code === 'E_FRAME_TRUNCATED' || e.code === 'E_TENANT_ELSEWHERE' || e.code === 'E_LEASE_LOST';
}

/**
 * The relay: per route, the oldest queued snapshot first, over one SSH session per tenant; each
 * commit is recorded in the queue before the next starts, so a killed relay resumes where it was
 * and never sends what the vault already acknowledged.
 */
export class Relay {
  private readonly relayCfg: KuraConfig['relay'];
  private stopping = false;
  private readonly wakers = new Set<() => void>();
  /** aborted by stop(): open connections, and connections being opened, end at once */
  private readonly stopped = new AbortController();

  constructor(
    private readonly repo: Repository,
    private readonly cfg: KuraConfig,
    private readonly only?: string[],
    private readonly notifier?: Notifier,
  ) {
    this.relayCfg = cfg.relay;
  }

  /** Tell the notifications what the line did (down long enough: "line down"; back: "line back"; refused: at once). */
  private seen(route: string, state: RouteReport['state'] | 'connected', err?: { code: string; message: string }): void {
    if (!this.notifier?.enabled) return;
    if (state === 'waiting-for-line') observeLine(this.cfg, this.notifier, route, { down: true, error: err ? `${err.code}: ${err.message}` : null });
    else if (state !== 'paused') observeLine(this.cfg, this.notifier, route, { down: false });
    if ((state === 'refused' || state === 'quota-exceeded') && err) this.notifier.emit(relayRefused(route, err));
  }

  private routes(): Array<[string, StaticRoute]> {
    const all = Object.entries(routesOf(this.cfg));
    const chosen = this.only?.length ? all.filter(([n]) => this.only!.includes(n)) : all;
    for (const n of this.only ?? []) if (!all.some(([m]) => m === n)) throw new KuraError('E_CONFIG', `route "${n}" is not in modules.routing.routes`);
    return chosen;
  }

  /** Send everything that can be sent now, once per route; report what is left. */
  async once(): Promise<RouteReport[]> {
    return Promise.all(this.routes().map(([name, route]) => this.drain(name, route)));
  }

  /** Daemon: drain every route, back off on faults, poll for new queue entries, until stop(). */
  async run(): Promise<void> {
    const poll = parseDuration(this.relayCfg.pollInterval)!;
    const initial = parseDuration(this.relayCfg.backoff.initial)!;
    const max = parseDuration(this.relayCfg.backoff.max)!;
    this.repo.catalogue.ops.heartbeat('relay');
    const beat = setInterval(() => this.repo.catalogue.ops.heartbeat('relay'), 2000);
    try {
      await this.runRoutes(poll, initial, max);
    } finally {
      clearInterval(beat);
    }
  }

  private async runRoutes(poll: number, initial: number, max: number): Promise<void> {
    await Promise.all(
      this.routes().map(async ([name, route]) => {
        let attempts = 0;
        const everyMs = route.every ? (parseDuration(route.every) ?? undefined) : undefined;
        // a route's own schedule: only its next fire time is read (the task is never started)
        const schedule = route.schedule ? cron.createTask(route.schedule, () => {}, this.cfg.timezone ? { timezone: this.cfg.timezone } : {}) : null;
        try {
          while (!this.stopping) {
            const startedAt = Date.now();
            const report = await this.drain(name, route, attempts);
            let backoffMs = 0;
            if (report.state === 'idle' || report.state === 'paused') attempts = 0;
            else {
              attempts++;
              backoffMs = backoffDelay(attempts, initial, max);
            }
            const now = Date.now();
            const wait = nextTurnIn({ everyMs, nextScheduledAt: schedule?.getNextRuns(1)[0]?.getTime(), pollMs: poll, lastStartAt: startedAt, backoffMs, now });
            if (backoffMs > 0 || everyMs !== undefined || schedule) this.repo.catalogue.ops.setRouteState(name, { state: report.state === 'paused' ? 'paused' : report.state, attempts, nextAttempt: now + wait });
            await this.waitForTurn(name, wait);
          }
        } finally {
          await schedule?.destroy();
        }
      }),
    );
  }

  stop(): void {
    this.stopping = true;
    for (const w of this.wakers) w();
    // whatever the line does (a black hole never answers): what the vault acknowledged is kept,
    // the next start resumes from it
    this.stopped.abort(new KuraError('E_LINK_DOWN', 'the relay is stopping'));
  }

  /**
   * Sleep until the back-off or poll interval ends, an operator asks for a retry (kura top `r`,
   * kura relay retry) or lifts a pause; the controls live in the catalogue, checked twice a second.
   */
  private async waitForTurn(route: string, ms: number): Promise<void> {
    const cat = this.repo.catalogue;
    const until = Date.now() + ms;
    const wasPaused = cat.ops.routeControl(route).paused;
    while (!this.stopping) {
      const c = cat.ops.routeControl(route);
      if (c.retry) {
        cat.ops.setRouteControl(route, { retry: false });
        return;
      }
      if (wasPaused && !c.paused) return;
      if (!c.paused && Date.now() >= until) return;
      await this.sleep(Math.min(500, Math.max(10, until - Date.now())));
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.wakers.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }

  /**
   * Open a session for `tenant` on a route: at the endpoints a vault announced for the tenant
   * (a verified MOVED, kept durably), else the route's own. A MOVED answer is stored, logged,
   * audited and followed at once (a chain of moves a few times at most); a refused one
   * (E_HOST_KEY: unsigned, or not by the pinned host key) is audited and fails the route.
   */
  private async connect(name: string, route: StaticRoute, tenant: string, limiter: TokenBucket): Promise<VaultConnection> {
    if (!route.clientKey) throw new KuraError('E_CONFIG', `route ${name} has no clientKey: set modules.routing.routes.${name}.clientKey to this host's SSH private key`);
    let privateKey: Buffer;
    try {
      privateKey = readFileSync(route.clientKey);
    } catch (e) {
      throw new KuraError('E_CONFIG', `cannot read clientKey ${route.clientKey} of route ${name}: ${(e as Error).message}`);
    }
    const records = routingRecords(this.repo.catalogue);
    for (let hops = 0; ; hops++) {
      const moved = records.moved(name, tenant)[0];
      const endpoints = moved?.endpoints ?? route.endpoints;
      try {
        const conn = await VaultConnection.open(endpoints, {
          route: name,
          tenant,
          privateKey,
          keepaliveMs: parseDuration(this.relayCfg.keepalive)!,
          readyTimeoutMs: parseDuration(this.relayCfg.connectTimeout)!,
          deadAfterMs: parseDuration(this.relayCfg.deadAfter)!,
          signal: this.stopped.signal,
          limiter,
        });
        if (conn.clock) this.clockSeen(name, `${conn.endpoint.host}:${conn.endpoint.port}`, conn.clock);
        return conn;
      } catch (e) {
        if (isKuraError(e) && e.code === 'E_HOST_KEY' && /MOVED/.test(e.message)) {
          this.audit({ event: 'moved', outcome: 'refused', route: name, tenant, code: e.code, reason: e.message });
          log().error({ route: name, tenant, code: e.code }, e.message);
        }
        if (!isKuraError(e) || e.code !== 'E_TENANT_MOVED' || hops >= 4) throw e;
        const answer = e.details!['moved'] as MovedAnswer;
        const signedBy = String(e.details!['signedBy']);
        records.setMoved({ route: name, tenant, endpoints: answer.endpoints, signedBy, issued: answer.issued, at: new Date().toISOString() });
        this.audit({ event: 'moved', outcome: 'ok', route: name, tenant, endpoints: answer.endpoints.map((x) => `${x.host}:${x.port}`), signedBy, issued: answer.issued });
        log().warn({ route: name, tenant, endpoints: answer.endpoints, signedBy }, `tenant ${tenant} moved: route ${name} now sends to ${answer.endpoints.map((x) => `${x.host}:${x.port}`).join(', ')}`);
        if (this.notifier?.enabled) this.notifier.emit(routeMovedEvent(name, tenant, answer.endpoints.map((x) => `${x.host}:${x.port}`), signedBy));
      }
    }
  }

  /** A session on a route for `tenant` (kura status --from): the route's endpoints, or where the tenant moved. */
  async openSession(route: string, tenant?: string): Promise<VaultConnection> {
    const r = routesOf(this.cfg)[route];
    if (!r) throw new KuraError('E_CONFIG', `route "${route}" is not in modules.routing.routes`);
    return this.connect(route, r, r.tenant ?? tenant ?? this.cfg.tenant, new TokenBucket(() => rateAt(r.bandwidth, r.rate, new Date())));
  }

  /** The relay's own audit trail of routing changes (beside the local repository). */
  private audit(e: { event: string; outcome: 'ok' | 'refused' | 'error'; [k: string]: unknown }): void {
    const a = new AuditLog(path.join(this.repo.root, 'audit.jsonl'));
    try {
      a.write(e);
    } finally {
      a.close();
    }
  }

  /** Keep the vault's clock offset (kura status, /metrics); a skew beyond relay.maxClockSkew warns. */
  private clockSeen(route: string, peer: string, c: { offsetMs: number; rttMs: number }): void {
    routingRecords(this.repo.catalogue).setClock({ hop: route, peer, offsetMs: c.offsetMs, rttMs: c.rttMs, at: new Date().toISOString() });
    const max = parseDuration(this.relayCfg.maxClockSkew)!;
    if (!clockSkewed(c.offsetMs, c.rttMs, max)) return;
    log().warn({ route, peer, offsetMs: c.offsetMs, rttMs: c.rttMs }, `the clock of ${peer} is ${(c.offsetMs / 1000).toFixed(1)} s off this host's (relay.maxClockSkew ${this.relayCfg.maxClockSkew}): send and receive logs disagree by that much; check NTP on both`);
    if (this.notifier?.enabled) this.notifier.emit(clockSkewEvent(route, peer, c.offsetMs, max));
  }

  /**
   * A snapshot that cannot be sent because of its own data: the damaged blobs found are
   * quarantined (out of the index, so the next backup of the same data stores them anew; every
   * snapshot they damage is marked), and the entry is set aside with the error, for kura status.
   */
  private async setAside(route: string, entry: { snapshot: string; source: string }, err: KuraError): Promise<NonNullable<RouteReport['setAside']>[number]> {
    const damaged = err.details?.damaged as DamagedBlob[] | undefined;
    const snapshots = damaged?.length ? await quarantineBlobs(this.repo, damaged, 'relay', entry.snapshot) : [entry.snapshot];
    this.repo.catalogue.ops.setAside(entry.snapshot, route, `${err.code}: ${err.message}`);
    log().error({ route, snapshot: entry.snapshot, source: entry.source, code: err.code, quarantined: damaged?.length ?? 0, damagedSnapshots: snapshots }, `snapshot set aside, the route goes on: ${err.message}`);
    this.notifier?.emit(snapshotDamaged(route, entry, err));
    return { snapshot: entry.snapshot, source: entry.source, code: err.code, message: err.message };
  }

  private async drain(name: string, route: StaticRoute, attempts = 0): Promise<RouteReport> {
    const cat = this.repo.catalogue;
    const lg = log().child({ route: name });
    const limiter = new TokenBucket(() => rateAt(route.bandwidth, route.rate, new Date()));
    const conns = new Map<string, VaultConnection>();
    let sent = 0;
    let bytesOnWire = 0;
    let sendingMs = 0;
    const setAside: NonNullable<RouteReport['setAside']> = [];
    const secs = () => Number((sendingMs / 1000).toFixed(3));
    try {
      for (;;) {
        if (this.stopping) break;
        if (cat.ops.routeControl(name).paused) {
          cat.ops.setRouteState(name, { state: 'paused' });
          return { route: name, state: 'paused', sent, left: cat.ops.queued(name).length, bytesOnWire, sendingSeconds: secs() };
        }
        const entry = cat.ops.nextQueued(name);
        if (!entry) break;
        const tenant = route.tenant ?? cat.snapshotHeader(entry.snapshot)?.tenant ?? this.cfg.tenant;
        let conn = conns.get(tenant);
        if (!conn) {
          conn = await this.connect(name, route, tenant, limiter);
          conns.set(tenant, conn);
          cat.ops.setRouteState(name, { state: 'sending', lastError: null, attempts });
          this.seen(name, 'connected');
          // paused while the line was being opened (it can take until the line comes back)
          if (cat.ops.routeControl(name).paused) continue;
        }
        const t0 = performance.now();
        const start = new Date().toISOString();
        let res: Awaited<ReturnType<typeof sendSnapshot>>;
        try {
          res = await sendSnapshot(this.repo, conn, entry.snapshot, this.relayCfg.batchBytes);
        } catch (e) {
          if (!isEntryFault(e)) throw e;
          setAside.push(await this.setAside(name, entry, e));
          // the session may be inside a batch: the next entry starts a new one
          conn.close();
          conns.delete(tenant);
          continue;
        } finally {
          sendingMs += performance.now() - t0;
        }
        const sentBy = conn;
        // the send line, in the same breath as the queue's record of it (kura log)
        cat.db.transaction(() => {
          routingRecords(cat).log({ direction: 'send', snapshot: entry.snapshot, tenant, source: entry.source, hop: name, session: sentBy.session, bytes: res.missingBytes, chunks: res.missing, start, end: new Date().toISOString(), peerOffsetMs: sentBy.clock?.offsetMs ?? null });
          cat.ops.markSent(entry.snapshot, name, res.bytesOnWire);
        })();
        cat.ops.setRouteState(name, { state: 'sending', success: true, addBytes: res.bytesOnWire, attempts: 0 });
        sent++;
        bytesOnWire += res.bytesOnWire;
        lg.info({ snapshot: entry.snapshot, source: entry.source, chunks: res.chunks, missing: res.missing, bytes: res.bytesOnWire }, 'snapshot sent');
        // blobs written before pack format 2 carry no digest: checked for their structure only
        if (res.unverified > 0) lg.warn({ snapshot: entry.snapshot, unverified: res.unverified }, `${res.unverified} blob(s) sent had no recorded digest (written before pack format 2): checked for their structure only; "kura check --read-data" with the key verifies them`);
      }
      cat.ops.setRouteState(name, { state: 'idle', lastError: null, attempts: 0 });
      this.seen(name, 'idle');
      return { route: name, state: 'idle', sent, left: cat.ops.queued(name).length, bytesOnWire, sendingSeconds: secs(), ...(setAside.length ? { setAside } : {}) };
    } catch (e) {
      if (this.stopping) {
        // stop() cut the line: not a fault of the route; the queue keeps what is left
        cat.ops.setRouteState(name, { state: 'idle' });
        return { route: name, state: 'idle', sent, left: cat.ops.queued(name).length, bytesOnWire, sendingSeconds: secs() };
      }
      const err = isKuraError(e) ? e : new KuraError('E_LINK_DOWN', (e as Error).message);
      // over quota: keep the queue and retry with back-off until the vault operator makes room
      const state = err.code === 'E_QUOTA' ? 'quota-exceeded' : isLineFault(err) ? 'waiting-for-line' : 'refused';
      cat.ops.setRouteState(name, { state, lastError: `${err.code}: ${err.message}`, attempts: attempts + 1 });
      lg.warn({ code: err.code, sent, left: cat.ops.queued(name).length }, err.message);
      this.seen(name, state, err);
      return { route: name, state, sent, left: cat.ops.queued(name).length, bytesOnWire, sendingSeconds: secs(), error: { code: err.code, message: err.message }, ...(setAside.length ? { setAside } : {}) };
    } finally {
      for (const c of conns.values()) c.close();
    }
  }
}
