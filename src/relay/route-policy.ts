import type { StaticRoute } from '../modules/routing/static.js';

/**
 * Routing policies as pure functions of (config, rows, time): which route carries which source,
 * when a route's next transfer is due, what a forwarding vault must keep, how far a peer's
 * clock is off. No I/O here; the relay, the agent and the vault call them at their edges.
 */

/** Whether a route carries a source: a route without `sources` carries every source that names it. */
export function routeCarries(route: Pick<StaticRoute, 'sources'>, source: string): boolean {
  return route.sources === undefined || route.sources.includes(source);
}

/**
 * The routes a snapshot of `source` is queued for: those the source names that carry it, and
 * those whose `sources` name it (the office copy's minimum set, without editing every source).
 * In the order of the route table, each once.
 */
export function routesForSource(source: string, named: readonly string[], routes: Readonly<Record<string, Pick<StaticRoute, 'sources'>>>): string[] {
  return Object.entries(routes)
    .filter(([name, r]) => (named.includes(name) && routeCarries(r, source)) || (r.sources?.includes(source) ?? false))
    .map(([name]) => name);
}

/** Where a source names a route that does not carry it (config check: the snapshot would not go there). */
export function uncarriedRoutes(source: string, named: readonly string[], routes: Readonly<Record<string, Pick<StaticRoute, 'sources'>>>): string[] {
  return named.filter((n) => routes[n] !== undefined && !routeCarries(routes[n]!, source));
}

export interface TurnInput {
  /** the route's own frequency (`every`), in ms, if any */
  everyMs?: number | undefined;
  /** the next time its cron `schedule` fires (ms since epoch), if it has one */
  nextScheduledAt?: number | undefined;
  /** relay.pollInterval, in ms */
  pollMs: number;
  /** when the route's last transfer round started (ms since epoch), if ever */
  lastStartAt?: number | undefined;
  /** back-off after a fault, in ms (0 when the last round was clean) */
  backoffMs: number;
  now: number;
}

/**
 * How long a route waits before its next round. After a fault the back-off rules (the line is
 * retried, whatever the frequency: a snapshot due must not wait a whole period for a blip).
 * Otherwise a scheduled route waits for its next cron time, a route with `every` until that long
 * after its last round started, and any other route for the poll interval.
 */
export function nextTurnIn(t: TurnInput): number {
  if (t.backoffMs > 0) return t.backoffMs;
  if (t.nextScheduledAt !== undefined) return Math.max(0, t.nextScheduledAt - t.now);
  if (t.everyMs !== undefined) return t.lastStartAt === undefined ? 0 : Math.max(0, t.lastStartAt + t.everyMs - t.now);
  return t.pollMs;
}

/**
 * A forwarding vault's keep set: every snapshot still queued (unsent) for some route, with the
 * routes it waits for. Retention keeps these whatever its policy says, and GC marks their
 * chunks, so a next hop that was down for days still receives everything, oldest first.
 */
export function forwardHolds(queued: ReadonlyArray<{ snapshot: string; route: string }>): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const q of queued) {
    const routes = out.get(q.snapshot);
    if (routes) {
      if (!routes.includes(q.route)) routes.push(q.route);
    } else out.set(q.snapshot, [q.route]);
  }
  return out;
}

/**
 * The peer's clock offset from a HELLO round trip: the peer read its clock somewhere between
 * sending HELLO (t0) and receiving HELLO_OK (t1), best guess the middle, so the error is at
 * most half the round trip. Positive: the peer's clock is ahead.
 */
export function clockOffset(t0: number, t1: number, peerTime: number): { offsetMs: number; rttMs: number } {
  const rtt = Math.max(0, t1 - t0);
  return { offsetMs: Math.round(peerTime - (t0 + rtt / 2)), rttMs: Math.round(rtt) };
}

/** Whether an offset is beyond the allowed skew (the uncertainty, half the round trip, is given to the peer). */
export function clockSkewed(offsetMs: number, rttMs: number, maxSkewMs: number): boolean {
  return Math.abs(offsetMs) - rttMs / 2 > maxSkewMs;
}
