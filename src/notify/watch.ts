import { formatAge } from '../format.js';
import type { Exposure } from '../status/exposure.js';
import type { EventInput } from './events.js';

/**
 * What the watchers announce, as pure steps: (what was last seen, what is seen now) → (what to
 * remember, what to say). Each crossing is said once and its recovery once; the outbox keeps
 * the state between evaluations and processes.
 */
export interface Step<T> {
  next: T;
  emit: EventInput[];
}

export type RpoState = 'ok' | 'over';

export const rpoKey = (e: Pick<Exposure, 'route' | 'source'>): string => `rpo:${e.route ?? 'on-site'}:${e.source}`;

/** An RPO target crossed (ok → over) or met again (over → ok); nothing measured yet says nothing. */
export function rpoStep(prev: RpoState | undefined, e: Exposure, at: number): Step<RpoState | undefined> {
  if (e.exposureSeconds === null) return { next: prev, emit: [] };
  const now: RpoState = e.overTarget ? 'over' : 'ok';
  if (now === (prev ?? 'ok')) return { next: now, emit: [] };
  const where = e.route ? `on route ${e.route}` : 'on site (the source has no route)';
  const newest = e.newestDelivered ? `the newest snapshot there ended ${e.newestDelivered}` : e.since === 'first-snapshot' ? 'nothing of it has arrived yet' : 'it has no snapshot';
  const data = { exposureSeconds: e.exposureSeconds, targetSeconds: e.targetSeconds, newestDelivered: e.newestDelivered, queued: e.queued, paused: e.paused };
  const id = `${rpoKey(e)}:${at}`;
  if (now === 'over') {
    const cause = e.queued > 0 ? `${e.queued} snapshot(s) wait to be sent${e.paused ? ' and the route is paused' : ''}: check the line and the relay (kura status, kura top)` : `nothing waits to be sent: the source itself has not been backed up recently; check its schedule and its last job (kura status)`;
    return {
      next: now,
      emit: [{ event: 'rpo.exceeded', tenant: e.tenant, source: e.source, route: e.route ?? undefined, key: id, title: `kura RPO EXCEEDED: ${e.source} ${where} (${formatAge(e.exposureSeconds)} > ${formatAge(e.targetSeconds)})`, text: `The off-site copy of ${e.source} is ${formatAge(e.exposureSeconds)} old against a target of ${formatAge(e.targetSeconds)}; ${newest}. ${cause}.`, data }],
    };
  }
  return { next: now, emit: [{ event: 'rpo.recovered', tenant: e.tenant, source: e.source, route: e.route ?? undefined, key: id, title: `kura RPO met again: ${e.source} ${where} (${formatAge(e.exposureSeconds)} ≤ ${formatAge(e.targetSeconds)})`, text: `The copy of ${e.source} ${where} is within its target again; ${newest}.`, data }] };
}

export interface LineState {
  down: boolean;
  /** when the line was first seen down (ms since the epoch) */
  since: number | null;
  announced: boolean;
  error: string | null;
}

/**
 * A route's line: down for longer than `afterMs` is announced once ("line down"), and its return
 * after that once ("line back"); a short blip says nothing. `seen` is null on a mere tick.
 */
export function lineStep(prev: LineState | undefined, route: string, seen: { down: boolean; error?: string | null } | null, now: number, afterMs: number): Step<LineState> {
  let next: LineState = prev ?? { down: false, since: null, announced: false, error: null };
  const emit: EventInput[] = [];
  if (seen?.down) next = next.down ? { ...next, error: seen.error ?? next.error } : { down: true, since: now, announced: false, error: seen.error ?? null };
  else if (seen && !seen.down && next.down) {
    if (next.announced)
      emit.push({ event: 'line.up', route, key: `line.up:${route}:${now}`, title: `kura line back: route ${route}`, text: `Route ${route} reaches its vault again after ${formatAge((now - next.since!) / 1000)} down; the backlog is being sent oldest first.`, data: { downSeconds: Math.round((now - next.since!) / 1000) } });
    next = { down: false, since: null, announced: false, error: null };
  }
  if (next.down && !next.announced && next.since !== null && now - next.since >= afterMs) {
    emit.push({
      event: 'line.down',
      route,
      key: `line.down:${route}:${next.since}`,
      title: `kura LINE DOWN: route ${route} for ${formatAge((now - next.since) / 1000)}`,
      text: `Route ${route} has not reached its vault since ${new Date(next.since).toISOString()}${next.error ? ` (${next.error})` : ''}. Snapshots stay queued and are sent in order when the line returns; check the WAN line and the vault host.`,
      data: { downSince: new Date(next.since).toISOString(), error: next.error },
    });
    next = { ...next, announced: true };
  }
  return { next, emit };
}

