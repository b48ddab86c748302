import type { JobRow, RouteStateRow } from '../repository/catalogue.js';
import type { AsideEntry } from '../repository/ops-state.js';
import type { SnapshotDamage } from '../repository/quarantine.js';
import type { SnapshotHeader } from '../repository/snapshot.js';
import { deliveryKey, exposures, worstOf, type Exposure, type ExposureSource } from './exposure.js';

/**
 * What operators and job schedulers see: per route its link state, backlog and RPO exposure
 * (its most overdue source: exposure.ts says how exposure is measured) against that source's
 * target; per source its last backup and its exposure on each route. A pure function of
 * catalogue rows, targets and the time: I/O stays at the edges.
 */
export interface RouteStatus {
  route: string;
  state: string;
  paused: boolean;
  lastError: string | null;
  lastSuccess: string | null;
  nextAttempt: string | null;
  bytesSent: number;
  queued: number;
  queuedBytes: number;
  oldestUnsent: { snapshot: string; source: string; endTime: string } | null;
  /** the exposure of the route's most overdue source (0 when no source has a snapshot) */
  exposureSeconds: number;
  rpoTargetSeconds: number;
  overTarget: boolean;
  /** the source whose exposure the route line shows */
  worstSource: string | null;
  /** queue entries set aside (damaged snapshots, or by hand): not sent, not holding up the route */
  setAside: number;
}

export interface SourceStatus {
  source: string;
  tenant: string;
  snapshots: number;
  lastBackup: string | null;
  lastSnapshot: string | null;
  lastLogicalBytes: number;
  lastNewBytes: number;
  /** the last finished backup job, successful or not */
  lastJob: { result: string; finished: string | null; errorCode: string | null; error: string | null } | null;
  lastJobFailed: boolean;
  rpoTargetSeconds: number | null;
  /** a source its virtualization group plans: the next start, the slot state, how its last run went */
  plan?: SourcePlan | undefined;
  /** exposure on each of its routes (route null: the on-site copy of a source without routes) */
  exposure: Exposure[];
  overTarget: boolean;
}

export interface SourcePlan {
  group: string;
  member: string;
  nextStart: string | null;
  nextEnd: string | null;
  moved?: string | undefined;
  /** waiting for a slot, holding one, or none (between runs) */
  slot: 'waiting' | 'holding' | 'none';
  /** the last job's coordination: "coordinated" or "uncoordinated: why" */
  lastRun: string | null;
  /** why there is no plan (E_PLAN_FULL: the group does not fit) */
  error?: string | undefined;
}

export interface StatusReport {
  time: string;
  ok: boolean;
  routes: RouteStatus[];
  sources: SourceStatus[];
  /** one row per source × route */
  exposure: Exposure[];
  /** queue entries set aside, with when and why */
  setAside: AsideEntry[];
  /** snapshots that need a chunk found damaged and not stored again yet */
  damaged: Array<SnapshotDamage & { source: string | null }>;
}

export interface StatusInput {
  routes: string[];
  routeStates: RouteStateRow[];
  queued: Array<{ snapshot: string; route: string; source: string; end_time: string }>;
  snapshots: Array<{ id: string; header: SnapshotHeader }>;
  lastJobs?: JobRow[];
  /** the sources whose exposure is judged, their targets and routes */
  sources: ExposureSource[];
  /** newest delivered end time per deliveryKey(route, source) */
  delivered: ReadonlyMap<string, string>;
  /** RPO target of a route with no source (the top-level rpo) */
  defaultRpoSeconds: number;
  aside?: AsideEntry[];
  damaged?: SnapshotDamage[];
  /** planned sources (modules.virtualization), by source */
  plans?: ReadonlyMap<string, SourcePlan>;
}

