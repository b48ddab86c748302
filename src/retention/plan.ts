import { parseDuration } from '../config/duration.js';

/**
 * Retention: which snapshots to keep, as a pure function of the snapshots, the policy and the
 * time. Vocabulary and semantics follow restic's `forget`, which operators already know:
 *
 * - keepLast N: the N newest snapshots.
 * - keepHourly/Daily/Weekly/Monthly/Yearly N: walking from the newest, the newest snapshot of
 *   each of the N most recent hours/days/ISO weeks/months/years that have a snapshot. Calendar
 *   periods are those of `timeZone` (a municipality in Japan counts days in Asia/Tokyo).
 * - keepWithin D: every snapshot younger than D at `now`.
 * - keepTags: every snapshot carrying one of the tags.
 * - protected snapshots (long-term hold) are always kept.
 *
 * A policy without any rule keeps everything: an empty or missing policy never deletes.
 */
export interface RetentionPolicy {
  keepLast?: number | undefined;
  keepHourly?: number | undefined;
  keepDaily?: number | undefined;
  keepWeekly?: number | undefined;
  keepMonthly?: number | undefined;
  keepYearly?: number | undefined;
  keepWithin?: string | undefined;
  keepTags?: readonly string[] | undefined;
}

export interface RetentionItem {
  id: string;
  /** ISO 8601 end time of the snapshot */
  time: string;
  tags?: readonly string[];
  protected?: boolean;
}

export interface RetentionDecision {
  id: string;
  time: string;
  keep: boolean;
  /** every rule that keeps it ("daily 2026-11-20", "last 1", "protected"); empty when removed */
  reasons: string[];
}

type Period = 'hourly' | 'daily' | 'weekly' | 'monthly' | 'yearly';
const PERIODS: ReadonlyArray<[Period, keyof RetentionPolicy]> = [
  ['hourly', 'keepHourly'],
  ['daily', 'keepDaily'],
  ['weekly', 'keepWeekly'],
  ['monthly', 'keepMonthly'],
  ['yearly', 'keepYearly'],
];

export function isEmptyPolicy(p: RetentionPolicy | undefined): boolean {
  if (!p) return true;
  return (
    p.keepLast === undefined &&
    PERIODS.every(([, k]) => p[k] === undefined) &&
    p.keepWithin === undefined &&
    (p.keepTags === undefined || p.keepTags.length === 0)
  );
}

const formatters = new Map<string, Intl.DateTimeFormat>();
function formatterOf(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-CA', { timeZone, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', hourCycle: 'h23' });
    formatters.set(timeZone, f);
  }
  return f;
}

/** Throws RangeError for an unknown time zone name. */
export function checkTimeZone(timeZone: string): void {
  formatterOf(timeZone);
}

interface LocalTime {
  y: number;
  m: number;
  d: number;
  h: number;
}

function localTime(ms: number, timeZone: string): LocalTime {
  const parts = formatterOf(timeZone).formatToParts(ms);
  const get = (t: string) => Number(parts.find((p) => p.type === t)!.value);
  return { y: get('year'), m: get('month'), d: get('day'), h: get('hour') };
}

/** ISO 8601 week-numbering year and week of a calendar date. */
export function isoWeek(y: number, m: number, d: number): { year: number; week: number } {
  const date = new Date(Date.UTC(y, m - 1, d));
  const dow = (date.getUTCDay() + 6) % 7; // Monday 0
  date.setUTCDate(date.getUTCDate() - dow + 3); // the Thursday of this week decides its year
  const year = date.getUTCFullYear();
  const dayOfYear = Math.round((date.getTime() - Date.UTC(year, 0, 1)) / 86_400_000); // 0-based
  return { year, week: Math.floor(dayOfYear / 7) + 1 };
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

function periodKey(p: Period, t: LocalTime): string {
  switch (p) {
    case 'hourly':
      return `${t.y}-${pad(t.m)}-${pad(t.d)} ${pad(t.h)}h`;
    case 'daily':
      return `${t.y}-${pad(t.m)}-${pad(t.d)}`;
    case 'weekly': {
      const w = isoWeek(t.y, t.m, t.d);
      return `${w.year}-W${pad(w.week)}`;
    }
    case 'monthly':
      return `${t.y}-${pad(t.m)}`;
    case 'yearly':
      return String(t.y);
  }
}

/**
 * Decide keep/remove for one group of snapshots (one source of one tenant). Returned newest
 * first, each with the rules that keep it.
 */
export function planRetention(items: readonly RetentionItem[], policy: RetentionPolicy | undefined, now: Date, timeZone = 'UTC'): RetentionDecision[] {
  const sorted = items
    .map((it) => ({ it, ms: Date.parse(it.time) }))
    .sort((a, b) => b.ms - a.ms || (a.it.id < b.it.id ? 1 : a.it.id > b.it.id ? -1 : 0));
  const out: RetentionDecision[] = sorted.map(({ it }) => ({ id: it.id, time: it.time, keep: false, reasons: [] }));
  const keep = (i: number, why: string) => {
    out[i]!.keep = true;
    out[i]!.reasons.push(why);
  };
  if (isEmptyPolicy(policy)) {
    out.forEach((_, i) => keep(i, 'no retention policy'));
    return out;
  }
  const p = policy!;
  sorted.forEach(({ it }, i) => {
    if (it.protected) keep(i, 'protected');
  });
  if (p.keepLast !== undefined) for (let i = 0; i < Math.min(p.keepLast, sorted.length); i++) keep(i, `last ${i + 1}`);
  const locals = sorted.map(({ ms }) => localTime(ms, timeZone));
  for (const [period, field] of PERIODS) {
    const n = p[field] as number | undefined;
    if (!n) continue;
    let count = 0;
    let last: string | null = null;
    for (let i = 0; i < sorted.length && count < n; i++) {
      const k = periodKey(period, locals[i]!);
      if (k === last) continue;
      last = k;
      count++;
      keep(i, `${period} ${k}`);
    }
  }
  if (p.keepWithin !== undefined) {
    const d = parseDuration(p.keepWithin);
    if (d === null) throw new RangeError(`keepWithin ${JSON.stringify(p.keepWithin)} is not a duration`);
    const since = now.getTime() - d;
    sorted.forEach(({ ms }, i) => {
      if (ms >= since) keep(i, `within ${p.keepWithin}`);
    });
  }
  if (p.keepTags?.length) {
    sorted.forEach(({ it }, i) => {
      const hit = it.tags?.find((t) => p.keepTags!.includes(t));
      if (hit !== undefined) keep(i, `tag ${hit}`);
    });
  }
  return out;
}
