import { parseDuration } from '../config/duration.js';
import type { KuraConfig } from '../config/schema.js';
import { routesOf } from '../relay/routes.js';
import type { Repository } from '../repository/repository.js';
import { statusReport, type StatusReport } from './status.js';

/** Read the catalogue and the config, and compute the status report (the I/O edge of status.ts). */
export function collectStatus(repo: Repository, cfg: KuraConfig, now = new Date()): StatusReport {
  const cat = repo.catalogue;
  const routeNames = new Set(Object.keys(routesOf(cfg)));
  for (const q of cat.queued()) routeNames.add(q.route);
  const defaultRpo = parseDuration(cfg.rpo)! / 1000;
  return statusReport(
    {
      routes: [...routeNames].sort(),
      routeStates: cat.routeStates(),
      queued: cat.queued(),
      snapshots: cat.snapshots(),
      lastJobs: cat.lastJobs(),
      rpoTarget: (_route, source) => {
        const s = cfg.sources[source];
        return s?.rpo ? parseDuration(s.rpo)! / 1000 : defaultRpo;
      },
    },
    now,
  );
}
