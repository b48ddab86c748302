import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isoWeek, planRetention, type RetentionItem, type RetentionPolicy } from '../src/retention/plan.js';

const NOW = new Date('2026-11-23T03:00:00Z');

/** One snapshot per `stepHours` going back from `end`, named s0 (newest), s1, ... */
function series(end: string, count: number, stepHours: number): RetentionItem[] {
  const t = Date.parse(end);
  return Array.from({ length: count }, (_, i) => ({ id: `s${i}`, time: new Date(t - i * stepHours * 3_600_000).toISOString() }));
}

const kept = (items: RetentionItem[], policy: RetentionPolicy | undefined, tz = 'UTC') =>
  planRetention(items, policy, NOW, tz)
    .filter((d) => d.keep)
    .map((d) => d.id);

test('retention table: which snapshots each policy keeps', () => {
  const daily10 = series('2026-11-22T16:00:00Z', 10, 24); // 01:00 JST every night
  const twiceDaily = series('2026-11-22T18:00:00Z', 20, 12);
  const table: Array<{ name: string; items: RetentionItem[]; policy: RetentionPolicy | undefined; tz?: string; want: string[] }> = [
    { name: 'keepLast 3 of 10', items: daily10, policy: { keepLast: 3 }, want: ['s0', 's1', 's2'] },
    { name: 'keepLast larger than the set', items: daily10.slice(0, 2), policy: { keepLast: 5 }, want: ['s0', 's1'] },
    { name: 'keepLast 0 removes all', items: daily10.slice(0, 2), policy: { keepLast: 0 }, want: [] },
    { name: 'no policy keeps everything', items: daily10.slice(0, 3), policy: undefined, want: ['s0', 's1', 's2'] },
    { name: 'empty policy keeps everything', items: daily10.slice(0, 3), policy: {}, want: ['s0', 's1', 's2'] },
    { name: 'keepDaily keeps the newest of each day', items: twiceDaily, policy: { keepDaily: 3 }, want: ['s0', 's2', 's4'] },
    { name: 'keepWithin 2d', items: daily10, policy: { keepWithin: '2d' }, want: ['s0', 's1'] },
    {
      name: 'keepTags keeps tagged ones',
      items: daily10.map((s, i) => ({ ...s, tags: i === 7 ? ['year-end'] : ['nightly'] })),
      policy: { keepLast: 1, keepTags: ['year-end'] },
      want: ['s0', 's7'],
    },
    {
      name: 'protected is never removed',
      items: daily10.map((s, i) => ({ ...s, protected: i === 9 })),
      policy: { keepLast: 2 },
      want: ['s0', 's1', 's9'],
    },
    {
      name: 'weekly buckets are ISO weeks (Monday start)',
      // Sun 2026-11-22, Sat 21, ..., Mon 16, Sun 15: two weeks
      items: series('2026-11-22T12:00:00Z', 8, 24),
      policy: { keepWeekly: 5 },
      want: ['s0', 's7'],
    },
  ];
  for (const c of table) assert.deepEqual(kept(c.items, c.policy, c.tz), c.want, c.name);
});

