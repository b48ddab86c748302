import { parseDuration } from '../config/duration.js';
import type { KuraConfig } from '../config/schema.js';
import { routesOf } from '../relay/routes.js';
import type { Repository } from '../repository/repository.js';
import { deliveryKey, type ExposureSource } from './exposure.js';
import { statusReport, type SourcePlan, type StatusReport } from './status.js';
import { nextPlannedStart, planHistory, plannedMember, timeZoneOf } from '../agent/window.js';

/**
 * The sources whose RPO exposure is judged: every configured source on its routes (and on any
 * route it still has snapshots queued for), and every source not in the config that has queue
 * entries (a `kura backup --route` by hand) on those routes. A source no longer configured and
 * with nothing queued is history, not a target.
 */
export function exposureSources(cfg: KuraConfig, deliveries: ReadonlyArray<{ route: string; source: string; pending: number }>, tenantOf: (source: string) => string | undefined): ExposureSource[] {
  const defaultRpo = parseDuration(cfg.rpo)! / 1000;
  const out = new Map<string, ExposureSource & { routes: string[] }>();
  for (const [name, src] of Object.entries(cfg.sources)) {
    out.set(name, { source: name, tenant: src.tenant ?? cfg.tenant, rpoSeconds: src.rpo ? parseDuration(src.rpo)! / 1000 : defaultRpo, routes: [...src.routes] });
  }
  for (const d of deliveries) {
    const cur = out.get(d.source);
    if (!cur) out.set(d.source, { source: d.source, tenant: tenantOf(d.source) ?? cfg.tenant, rpoSeconds: defaultRpo, routes: [d.route] });
    else if (!cur.routes.includes(d.route) && (d.pending > 0 || !cfg.sources[d.source])) cur.routes.push(d.route);
  }
  return [...out.values()].sort((a, b) => a.source.localeCompare(b.source));
}

/** Read the catalogue and the config, and compute the status report (the I/O edge of status.ts). */
export function collectStatus(repo: Repository, cfg: KuraConfig, now = new Date()): StatusReport {
  const cat = repo.catalogue;
  const routeNames = new Set(Object.keys(routesOf(cfg)));
  const queued = cat.ops.queued();
  for (const q of queued) routeNames.add(q.route);
  const snapshots = cat.snapshots();
  const tenants = new Map(snapshots.map((s) => [s.header.source, s.header.tenant]));
  const deliveries = cat.ops.deliveries();
  const delivered = new Map<string, string>();
  for (const d of deliveries) if (d.newest_sent) delivered.set(deliveryKey(d.route, d.source), d.newest_sent);
  return statusReport(
    {
      routes: [...routeNames].sort(),
      routeStates: cat.ops.routeStates(),
      queued,
      snapshots,
      lastJobs: cat.ops.lastJobs(),
      sources: exposureSources(cfg, deliveries, (s) => tenants.get(s)),
      delivered,
      defaultRpoSeconds: parseDuration(cfg.rpo)! / 1000,
      aside: cat.ops.asideEntries(),
      damaged: cat.quarantine.damaged(),
      plans: sourcePlans(repo, cfg, now),
    },
    now,
  );
}

/** Each planned source's next start, slot state and last run's coordination. */
function sourcePlans(repo: Repository, cfg: KuraConfig, now: Date): Map<string, SourcePlan> {
  const out = new Map<string, SourcePlan>();
  const last = new Map(repo.catalogue.ops.lastJobs().map((j) => [j.source, j]));
  let history: Map<string, number> | null = null;
  for (const source of Object.keys(cfg.sources)) {
    const m = plannedMember(cfg, source);
    if (!m) continue;
    const base = { group: m.group.name, member: m.member, slot: repo.catalogue.ops.slotState(source)?.state ?? ('none' as const), lastRun: last.get(source)?.coordination ?? null };
    try {
      const next = nextPlannedStart(m, now, timeZoneOf(cfg), (history ??= planHistory(repo, cfg)));
      out.set(source, { ...base, nextStart: next?.start.toISOString() ?? null, nextEnd: next?.end.toISOString() ?? null, moved: next?.moved });
    } catch (e) {
      out.set(source, { ...base, nextStart: null, nextEnd: null, error: (e as Error).message });
    }
  }
  return out;
}
