import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deliveryKey, exposures, worstOf, type ExposureInput } from '../src/status/exposure.js';

const now = new Date('2026-11-23T12:00:00Z');
const H = 3600;
const D = 86400;
const ago = (s: number) => new Date(now.getTime() - s * 1000).toISOString();

interface Case {
  name: string;
  input: ExposureInput;
  /** [source, route, exposureSeconds, overTarget, since] in output order */
  want: Array<[string, string | null, number | null, boolean, string]>;
}

const cases: Case[] = [
  {
    name: 'a source whose last backup was 10 days ago and whose queue is empty is over target (cron stopped, VM gone)',
    input: { sources: [{ source: 'juki', tenant: 't', rpoSeconds: D, routes: ['dc2'] }], spans: new Map([['juki', { first: ago(40 * D), last: ago(10 * D) }]]), delivered: new Map([[deliveryKey('dc2', 'juki'), ago(10 * D)]]) },
    want: [['juki', 'dc2', 10 * D, true, 'delivered']],
  },
  {
    name: 'a 2-hour-old snapshot of a 1-hour source queued behind a 23-hour-old one of a 1-day source',
    input: {
      sources: [
        { source: 'juki', tenant: 't', rpoSeconds: D, routes: ['dc2'] },
        { source: 'zei', tenant: 't', rpoSeconds: H, routes: ['dc2'] },
      ],
      spans: new Map([
        ['juki', { first: ago(30 * D), last: ago(23 * H) }],
        ['zei', { first: ago(30 * D), last: ago(2 * H) }],
      ]),
      delivered: new Map([
        [deliveryKey('dc2', 'juki'), ago(47 * H + 1800)],
        [deliveryKey('dc2', 'zei'), ago(3 * H)],
      ]),
      pending: new Map([
        [deliveryKey('dc2', 'juki'), 1],
        [deliveryKey('dc2', 'zei'), 1],
      ]),
    },
    want: [
      ['juki', 'dc2', 47 * H + 1800, true, 'delivered'],
      ['zei', 'dc2', 3 * H, true, 'delivered'],
    ],
  },
  {
    name: 'several sources with different targets on one route: each judged by its own',
    input: {
      sources: [
        { source: 'a', tenant: 't', rpoSeconds: H, routes: ['dc2'] },
        { source: 'b', tenant: 't', rpoSeconds: D, routes: ['dc2'] },
        { source: 'c', tenant: 't', rpoSeconds: 7 * D, routes: ['dc2'] },
      ],
      spans: new Map([
        ['a', { first: ago(9 * D), last: ago(600) }],
        ['b', { first: ago(9 * D), last: ago(H) }],
        ['c', { first: ago(9 * D), last: ago(2 * D) }],
      ]),
      delivered: new Map([
        [deliveryKey('dc2', 'a'), ago(600)],
        [deliveryKey('dc2', 'b'), ago(25 * H)],
        [deliveryKey('dc2', 'c'), ago(2 * D)],
      ]),
    },
    want: [
      ['a', 'dc2', 600, false, 'delivered'],
      ['b', 'dc2', 25 * H, true, 'delivered'],
      ['c', 'dc2', 2 * D, false, 'delivered'],
    ],
  },
  {
    name: 'a source never sent runs from its first snapshot; one with no snapshot at all has nothing to measure',
    input: {
      sources: [
        { source: 'new', tenant: 't', rpoSeconds: D, routes: ['dc2'] },
        { source: 'unborn', tenant: 't', rpoSeconds: D, routes: ['dc2'] },
      ],
      spans: new Map([['new', { first: ago(30 * H), last: ago(H) }]]),
      delivered: new Map(),
      pending: new Map([[deliveryKey('dc2', 'new'), 2]]),
    },
    want: [
      ['new', 'dc2', 30 * H, true, 'first-snapshot'],
      ['unborn', 'dc2', null, false, 'no-snapshot'],
    ],
  },
  {
    name: 'a paused route stays exposed: pausing hides nothing',
    input: {
      sources: [{ source: 'juki', tenant: 't', rpoSeconds: H, routes: ['dc2', 'office'] }],
      spans: new Map([['juki', { first: ago(D), last: ago(60) }]]),
      delivered: new Map([
        [deliveryKey('dc2', 'juki'), ago(60)],
        [deliveryKey('office', 'juki'), ago(5 * H)],
      ]),
      paused: new Set(['office']),
    },
    want: [
      ['juki', 'dc2', 60, false, 'delivered'],
      ['juki', 'office', 5 * H, true, 'delivered'],
    ],
  },
  {
    name: 'a source without routes is judged by its newest on-site snapshot',
    input: { sources: [{ source: 'local', tenant: 't', rpoSeconds: D, routes: [] }], spans: new Map([['local', { first: ago(9 * D), last: ago(3 * D) }]]), delivered: new Map() },
    want: [['local', null, 3 * D, true, 'on-site']],
  },
  {
    name: 'exactly at the target is not over it',
    input: { sources: [{ source: 'x', tenant: 't', rpoSeconds: H, routes: ['dc2'] }], spans: new Map([['x', { first: ago(H), last: ago(H) }]]), delivered: new Map([[deliveryKey('dc2', 'x'), ago(H)]]) },
    want: [['x', 'dc2', H, false, 'delivered']],
  },
];

for (const c of cases) {
  test(`exposure: ${c.name}`, () => {
    const got = exposures(c.input, now);
    assert.deepEqual(
      got.map((e) => [e.source, e.route, e.exposureSeconds, e.overTarget, e.since]),
      c.want,
    );
  });
}

test('exposure: the paused flag and queue counts travel with each row, and the worst row is the most overdue, not the oldest', () => {
  const c = cases.find((x) => x.name.startsWith('a paused route'))!;
  const got = exposures(c.input, now);
  assert.deepEqual(got.map((e) => e.paused), [false, true]);
  const several = exposures(cases.find((x) => x.name.startsWith('several sources'))!.input, now);
  assert.equal(worstOf(several)!.source, 'b', 'b is 1 h over its 1 d target; c is older but within its 7 d');
  const queued = exposures(cases.find((x) => x.name.startsWith('a source never sent'))!.input, now);
  assert.equal(queued[0]!.queued, 2);
  assert.equal(worstOf([]), null);
});
