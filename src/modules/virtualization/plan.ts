import { createHash } from 'node:crypto';
import { KuraError } from '../../errors.js';

/**
 * The backup window plan of a group of members sharing a hypervisor, datastore or backup
 * device: at most `maxConcurrent` exports at once, each member at a start offset inside the
 * window. A pure function of (group, date, expected durations), deterministic, so every host
 * computes the same plan from the same config and the same durations.
 *
 * Stability: members are ordered by a hash of their name (not by their place in the list), and
 * each takes the first lane of its own hash-ranked preference that still has room; so adding or
 * removing a member moves only the members of the lane it joins or leaves (and, when a lane
 * fills up, the few that move on to their next lane).
 */
export interface BackupGroup {
  name: string;
  /** minutes after local midnight; `to` ≤ `from` means the window crosses midnight */
  window: { from: number; to: number };
  maxConcurrent: number;
  /** seconds, for members without history */
  expectedSeconds: number;
  /** even: the slack of each lane is spread between its jobs; packed: back to back from the window's start */
  spread: 'even' | 'packed';
  /** "host" (every source of the host, one after the other) or "host/source" */
  members: readonly string[];
  /** the route of the coordinator that leases slots (the on-site vault or backup server) */
  coordinator?: string | undefined;
  /** how long a slot lease lives without renewal (an agent that died frees its slot after it) */
  slotTtlSeconds?: number;
  /** members whose VM is powered on only at some hours: their weekly calendar */
  power?: ReadonlyMap<string, readonly PowerWindow[]>;
  /** dates (YYYY-MM-DD) on which members with a power calendar stay off */
  holidays?: readonly string[];
}

export type Weekday = 'mon' | 'tue' | 'wed' | 'thu' | 'fri' | 'sat' | 'sun';

/** A member's VM is on these days from `from` to `to` (minutes after local midnight; `to` ≤ `from` runs past midnight). */
export interface PowerWindow {
  days: readonly Weekday[];
  from: number;
  to: number;
}

export interface PlannedStart {
  group: string;
  member: string;
  /** 0-based lane: at most maxConcurrent lanes run at once; -1: its VM is off through the window, it runs when powered on */
  lane: number;
  start: Date;
  end: Date;
  durationSeconds: number;
  /** where the duration came from */
  durationFrom: 'history' | 'expected';
  /** the end of the window this start belongs to */
  windowEnd: Date;
  /** set when the member's VM is off during its slot: the backup moves to its next powered-on time */
  moved?: string;
}

const rank = (...parts: string[]) => createHash('sha256').update(parts.join('\u0000')).digest().readUInt32BE(0);

/** "01:00-05:00" → minutes; null when malformed. */
export function parseWindow(text: string): { from: number; to: number } | null {
  const m = /^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$/.exec(text.trim());
  if (!m) return null;
  const from = Number(m[1]) * 60 + Number(m[2]);
  const to = Number(m[3]) * 60 + Number(m[4]);
  if (to > 24 * 60 || from === to) return null;
  return { from, to };
}

