import type { JobRow, RouteStateRow } from '../repository/catalogue.js';
import type { SnapshotHeader } from '../repository/snapshot.js';

/**
 * What operators and job schedulers see: per route its link state, backlog and RPO exposure
 * (age of the oldest snapshot not yet on the far side) against the target; per source its last
 * backup. A pure function of catalogue rows, targets and the time: I/O stays at the edges.
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
  exposureSeconds: number;
  rpoTargetSeconds: number;
  overTarget: boolean;
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
}

export interface StatusReport {
  time: string;
  ok: boolean;
  routes: RouteStatus[];
  sources: SourceStatus[];
}

export interface StatusInput {
  routes: string[];
  routeStates: RouteStateRow[];
  queued: Array<{ snapshot: string; route: string; source: string; end_time: string }>;
  snapshots: Array<{ id: string; header: SnapshotHeader }>;
  lastJobs?: JobRow[];
  /** RPO target in seconds for a source on a route */
  rpoTarget: (route: string, source: string) => number;
}

export function statusReport(input: StatusInput, now: Date): StatusReport {
  const byId = new Map(input.snapshots.map((s) => [s.id, s.header]));
  const routes = input.routes.map((route): RouteStatus => {
    const st = input.routeStates.find((r) => r.route === route);
    const q = input.queued.filter((e) => e.route === route);
    const oldest = q[0] ?? null; // queue rows come oldest first
    const exposure = oldest ? Math.max(0, (now.getTime() - Date.parse(oldest.end_time)) / 1000) : 0;
    // the tightest target among the sources waiting on this route
    const targets = [...new Set(q.map((e) => e.source))].map((s) => input.rpoTarget(route, s));
    const target = oldest ? input.rpoTarget(route, oldest.source) : targets.length ? Math.min(...targets) : input.rpoTarget(route, '');
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
      exposureSeconds: Math.round(exposure),
      rpoTargetSeconds: target,
      overTarget: exposure > target,
    };
  });
  const sources = new Map<string, SourceStatus>();
  for (const s of input.snapshots) {
    const h = s.header;
    const cur = sources.get(h.source) ?? emptySource(h.source, h.tenant);
    cur.snapshots++;
    if (!cur.lastBackup || h.endTime > cur.lastBackup) Object.assign(cur, { lastBackup: h.endTime, lastSnapshot: s.id, lastLogicalBytes: h.logicalBytes, lastNewBytes: h.newBytes, tenant: h.tenant });
    sources.set(h.source, cur);
  }
  for (const j of input.lastJobs ?? []) {
    const cur = sources.get(j.source) ?? emptySource(j.source, '');
    cur.lastJob = { result: j.result, finished: j.finished, errorCode: j.error_code, error: j.error };
    cur.lastJobFailed = j.result === 'failed';
    sources.set(j.source, cur);
  }
  const list = [...sources.values()].sort((a, b) => a.source.localeCompare(b.source));
  return { time: now.toISOString(), ok: routes.every((r) => !r.overTarget) && list.every((s) => !s.lastJobFailed), routes, sources: list };
}

function emptySource(source: string, tenant: string): SourceStatus {
  return { source, tenant, snapshots: 0, lastBackup: null, lastSnapshot: null, lastLogicalBytes: 0, lastNewBytes: 0, lastJob: null, lastJobFailed: false };
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
  metric('kura_relay_rpo_exposure_seconds', 'Age of the oldest snapshot not yet on the far side', 'gauge', r.routes.map((x) => [{ route: x.route }, x.exposureSeconds]));
  metric('kura_relay_rpo_target_seconds', 'RPO target of the route', 'gauge', r.routes.map((x) => [{ route: x.route }, x.rpoTargetSeconds]));
  metric('kura_relay_bytes_sent_total', 'Bytes sent to the vault', 'counter', r.routes.map((x) => [{ route: x.route }, x.bytesSent]));
  metric('kura_relay_link_up', '1 unless the route is waiting for the line or refused', 'gauge', r.routes.map((x) => [{ route: x.route }, x.state === 'waiting-for-line' || x.state === 'refused' ? 0 : 1]));
  metric('kura_relay_last_success_timestamp_seconds', 'Time of the last snapshot committed on the far side', 'gauge', r.routes.map((x) => [{ route: x.route }, x.lastSuccess ? Math.floor(Date.parse(x.lastSuccess) / 1000) : 0]));
  metric('kura_source_last_job_failed', '1 when the last backup job of the source failed', 'gauge', r.sources.map((s) => [{ source: s.source }, s.lastJobFailed ? 1 : 0]));
  metric('kura_source_last_backup_timestamp_seconds', 'Time of the last snapshot of the source', 'gauge', r.sources.map((s) => [{ source: s.source, tenant: s.tenant }, s.lastBackup ? Math.floor(Date.parse(s.lastBackup) / 1000) : 0]));
  return lines.join('\n') + '\n';
}