export interface BurstState {
  times: number[];
  announcedAt: number | null;
  last: Array<{ ip?: string | undefined; user?: string | undefined; reason?: string | undefined }>;
}

/** `count` refused logins within `windowMs` is a burst: said once per window. */
export function burstStep(prev: BurstState | undefined, refusal: { ip?: string | undefined; user?: string | undefined; reason?: string | undefined }, now: number, count: number, windowMs: number): Step<BurstState> {
  const times = [...(prev?.times ?? []).filter((t) => t > now - windowMs), now].slice(-count);
  const last = [...(prev?.last ?? []), refusal].slice(-5);
  let announcedAt = prev?.announcedAt ?? null;
  const emit: EventInput[] = [];
  if (times.length >= count && (announcedAt === null || announcedAt <= now - windowMs)) {
    announcedAt = now;
    const ips = [...new Set(last.map((l) => l.ip).filter(Boolean))];
    emit.push({
      event: 'auth.refused-burst',
      key: `auth.refused-burst:${now}`,
      title: `kura vault: ${times.length} refused logins within ${formatAge(windowMs / 1000)}`,
      text: `The vault refused ${times.length} logins within ${formatAge(windowMs / 1000)}${ips.length ? ` from ${ips.join(', ')}` : ''}; the last: ${last.map((l) => `${l.user ?? '?'}@${l.ip ?? '?'}: ${l.reason ?? ''}`).join('; ')}. Check the audit log; a misconfigured relay key or a scan can cause this.`,
      data: { refused: times.length, windowSeconds: windowMs / 1000, addresses: ips },
    });
  }
  return { next: { times, announcedAt, last }, emit };
}

export type QuotaLevel = 'ok' | 'warning' | 'exceeded';

/** A tenant's quota: reaching the warning level and exceeding it are each said once on the way up. */
export function quotaStep(prev: QuotaLevel | undefined, tenant: string, stored: number, quota: number, exceeded: boolean, warnPercent: number, now: number): Step<QuotaLevel> {
  const level: QuotaLevel = exceeded || stored >= quota ? 'exceeded' : stored * 100 >= quota * warnPercent ? 'warning' : 'ok';
  const rank = { ok: 0, warning: 1, exceeded: 2 } as const;
  if (rank[level] <= rank[prev ?? 'ok']) return { next: level, emit: [] };
  const pct = Math.floor((stored * 100) / quota);
  const data = { storedBytes: stored, quotaBytes: quota, percent: pct };
  return level === 'exceeded'
    ? { next: level, emit: [{ event: 'quota.exceeded', tenant, key: `quota.exceeded:${tenant}:${now}`, title: `kura QUOTA EXCEEDED: tenant ${tenant}`, text: `Tenant ${tenant} holds ${stored} bytes of its ${quota}-byte quota; uploads beyond it are refused and its relays keep their queues. Raise vault.tenants.${tenant}.quota, or prune and gc.`, data }] }
    : { next: level, emit: [{ event: 'quota.warning', tenant, key: `quota.warning:${tenant}:${now}`, title: `kura quota at ${pct}%: tenant ${tenant}`, text: `Tenant ${tenant} holds ${stored} bytes, ${pct}% of its ${quota}-byte quota. Plan room before uploads are refused: raise vault.tenants.${tenant}.quota, or prune and gc.`, data }] };
}