/** The UTC instant of local wall-clock `minutes` after midnight of `date` (YYYY-MM-DD) in `timeZone`. */
export function localTime(date: string, minutes: number, timeZone: string): Date {
  const [y, mo, d] = date.split('-').map(Number) as [number, number, number];
  const guess = Date.UTC(y, mo - 1, d, 0, minutes);
  // the zone's offset at that moment, found by formatting the guess in the zone (twice: DST edges)
  let t = guess;
  for (let i = 0; i < 2; i++) {
    const parts = Object.fromEntries(new Intl.DateTimeFormat('en-US', { timeZone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' }).formatToParts(new Date(t)).map((p) => [p.type, p.value]));
    const shown = Date.UTC(Number(parts.year), Number(parts.month) - 1, Number(parts.day), Number(parts.hour), Number(parts.minute), Number(parts.second));
    t += guess - shown;
  }
  return new Date(t);
}

export function windowOf(group: Pick<BackupGroup, 'window'>, date: string, timeZone: string): { start: Date; end: Date } {
  const start = localTime(date, group.window.from, timeZone);
  const endMinutes = group.window.to <= group.window.from ? group.window.to + 24 * 60 : group.window.to;
  return { start, end: localTime(date, endMinutes, timeZone) };
}

/**
 * The plan of one group on one date: a start for every member, or E_PLAN_FULL naming the group
 * when the durations cannot fit (their sum over maxConcurrent exceeds the window, or one member
 * alone is longer than it).
 */
export function backupPlan(group: BackupGroup, date: string, timeZone: string, history: ReadonlyMap<string, number> = new Map()): PlannedStart[] {
  const { start, end } = windowOf(group, date, timeZone);
  const windowSeconds = (end.getTime() - start.getTime()) / 1000;
  const members = [...new Set(group.members)].map((m) => ({ member: m, seconds: history.get(m) ?? group.expectedSeconds, from: history.has(m) ? ('history' as const) : ('expected' as const), order: rank(group.name, m) }));
  const total = members.reduce((a, m) => a + m.seconds, 0);
  const longest = members.reduce((a, m) => Math.max(a, m.seconds), 0);
  if (total > windowSeconds * group.maxConcurrent || longest > windowSeconds) {
    throw new KuraError(
      'E_PLAN_FULL',
      `virtualization group "${group.name}" does not fit its window ${fmt(group.window.from)}-${fmt(group.window.to)}: ${members.length} member(s) need ${Math.ceil(total / 60)} min at ${group.maxConcurrent} at a time${longest > windowSeconds ? ` (one alone needs ${Math.ceil(longest / 60)} min)` : ''}, the window has ${windowSeconds / 60} min; widen the window, raise maxConcurrent or split the group`,
    );
  }
  members.sort((a, b) => a.order - b.order || a.member.localeCompare(b.member));
  // a member whose VM is not on long enough anywhere in the window takes no lane: it runs when it is on
  const outside: PlannedStart[] = [];
  for (const m of [...members]) {
    const on = powerOf(group, m.member);
    if (!on) continue;
    const intervals = poweredOn(on, group.holidays ?? [], date, timeZone);
    const inWindow = intervals.some((iv) => Math.min(iv.end.getTime(), end.getTime()) - Math.max(iv.start.getTime(), start.getTime()) >= m.seconds * 1000);
    if (inWindow) continue;
    members.splice(members.indexOf(m), 1);
    const p: PlannedStart = { group: group.name, member: m.member, lane: -1, start, end: new Date(start.getTime() + m.seconds * 1000), durationSeconds: m.seconds, durationFrom: m.from, windowEnd: end };
    movePowered(p, group, date, timeZone);
    outside.push(p);
  }
  const lanes = Array.from({ length: group.maxConcurrent }, () => ({ used: 0, members: [] as typeof members }));
  for (const m of members) {
    const prefs = lanes.map((_, i) => i).sort((a, b) => rank(group.name, m.member, String(b)) - rank(group.name, m.member, String(a)) || a - b);
    const lane = prefs.find((i) => lanes[i]!.used + m.seconds <= windowSeconds) ?? prefs.reduce((best, i) => (lanes[i]!.used < lanes[best]!.used ? i : best), prefs[0]!);
    if (lanes[lane]!.used + m.seconds > windowSeconds) {
      throw new KuraError('E_PLAN_FULL', `virtualization group "${group.name}": ${m.member} (${Math.ceil(m.seconds / 60)} min) fits in no lane of its window; raise maxConcurrent or widen the window`);
    }
    lanes[lane]!.used += m.seconds;
    lanes[lane]!.members.push(m);
  }
  const out: PlannedStart[] = [];
  lanes.forEach((lane, i) => {
    const gap = group.spread === 'even' && lane.members.length > 0 ? (windowSeconds - lane.used) / lane.members.length : 0;
    let at = start.getTime();
    for (const m of lane.members) {
      const s = new Date(Math.round(at / 1000) * 1000);
      out.push({ group: group.name, member: m.member, lane: i, start: s, end: new Date(s.getTime() + m.seconds * 1000), durationSeconds: m.seconds, durationFrom: m.from, windowEnd: end });
      at += (m.seconds + gap) * 1000;
    }
  });
  if (group.power?.size) for (const p of out) movePowered(p, group, date, timeZone);
  out.push(...outside);
  return out.sort((a, b) => a.start.getTime() - b.start.getTime() || a.lane - b.lane);
}

const WEEKDAYS: readonly Weekday[] = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

const addDays = (date: string, n: number) => new Date(Date.parse(`${date}T00:00:00Z`) + n * 86_400_000).toISOString().slice(0, 10);

/** Powered-on intervals of a member from `date` on, for `days` days (holidays left out). */
export function poweredOn(windows: readonly PowerWindow[], holidays: readonly string[], date: string, timeZone: string, days = 8): Array<{ start: Date; end: Date }> {
  const out: Array<{ start: Date; end: Date }> = [];
  for (let i = -1; i < days; i++) {
    const d = addDays(date, i);
    if (holidays.includes(d)) continue;
    const weekday = WEEKDAYS[new Date(`${d}T00:00:00Z`).getUTCDay()]!;
    for (const w of windows) {
      if (!w.days.includes(weekday)) continue;
      const end = w.to <= w.from ? w.to + 24 * 60 : w.to;
      out.push({ start: localTime(d, w.from, timeZone), end: localTime(d, end, timeZone) });
    }
  }
  return out.sort((a, b) => a.start.getTime() - b.start.getTime());
}

/** A member's power calendar: its own, or its host's. */
const powerOf = (group: BackupGroup, member: string) => group.power?.get(member) ?? group.power?.get(member.split('/')[0]!);

/** A member whose VM is off during its slot moves to the first powered-on time that holds its whole backup. */
function movePowered(p: PlannedStart, group: BackupGroup, date: string, timeZone: string): void {
  const windows = powerOf(group, p.member);
  if (!windows) return;
  const on = poweredOn(windows, group.holidays ?? [], date, timeZone);
  const ms = p.durationSeconds * 1000;
  const fits = (iv: { start: Date; end: Date }, t: number) => t >= iv.start.getTime() && t + ms <= iv.end.getTime();
  if (on.some((iv) => fits(iv, p.start.getTime()))) return;
  const next = on.find((iv) => iv.end.getTime() - Math.max(iv.start.getTime(), p.start.getTime()) >= ms);
  if (!next) {
    p.moved = 'its VM is not powered on for long enough in the next week; it runs when it is';
    return;
  }
  const start = Math.max(next.start.getTime(), p.start.getTime());
  p.moved = (group.holidays ?? []).includes(date) ? `${date} is a holiday: its VM stays off; moved to its next powered-on time` : 'its VM is powered off during its slot; moved to its next powered-on time';
  p.start = new Date(start);
  p.end = new Date(start + ms);
}

const fmt = (min: number) => `${String(Math.floor(min / 60) % 24).padStart(2, '0')}:${String(min % 60).padStart(2, '0')}`;

/** The longest of a member's last seven successful jobs (seconds): the plan's duration for it. */
export function durationFromHistory(seconds: readonly number[]): number | null {
  if (seconds.length === 0) return null;
  return Math.ceil(Math.max(...seconds.slice(-7)));
}