test('retention: days, months and years are counted in the configured time zone', () => {
  // 14:30Z is 23:30 in Tokyo on the 20th; 15:30Z is 00:30 on the 21st in Tokyo, still the 20th in UTC
  const items: RetentionItem[] = [
    { id: 'late', time: '2026-11-20T15:30:00Z' },
    { id: 'early', time: '2026-11-20T14:30:00Z' },
    { id: 'before', time: '2026-11-19T14:30:00Z' },
  ];
  assert.deepEqual(kept(items, { keepDaily: 2 }, 'Asia/Tokyo'), ['late', 'early']);
  assert.deepEqual(kept(items, { keepDaily: 2 }, 'UTC'), ['late', 'before']);
  const d = planRetention(items, { keepDaily: 2 }, NOW, 'Asia/Tokyo');
  assert.deepEqual(d[0]!.reasons, ['daily 2026-11-21']);
  assert.deepEqual(d[2], { id: 'before', time: '2026-11-19T14:30:00Z', keep: false, reasons: [] });

  // month boundary: 2026-01-31T15:00Z is 1 February 00:00 in Tokyo
  const month: RetentionItem[] = [
    { id: 'feb-jst', time: '2026-01-31T15:00:00Z' },
    { id: 'jan', time: '2026-01-31T14:59:59Z' },
    { id: 'jan-early', time: '2026-01-15T00:00:00Z' },
  ];
  assert.deepEqual(kept(month, { keepMonthly: 2 }, 'Asia/Tokyo'), ['feb-jst', 'jan']);
  assert.deepEqual(kept(month, { keepMonthly: 2 }, 'UTC'), ['feb-jst']);
  assert.deepEqual(planRetention(month, { keepMonthly: 1 }, NOW, 'Asia/Tokyo')[0]!.reasons, ['monthly 2026-02']);

  // year boundary: 2025-12-31T15:30Z is already 2026 in Tokyo
  const year: RetentionItem[] = [
    { id: 'ny', time: '2025-12-31T15:30:00Z' },
    { id: 'eve', time: '2025-12-31T14:00:00Z' },
    { id: 'old', time: '2024-06-01T00:00:00Z' },
  ];
  assert.deepEqual(kept(year, { keepYearly: 3 }, 'Asia/Tokyo'), ['ny', 'eve', 'old']);
  assert.deepEqual(kept(year, { keepYearly: 3 }, 'UTC'), ['ny', 'old']);
  assert.deepEqual(planRetention(year, { keepYearly: 1 }, NOW, 'Asia/Tokyo')[0]!.reasons, ['yearly 2026']);

  // hours: a leap day at 23:xx
  const hours: RetentionItem[] = [
    { id: 'a', time: '2028-02-29T14:50:00Z' }, // 23:50 JST 29 Feb
    { id: 'b', time: '2028-02-29T14:10:00Z' },
    { id: 'c', time: '2028-02-29T13:59:00Z' },
  ];
  assert.deepEqual(kept(hours, { keepHourly: 2 }, 'Asia/Tokyo'), ['a', 'c']);
  assert.deepEqual(planRetention(hours, { keepHourly: 1 }, NOW, 'Asia/Tokyo')[0]!.reasons, ['hourly 2028-02-29 23h']);
});

test('retention: every reason is listed, rules combine as a union', () => {
  const items = series('2026-11-22T16:00:00Z', 40, 24);
  const plan = planRetention(items, { keepLast: 2, keepDaily: 3, keepMonthly: 2 }, NOW, 'Asia/Tokyo');
  const byId = new Map(plan.map((d) => [d.id, d]));
  assert.deepEqual(byId.get('s0')!.reasons, ['last 1', 'daily 2026-11-23', 'monthly 2026-11']);
  assert.deepEqual(byId.get('s2')!.reasons, ['daily 2026-11-21']);
  // October in Tokyo ends with s23: 2026-10-30T16:00Z is 31 October 01:00 JST (s22 is already 1 November)
  const oct = plan.find((d) => d.reasons.includes('monthly 2026-10'))!;
  assert.equal(oct.id, 's23');
  assert.equal(oct.time, '2026-10-30T16:00:00.000Z');
  assert.equal(plan.filter((d) => d.keep).length, 4);
  assert.equal(plan.length, 40);
});

test('isoWeek at year boundaries', () => {
  const table: Array<[number, number, number, string]> = [
    [2026, 1, 1, '2026-1'], // Thursday
    [2027, 1, 1, '2026-53'], // Friday
    [2024, 12, 30, '2025-1'], // Monday
    [2021, 1, 3, '2020-53'], // Sunday
    [2026, 11, 23, '2026-48'],
    [2026, 11, 22, '2026-47'],
  ];
  for (const [y, m, d, want] of table) {
    const w = isoWeek(y, m, d);
    assert.equal(`${w.year}-${w.week}`, want, `${y}-${m}-${d}`);
  }
});
