import { hostname } from 'node:os';
import type { KuraConfig } from '../config/schema.js';
import { moduleOf } from '../modules/registry.js';
import { backupPlan, durationFromHistory, type BackupGroup, type PlannedStart } from '../modules/virtualization/plan.js';
import type { Repository } from '../repository/repository.js';

/** A source of this host that a virtualization group plans: the group and the member naming it ("host/source" or "host"). */
export interface PlannedMember {
  group: BackupGroup;
  member: string;
}

export const hostOf = (cfg: KuraConfig): string => cfg.host ?? hostname();
export const timeZoneOf = (cfg: KuraConfig): string => cfg.timezone ?? Intl.DateTimeFormat().resolvedOptions().timeZone ?? 'UTC';

export function plannedMember(cfg: KuraConfig, source: string): PlannedMember | null {
  const host = hostOf(cfg);
  for (const group of moduleOf(cfg, 'virtualization').groups) {
    if (group.members.includes(`${host}/${source}`)) return { group, member: `${host}/${source}` };
    if (group.members.includes(host)) return { group, member: host };
  }
  return null;
}

const dayIn = (t: Date, timeZone: string) => new Intl.DateTimeFormat('en-CA', { timeZone, year: 'numeric', month: '2-digit', day: '2-digit' }).format(t);
const shift = (date: string, days: number) => new Date(Date.parse(`${date}T00:00:00Z`) + days * 86_400_000).toISOString().slice(0, 10);

/** This host's members' durations from its own job records (the plan's history). */
export function planHistory(repo: Repository, cfg: KuraConfig): Map<string, number> {
  const host = hostOf(cfg);
  const out = new Map<string, number>();
  let whole = 0;
  for (const source of Object.keys(cfg.sources)) {
    const d = durationFromHistory(repo.catalogue.ops.jobSeconds(source));
    if (d === null) continue;
    out.set(`${host}/${source}`, d);
    whole += d;
  }
  if (whole > 0) out.set(host, whole);
  return out;
}

/** The member's planned starts on the days around `now` (yesterday's window may end today). */
function startsAround(m: PlannedMember, now: Date, timeZone: string, history: ReadonlyMap<string, number>): PlannedStart[] {
  const today = dayIn(now, timeZone);
  return [-1, 0, 1, 2].flatMap((d) => backupPlan(m.group, shift(today, d), timeZone, history).filter((p) => p.member === m.member));
}

/** The member's next planned start after `now`. */
export function nextPlannedStart(m: PlannedMember, now: Date, timeZone: string, history: ReadonlyMap<string, number>): PlannedStart | null {
  return startsAround(m, now, timeZone, history).find((p) => p.start.getTime() > now.getTime()) ?? null;
}

/** The member's latest planned start at or before `now` (what a daemon started late may have missed). */
export function lastPlannedStart(m: PlannedMember, now: Date, timeZone: string, history: ReadonlyMap<string, number>): PlannedStart | null {
  return startsAround(m, now, timeZone, history).filter((p) => p.start.getTime() <= now.getTime()).at(-1) ?? null;
}
