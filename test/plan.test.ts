import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { kura, kuraJson, kuraOk, tempDir } from './support/cli.js';
import { backupPlan, durationFromHistory, localTime, parseWindow, poweredOn, type BackupGroup, type PlannedStart } from '../src/modules/virtualization/plan.js';
import { configSchema } from '../src/config/schema.js';
import { moduleOf } from '../src/modules/registry.js';

const TZ = 'Asia/Tokyo';
const group = (o: Partial<BackupGroup> = {}): BackupGroup => ({ name: 'hv-a', window: parseWindow('01:00-05:00')!, maxConcurrent: 2, expectedSeconds: 1800, spread: 'even', members: ['a', 'b', 'c', 'd', 'e', 'f'], ...o });
const hhmm = (d: Date) => new Intl.DateTimeFormat('en-GB', { timeZone: TZ, hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }).format(d);
const starts = (p: PlannedStart[]) => Object.fromEntries(p.map((x) => [x.member, x.start.toISOString()]));

/** At no moment more than `cap` planned jobs overlap. */
function peak(p: PlannedStart[]): number {
  const ev = p.flatMap((x) => [[x.start.getTime(), 1], [x.end.getTime(), -1]] as Array<[number, number]>).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let n = 0;
  let max = 0;
  for (const [, d] of ev) max = Math.max(max, (n += d));
  return max;
}

test('plan: members spread evenly over the window, at most maxConcurrent at once, every job inside the window, the same plan every time', () => {
  const p = backupPlan(group(), '2026-12-07', TZ);
  assert.equal(p.length, 6);
  assert.equal(peak(p), 2);
  const { start, end } = { start: localTime('2026-12-07', 60, TZ), end: localTime('2026-12-07', 300, TZ) };
  for (const x of p) assert.ok(x.start >= start && x.end <= end, `${x.member} ${hhmm(x.start)}-${hhmm(x.end)}`);
  assert.equal(hhmm(p[0]!.start), '01:00', 'each lane starts at the window');
  // 3 jobs of 30 min in a 4 h lane: 150 min spare, 50 min after each
  const lane0 = p.filter((x) => x.lane === 0).map((x) => hhmm(x.start));
  const lane1 = p.filter((x) => x.lane === 1).map((x) => hhmm(x.start));
  assert.deepEqual([lane0.length, lane1.length].sort(), [3, 3]);
  for (const lane of [lane0, lane1]) assert.deepEqual(lane, ['01:00', '02:20', '03:40']);
  assert.deepEqual(starts(backupPlan(group({ members: ['f', 'e', 'd', 'c', 'b', 'a'] }), '2026-12-07', TZ)), starts(p), 'the order of the list does not matter');
  const packed = backupPlan(group({ spread: 'packed' }), '2026-12-07', TZ);
  assert.deepEqual(packed.filter((x) => x.lane === 0).map((x) => hhmm(x.start)), ['01:00', '01:30', '02:00']);
});

