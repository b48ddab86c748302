import type { RouteStatusReply } from '../vault/forward.js';

/**
 * RPO exposure hop by hop (kura status --from ROUTE, kura top): hop 1 is this relay to the
 * route's vault (from the local queue), the next hops are that vault's forwarding routes (its
 * ROUTE_STATUS answer). A source's exposure at a hop is now minus the end time of the newest
 * snapshot that hop delivered; the last hop's is the end-to-end exposure. Pure: rows in, rows out.
 */
export interface HopSource {
  source: string;
  newestDelivered: string | null;
  pending: number;
  exposureSeconds: number | null;
}

export interface Hop {
  hop: number;
  from: string;
  to: string;
  state: string;
  lastError: string | null;
  clockOffsetMs: number | null;
  sources: HopSource[];
}

export function hopReport(
  route: string,
  first: { state: string; lastError: string | null; clockOffsetMs: number | null; deliveries: ReadonlyArray<{ route: string; source: string; newest_sent: string | null; pending: number }> },
  far: RouteStatusReply | null,
  now: Date,
): Hop[] {
  const exposure = (t: string | null) => (t === null ? null : Math.max(0, Math.round((now.getTime() - Date.parse(t)) / 1000)));
  const hops: Hop[] = [
    {
      hop: 1,
      from: 'this host',
      to: route,
      state: first.state,
      lastError: first.lastError,
      clockOffsetMs: first.clockOffsetMs,
      sources: first.deliveries.filter((d) => d.route === route).map((d) => ({ source: d.source, newestDelivered: d.newest_sent, pending: d.pending, exposureSeconds: exposure(d.newest_sent) })),
    },
  ];
  for (const r of far?.routes ?? []) {
    hops.push({
      hop: 2,
      from: route,
      to: r.route,
      state: r.state,
      lastError: r.lastError,
      clockOffsetMs: r.clockOffsetMs,
      sources: r.sources.map((s) => ({ source: s.source, newestDelivered: s.newestSent, pending: s.pending, exposureSeconds: exposure(s.newestSent) })),
    });
  }
  return hops;
}
