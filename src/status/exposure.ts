/**
 * RPO exposure: how much recent data a site would lose if this host were gone now. Per source
 * and route it is now − the end time of the newest snapshot of that source the destination
 * holds; while nothing has arrived yet, it runs from the source's first snapshot. A source with
 * no route is judged by its newest on-site snapshot. The clock runs whether or not snapshots
 * are queued, so a source that stopped backing up (cron gone, VM deleted) crosses its target
 * like one whose line is down. A paused route is still exposed: pausing hides nothing.
 *
 * A pure function of the catalogue's facts, the targets and the time: table-tested.
 */
export interface ExposureSource {
  source: string;
  tenant: string;
  /** the source's RPO target, in seconds */
  rpoSeconds: number;
  /** routes the source's snapshots go to; empty: the on-site repository is its only copy */
  routes: readonly string[];
}

export interface ExposureInput {
  sources: readonly ExposureSource[];
  /** end times (ISO) of each source's first and newest snapshot in the local repository */
  spans: ReadonlyMap<string, { first: string; last: string }>;
  /** end time (ISO) of the newest snapshot each route delivered, keyed by deliveryKey(route, source) */
  delivered: ReadonlyMap<string, string>;
  /** snapshots still queued, keyed by deliveryKey(route, source) */
  pending?: ReadonlyMap<string, number>;
  paused?: ReadonlySet<string>;
}

export interface Exposure {
  source: string;
  tenant: string;
  /** null: the on-site copy (a source without routes) */
  route: string | null;
  /** null when the source has no snapshot at all (nothing to lose yet, nothing to measure from) */
  exposureSeconds: number | null;
  targetSeconds: number;
  overTarget: boolean;
  /** end time of the newest snapshot the destination holds */
  newestDelivered: string | null;
  /** where the clock runs from: the newest delivered snapshot, the first snapshot (nothing delivered yet), the newest on-site one, or nothing */
  since: 'delivered' | 'first-snapshot' | 'on-site' | 'no-snapshot';
  queued: number;
  paused: boolean;
}

export const deliveryKey = (route: string, source: string): string => `${route}\u0000${source}`;

export function exposures(input: ExposureInput, now: Date): Exposure[] {
  const out: Exposure[] = [];
  const age = (iso: string) => Math.max(0, Math.round((now.getTime() - Date.parse(iso)) / 1000));
  for (const s of input.sources) {
    const span = input.spans.get(s.source);
    const judge = (route: string | null, from: string | null, since: Exposure['since'], newestDelivered: string | null) => {
      const exposureSeconds = from === null ? null : age(from);
      out.push({
        source: s.source,
        tenant: s.tenant,
        route,
        exposureSeconds,
        targetSeconds: s.rpoSeconds,
        overTarget: exposureSeconds !== null && exposureSeconds > s.rpoSeconds,
        newestDelivered,
        since,
        queued: route === null ? 0 : (input.pending?.get(deliveryKey(route, s.source)) ?? 0),
        paused: route !== null && Boolean(input.paused?.has(route)),
      });
    };
    if (s.routes.length === 0) {
      judge(null, span?.last ?? null, span ? 'on-site' : 'no-snapshot', span?.last ?? null);
      continue;
    }
    for (const route of s.routes) {
      const delivered = input.delivered.get(deliveryKey(route, s.source)) ?? null;
      if (delivered) judge(route, delivered, 'delivered', delivered);
      else judge(route, span?.first ?? null, span ? 'first-snapshot' : 'no-snapshot', null);
    }
  }
  return out;
}

/** The exposure a route line shows: its most overdue source (largest exposure beyond its target). */
export function worstOf(list: readonly Exposure[]): Exposure | null {
  let worst: Exposure | null = null;
  const margin = (e: Exposure) => (e.exposureSeconds ?? -Infinity) - e.targetSeconds;
  for (const e of list) if (e.exposureSeconds !== null && (!worst || margin(e) > margin(worst))) worst = e;
  return worst;
}