test('plan: adding or removing a member moves only the members of its lane', () => {
  const before = backupPlan(group({ maxConcurrent: 3, members: ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'] }), '2026-12-07', TZ);
  const after = backupPlan(group({ maxConcurrent: 3, members: ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'new'] }), '2026-12-07', TZ);
  const lane = after.find((x) => x.member === 'new')!.lane;
  const moved = before.filter((x) => after.find((y) => y.member === x.member)!.start.getTime() !== x.start.getTime());
  assert.ok(moved.every((x) => x.lane === lane), `only lane ${lane} moves: ${moved.map((m) => `${m.member}@${m.lane}`).join(', ')}`);
  assert.ok(moved.length <= before.filter((x) => x.lane === lane).length);
  const removed = backupPlan(group({ maxConcurrent: 3, members: ['a', 'b', 'c', 'd', 'e', 'f', 'g'] }), '2026-12-07', TZ);
  const gone = before.find((x) => x.member === 'h')!.lane;
  for (const x of removed) {
    const was = before.find((y) => y.member === x.member)!;
    if (was.lane !== gone) assert.equal(x.start.getTime(), was.start.getTime(), `${x.member} stays`);
  }
});

test('plan: a window across midnight ends the next day; durations come from history where there is one', () => {
  const g = group({ window: parseWindow('23:00-03:00')!, members: ['a', 'b', 'c'], maxConcurrent: 1, spread: 'packed' });
  const p = backupPlan(g, '2026-12-07', TZ, new Map([['b', 3600]]));
  assert.deepEqual(p.map((x) => hhmm(x.start)), ['23:00', hhmm(p[1]!.start), hhmm(p[2]!.start)]);
  assert.equal(p.at(-1)!.end.toISOString() <= localTime('2026-12-08', 180, TZ).toISOString(), true);
  assert.equal(p.find((x) => x.member === 'b')!.durationSeconds, 3600);
  assert.equal(p.find((x) => x.member === 'b')!.durationFrom, 'history');
  assert.equal(p.find((x) => x.member === 'a')!.durationFrom, 'expected');
  assert.equal(durationFromHistory([100, 900, 300]), 900);
  assert.equal(durationFromHistory([]), null);
  assert.equal(durationFromHistory([9999, 1, 1, 1, 1, 1, 1, 1]), 1, 'the last seven jobs only');
});

test('plan: a group that cannot fit is an error naming the group', () => {
  assert.throws(() => backupPlan(group({ members: ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q'] }), '2026-12-07', TZ), (e: Error & { code?: string }) => e.code === 'E_PLAN_FULL' && /group "hv-a" does not fit its window 01:00-05:00: 17 member\(s\) need 510 min at 2 at a time/.test(e.message));
  assert.throws(() => backupPlan(group({ members: ['a'] }), '2026-12-07', TZ, new Map([['a', 5 * 3600]])), /one alone needs 300 min/);
});

test('plan: a VM powered off at night moves its backup to its next powered-on time; on a holiday to the next working day', () => {
  const g = group({ members: ['a', 'office-vm/juki'], power: new Map([['office-vm', [{ days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: 8 * 60, to: 20 * 60 }]]]), holidays: ['2026-12-29'] });
  const mon = backupPlan(g, '2026-12-07', TZ);
  const vm = mon.find((x) => x.member === 'office-vm/juki')!;
  assert.equal(hhmm(vm.start), '08:00');
  assert.match(vm.moved!, /powered off during its slot/);
  assert.equal(mon.find((x) => x.member === 'a')!.moved, undefined);
  const holiday = backupPlan(g, '2026-12-29', TZ).find((x) => x.member === 'office-vm/juki')!;
  assert.equal(holiday.start.toISOString(), localTime('2026-12-30', 8 * 60, TZ).toISOString(), 'the next working day at 08:00');
  assert.match(holiday.moved!, /holiday/);
  const sat = backupPlan(g, '2026-12-12', TZ).find((x) => x.member === 'office-vm/juki')!;
  assert.equal(sat.start.toISOString(), localTime('2026-12-14', 8 * 60, TZ).toISOString(), 'Saturday: Monday morning');
  // a VM on from Sunday 22:00 to Monday 06:00 keeps its Monday 01:00 slot
  const allNight = group({ members: ['vm'], power: new Map([['vm', [{ days: ['sun'], from: 22 * 60, to: 6 * 60 }]]]) });
  assert.equal(backupPlan(allNight, '2026-12-07', TZ)[0]!.moved, undefined);
  assert.equal(hhmm(backupPlan(allNight, '2026-12-07', TZ)[0]!.start), '01:00');
  assert.equal(poweredOn([{ days: ['mon'], from: 22 * 60, to: 6 * 60 }], [], '2026-12-07', TZ, 1).map((iv) => hhmm(iv.start) + '-' + hhmm(iv.end)).join(','), '22:00-06:00');
});

test('the groups module is chosen from the config and holds its groups; the none module has none', () => {
  const cfg = configSchema.parse({ timezone: TZ, modules: { virtualization: { type: 'groups', groups: { 'hv-a': { window: '01:00-05:00', maxConcurrent: 2, members: ['juki-db1/juki', 'zei-db1'], power: { 'zei-db1': [{ from: '07:00', to: '22:00' }] } } }, holidays: ['2026-12-31'] } } });
  const v = moduleOf(cfg, 'virtualization');
  assert.equal(v.groups.length, 1);
  assert.equal(v.groups[0]!.expectedSeconds, 1800);
  assert.deepEqual(v.groups[0]!.power!.get('zei-db1'), [{ days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: 420, to: 1320 }]);
  assert.deepEqual(moduleOf(configSchema.parse({}), 'virtualization').groups, []);
  const bad = configSchema.safeParse({ modules: { virtualization: { type: 'groups', groups: { g: { window: '25:00-01:00', members: ['x'] } } } } });
  assert.equal(bad.success, false);
  assert.match(JSON.stringify(bad.error!.issues), /a window like/);
});

test('kura plan prints the plan (--json: one array of { group, member, start, end }); a group that cannot fit exits 78 naming it', (t) => {
  const dir = tempDir(t);
  const cfg = path.join(dir, 'kura.yaml');
  const write = (members: string[]) =>
    writeFileSync(cfg, `timezone: ${TZ}\nmodules:\n  virtualization:\n    type: groups\n    groups:\n      hv-a:\n        window: "01:00-02:00"\n        maxConcurrent: 2\n        expectedDuration: 20m\n        members: [${members.join(', ')}]\n`);
  write(['db1/juki', 'db2', 'db3', 'db4']);
  const rows = kuraJson<Array<{ group: string; member: string; start: string; end: string }>>(['plan', '--date', '2026-12-07'], { env: { KURA_CONFIG: cfg } });
  assert.deepEqual(rows.map((r) => r.member).sort(), ['db1/juki', 'db2', 'db3', 'db4']);
  for (const r of rows) {
    assert.equal(r.group, 'hv-a');
    assert.ok(r.start >= '2026-12-06T16:00:00.000Z' && r.end <= '2026-12-06T17:00:00.000Z', `${r.member} inside 01:00-02:00 JST`);
  }
  assert.match(kuraOk(['plan', '--date', '2026-12-07'], { env: { KURA_CONFIG: cfg } }).out, /GROUP\s+MEMBER\s+LANE\s+START/);
  write(['a', 'b', 'c', 'd', 'e', 'f', 'g']);
  const full = kura(['plan', '--date', '2026-12-07'], { env: { KURA_CONFIG: cfg } });
  assert.equal(full.status, 78);
  assert.match(full.stderr, /E_PLAN_FULL: virtualization group "hv-a" does not fit its window 01:00-02:00/);
});