export function statusReport(input: StatusInput, now: Date): StatusReport {
  const byId = new Map(input.snapshots.map((s) => [s.id, s.header]));
  const spans = new Map<string, { first: string; last: string }>();
  for (const { header: h } of input.snapshots) {
    const sp = spans.get(h.source);
    if (!sp) spans.set(h.source, { first: h.endTime, last: h.endTime });
    else {
      if (h.endTime < sp.first) sp.first = h.endTime;
      if (h.endTime > sp.last) sp.last = h.endTime;
    }
  }
  const pending = new Map<string, number>();
  for (const q of input.queued) pending.set(deliveryKey(q.route, q.source), (pending.get(deliveryKey(q.route, q.source)) ?? 0) + 1);
  const paused = new Set(input.routeStates.filter((r) => r.paused).map((r) => r.route));
  const exposure = exposures({ sources: input.sources, spans, delivered: input.delivered, pending, paused }, now);

  const routes = input.routes.map((route): RouteStatus => {
    const st = input.routeStates.find((r) => r.route === route);
    const q = input.queued.filter((e) => e.route === route);
    const oldest = q[0] ?? null; // queue rows come oldest first
    const worst = worstOf(exposure.filter((e) => e.route === route));
    return {
      route,
      state: st?.paused ? 'paused' : (st?.state ?? 'idle'),
      paused: Boolean(st?.paused),
      lastError: st?.last_error ?? null,
      lastSuccess: st?.last_success ?? null,
      nextAttempt: st?.next_attempt ? new Date(st.next_attempt).toISOString() : null,
      bytesSent: st?.bytes_sent ?? 0,
      queued: q.length,
      queuedBytes: q.reduce((n, e) => n + (byId.get(e.snapshot)?.newBytes ?? 0), 0),
      oldestUnsent: oldest ? { snapshot: oldest.snapshot, source: oldest.source, endTime: oldest.end_time } : null,
      exposureSeconds: worst?.exposureSeconds ?? 0,
      rpoTargetSeconds: worst?.targetSeconds ?? input.defaultRpoSeconds,
      overTarget: exposure.some((e) => e.route === route && e.overTarget),
      worstSource: worst?.source ?? null,
      setAside: (input.aside ?? []).filter((a) => a.route === route).length,
    };
  });
  const sources = new Map<string, SourceStatus>();
  const entry = (source: string, tenant: string) => {
    const cur = sources.get(source) ?? emptySource(source, tenant);
    sources.set(source, cur);
    return cur;
  };
  for (const s of input.snapshots) {
    const h = s.header;
    const cur = entry(h.source, h.tenant);
    cur.snapshots++;
    if (!cur.lastBackup || h.endTime > cur.lastBackup) Object.assign(cur, { lastBackup: h.endTime, lastSnapshot: s.id, lastLogicalBytes: h.logicalBytes, lastNewBytes: h.newBytes, tenant: h.tenant });
  }
  for (const j of input.lastJobs ?? []) {
    const cur = entry(j.source, '');
    cur.lastJob = { result: j.result, finished: j.finished, errorCode: j.error_code, error: j.error };
    cur.lastJobFailed = j.result === 'failed';
  }
  for (const s of input.sources) {
    const cur = entry(s.source, s.tenant);
    if (!cur.tenant) cur.tenant = s.tenant;
    cur.rpoTargetSeconds = s.rpoSeconds;
    cur.exposure = exposure.filter((e) => e.source === s.source);
    cur.overTarget = cur.exposure.some((e) => e.overTarget);
  }
  for (const [source, plan] of input.plans ?? []) entry(source, '').plan = plan;
  const list = [...sources.values()].sort((a, b) => a.source.localeCompare(b.source));
  const damaged = (input.damaged ?? []).map((d) => ({ ...d, source: byId.get(d.snapshot)?.source ?? null }));
  return {
    time: now.toISOString(),
    ok: exposure.every((e) => !e.overTarget) && list.every((s) => !s.lastJobFailed) && damaged.length === 0,
    routes,
    sources: list,
    exposure,
    setAside: input.aside ?? [],
    damaged,
  };
}

function emptySource(source: string, tenant: string): SourceStatus {
  return { source, tenant, snapshots: 0, lastBackup: null, lastSnapshot: null, lastLogicalBytes: 0, lastNewBytes: 0, lastJob: null, lastJobFailed: false, rpoTargetSeconds: null, exposure: [], overTarget: false };
}

/** Prometheus text exposition of a relay's status. */
export function relayMetrics(r: StatusReport): string {
  const lines: string[] = [];
  const metric = (name: string, help: string, type: 'gauge' | 'counter', rows: Array<[Record<string, string>, number]>) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of rows) lines.push(`${name}{${Object.entries(labels).map(([k, x]) => `${k}="${x.replace(/["\\\n]/g, '_')}"`).join(',')}} ${v}`);
  };
  metric('kura_relay_backlog_snapshots', 'Snapshots queued and not yet on the far side', 'gauge', r.routes.map((x) => [{ route: x.route }, x.queued]));
  metric('kura_relay_backlog_bytes', 'Stored bytes of the queued snapshots', 'gauge', r.routes.map((x) => [{ route: x.route }, x.queuedBytes]));
  metric('kura_relay_rpo_exposure_seconds', 'RPO exposure of the route\'s most overdue source', 'gauge', r.routes.map((x) => [{ route: x.route }, x.exposureSeconds]));
  metric('kura_relay_rpo_target_seconds', 'RPO target of the route\'s most overdue source', 'gauge', r.routes.map((x) => [{ route: x.route }, x.rpoTargetSeconds]));
  metric('kura_relay_rpo_over_target', '1 when some source of the route is over its RPO target', 'gauge', r.routes.map((x) => [{ route: x.route }, x.overTarget ? 1 : 0]));
  const measured = r.exposure.filter((e) => e.exposureSeconds !== null);
  const where = (e: Exposure) => ({ source: e.source, tenant: e.tenant, route: e.route ?? 'on-site' });
  metric('kura_source_rpo_exposure_seconds', 'Now minus the end of the newest snapshot of the source the destination holds (route "on-site": a source without routes)', 'gauge', measured.map((e) => [where(e), e.exposureSeconds!]));
  metric('kura_source_rpo_target_seconds', 'RPO target of the source', 'gauge', measured.map((e) => [where(e), e.targetSeconds]));
  metric('kura_source_rpo_over_target', '1 when the source is over its RPO target on the route', 'gauge', measured.map((e) => [where(e), e.overTarget ? 1 : 0]));
  metric('kura_relay_bytes_sent_total', 'Bytes sent to the vault', 'counter', r.routes.map((x) => [{ route: x.route }, x.bytesSent]));
  metric('kura_relay_link_up', '1 unless the route is waiting for the line or refused', 'gauge', r.routes.map((x) => [{ route: x.route }, x.state === 'waiting-for-line' || x.state === 'refused' ? 0 : 1]));
  metric('kura_relay_last_success_timestamp_seconds', 'Time of the last snapshot committed on the far side', 'gauge', r.routes.map((x) => [{ route: x.route }, x.lastSuccess ? Math.floor(Date.parse(x.lastSuccess) / 1000) : 0]));
  metric('kura_source_last_job_failed', '1 when the last backup job of the source failed', 'gauge', r.sources.map((s) => [{ source: s.source }, s.lastJobFailed ? 1 : 0]));
  metric('kura_source_last_backup_timestamp_seconds', 'Time of the last snapshot of the source', 'gauge', r.sources.map((s) => [{ source: s.source, tenant: s.tenant }, s.lastBackup ? Math.floor(Date.parse(s.lastBackup) / 1000) : 0]));
  return lines.join('\n') + '\n';
}
