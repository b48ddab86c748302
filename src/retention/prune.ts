import type { Repository } from '../repository/repository.js';
import { snapshotName } from '../store/backend.js';
import { planRetention, type RetentionDecision, type RetentionPolicy } from './plan.js';
import { protectedSnapshots } from './protect.js';
import { forwardHolds } from '../relay/route-policy.js';

export interface PruneOptions {
  /** the policy of one source of one tenant; undefined keeps everything */
  policyFor: (tenant: string, source: string) => RetentionPolicy | undefined;
  now: Date;
  timeZone: string;
  dryRun: boolean;
  /** on-site: a snapshot some route still has to send is kept, whatever the policy says */
  keepUnsent: boolean;
  /** only these sources (default: all) */
  sources?: readonly string[] | undefined;
}

export interface PruneDecision extends RetentionDecision {
  tenant: string;
  source: string;
}

export interface PruneReport {
  dryRun: boolean;
  decisions: PruneDecision[];
  kept: number;
  removed: number;
}

/**
 * Apply retention: plan per tenant and source, then delete the snapshot files of what falls out
 * (the catalogue follows). Chunks are not touched: `gc` reclaims them afterwards.
 */
export async function prune(repo: Repository, opts: PruneOptions): Promise<PruneReport> {
  const cat = repo.catalogue;
  await repo.reconcileSnapshots();
  const held = await protectedSnapshots(repo);
  const groups = new Map<string, { tenant: string; source: string; rows: Array<{ id: string; time: string; tags: string[] }> }>();
  for (const r of cat.snapshots()) {
    if (opts.sources && !opts.sources.includes(r.header.source)) continue;
    const key = `${r.header.tenant}\u0000${r.header.source}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { tenant: r.header.tenant, source: r.header.source, rows: [] }));
    g.rows.push({ id: r.id, time: r.header.endTime, tags: r.header.tags ?? [] });
  }
  // on site, and on a vault that forwards: what a route still has to send stays (gc then keeps its
  // chunks). Read after the snapshots: a snapshot committed meanwhile is queued at its commit, so
  // every snapshot planned here that some route lacks is in this list
  const unsent = opts.keepUnsent ? forwardHolds(cat.ops.queued()) : new Map<string, string[]>();
  const decisions: PruneDecision[] = [];
  for (const g of [...groups.values()].sort((a, b) => a.tenant.localeCompare(b.tenant) || a.source.localeCompare(b.source))) {
    const items = g.rows.map((r) => ({ ...r, protected: held.has(r.id) }));
    for (const d of planRetention(items, opts.policyFor(g.tenant, g.source), opts.now, opts.timeZone)) {
      const routes = unsent.get(d.id);
      if (routes) {
        d.keep = true;
        d.reasons.push(`unsent to ${routes.join(', ')}`);
      }
      decisions.push({ ...d, tenant: g.tenant, source: g.source });
    }
  }
  let removed = 0;
  if (!opts.dryRun) {
    for (const d of decisions) {
      if (d.keep) continue;
      await repo.store.delete(snapshotName(d.id));
      cat.removeSnapshot(d.id);
      removed++;
    }
    await repo.store.sync();
  }
  const kept = decisions.filter((d) => d.keep).length;
  return { dryRun: opts.dryRun, decisions, kept, removed: opts.dryRun ? decisions.length - kept : removed };
}
