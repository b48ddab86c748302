import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clockOffset, clockSkewed, forwardHolds, nextTurnIn, routeCarries, routesForSource, uncarriedRoutes } from '../src/relay/route-policy.js';
import { movedSigned, signMoved, verifyMoved } from '../src/relay/moved.js';
import { generateHostKey } from '../src/vault/hostkey.js';
import { hopReport } from '../src/status/hops.js';
import { statusReport } from '../src/status/status.js';
import { KuraError } from '../src/errors.js';
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';

const routes = { 'peer-dc': {}, office: { sources: ['juki'] }, archive: { sources: ['juki', 'zeimu'] } };

test('which route carries which source', () => {
  const table: Array<[string, string[], string[]]> = [
    // source, routes it names, routes its snapshots are queued for
    ['juki', ['peer-dc'], ['peer-dc', 'office', 'archive']],
    ['zeimu', ['peer-dc'], ['peer-dc', 'archive']],
    ['kokuho', ['peer-dc'], ['peer-dc']],
    ['kokuho', ['peer-dc', 'office'], ['peer-dc']], // the office does not carry it, whatever the source says
    ['kokuho', [], []],
    ['juki', [], ['office', 'archive']], // a route's sources add it without the source naming the route
  ];
  for (const [source, named, want] of table) assert.deepEqual(routesForSource(source, named, routes), want, `${source} naming ${named.join(',')}`);
  assert.equal(routeCarries({}, 'anything'), true);
  assert.equal(routeCarries({ sources: [] }, 'juki'), false);
  assert.deepEqual(uncarriedRoutes('kokuho', ['peer-dc', 'office', 'unknown'], routes), ['office']);
});

test('when a route is due', () => {
  const now = 1_000_000;
  const table: Array<[string, Parameters<typeof nextTurnIn>[0], number]> = [
    ['no frequency of its own: the poll interval', { pollMs: 30_000, backoffMs: 0, now }, 30_000],
    ['every, first round', { everyMs: 6 * 3600_000, pollMs: 30_000, backoffMs: 0, now }, 0],
    ['every, counted from the last round\'s start', { everyMs: 10_000, pollMs: 30_000, lastStartAt: now - 4_000, backoffMs: 0, now }, 6_000],
    ['every, a round that took longer than the period', { everyMs: 10_000, pollMs: 30_000, lastStartAt: now - 15_000, backoffMs: 0, now }, 0],
    ['schedule: until its next time', { nextScheduledAt: now + 42_000, everyMs: 10_000, pollMs: 30_000, backoffMs: 0, now }, 42_000],
    ['schedule in the past (a slow round): at once', { nextScheduledAt: now - 1, pollMs: 30_000, backoffMs: 0, now }, 0],
    ['a fault: the back-off, whatever the frequency', { everyMs: 6 * 3600_000, pollMs: 30_000, lastStartAt: now, backoffMs: 5_000, now }, 5_000],
  ];
  for (const [what, input, want] of table) assert.equal(nextTurnIn(input), want, what);
});

test('what a forwarding vault keeps: every snapshot some route still has to send, with its routes', () => {
  const holds = forwardHolds([
    { snapshot: 's1', route: 'dc-b' },
    { snapshot: 's1', route: 'dc-c' },
    { snapshot: 's2', route: 'dc-b' },
    { snapshot: 's2', route: 'dc-b' },
  ]);
  assert.deepEqual([...holds], [['s1', ['dc-b', 'dc-c']], ['s2', ['dc-b']]]);
  assert.equal(forwardHolds([]).size, 0);
});

test('clock offset from a HELLO round trip, and when it is a skew', () => {
  const table: Array<[number, number, number, number, number]> = [
    // t0, t1, peer time, offset, rtt
    [1000, 1000, 1000, 0, 0],
    [1000, 1200, 1100, 0, 200],
    [1000, 1200, 11_100, 10_000, 200],
    [1000, 1100, 50, -1000, 100],
  ];
  for (const [t0, t1, peer, offset, rtt] of table) assert.deepEqual(clockOffset(t0, t1, peer), { offsetMs: offset, rttMs: rtt });
  assert.equal(clockSkewed(10_000, 200, 2000), true);
  assert.equal(clockSkewed(-2500, 0, 2000), true);
  assert.equal(clockSkewed(2100, 400, 2000), false, 'within the round trip\'s uncertainty');
  assert.equal(clockSkewed(1999, 0, 2000), false);
});

test('a MOVED answer is believed only with a valid signature of the pinned host key', () => {
  const require = createRequire(import.meta.url);
  const ssh2 = require('ssh2') as typeof import('ssh2');
  const key = generateHostKey();
  const pub = (ssh2.utils.parseKey(key) as import('ssh2').ParsedKey).getPublicSSH();
  const pin = 'SHA256:' + createHash('sha256').update(pub).digest('base64').replace(/=+$/, '');
  const base = { tenant: 'city-a', route: 'dc-b', endpoints: [{ host: '127.0.0.1', port: 2222, hostKeySha256: 'SHA256:x' }], issued: '2026-12-05T00:00:00.000Z' };
  const signed = signMoved(base, key);
  assert.deepEqual(verifyMoved(signed, pin, 'a'), { signedBy: pin });
  const refused = (a: Parameters<typeof verifyMoved>[0], p: string | undefined) => assert.throws(() => verifyMoved(a, p, 'a'), (e: unknown) => e instanceof KuraError && e.code === 'E_HOST_KEY');
  refused(base, pin); // unsigned
  refused(signed, undefined); // nothing pinned to check against
  refused(signMoved(base, generateHostKey()), pin); // another key
  refused({ ...signMoved(base, generateHostKey()), hostKey: signed.hostKey! }, pin); // forged: the pinned key named, another's signature
  refused({ ...signed, endpoints: [{ host: 'evil.example', port: 22 }] }, pin); // altered after signing
  assert.notDeepEqual(movedSigned(base), movedSigned({ ...base, tenant: 'city-b' }));
});

test('exposure hop by hop, and clock warnings in status', () => {
  const now = new Date('2026-12-05T12:00:00Z');
  const hops = hopReport(
    'peer-dc',
    { state: 'idle', lastError: null, clockOffsetMs: 12, deliveries: [{ route: 'peer-dc', source: 'juki', newest_sent: '2026-12-05T02:00:00Z', pending: 0 }, { route: 'office', source: 'juki', newest_sent: null, pending: 1 }] },
    { tenant: 'city-a', time: now.toISOString(), newest: [], routes: [{ route: 'dc-b', state: 'waiting-for-line', lastError: 'E_LINK_DOWN: x', nextAttempt: null, clockOffsetMs: null, sources: [{ source: 'juki', newestSent: '2026-12-03T02:00:00Z', pending: 2 }] }] },
    now,
  );
  assert.deepEqual(hops.map((h) => [h.hop, h.from, h.to, h.sources.map((s) => [s.source, s.exposureSeconds, s.pending])]), [
    [1, 'this host', 'peer-dc', [['juki', 10 * 3600, 0]]],
    [2, 'peer-dc', 'dc-b', [['juki', 58 * 3600, 2]]],
  ]);
  const r = statusReport(
    { routes: [], routeStates: [], queued: [], snapshots: [], sources: [], delivered: new Map(), defaultRpoSeconds: 86400, clocks: [{ hop: 'peer-dc', peer: 'v:1', offsetMs: 10_000, rttMs: 3, at: now.toISOString() }, { hop: 'office', peer: 'o:1', offsetMs: 300, rttMs: 3, at: now.toISOString() }], maxClockSkewMs: 2000 },
    now,
  );
  assert.deepEqual(r.clocks.map((c) => [c.hop, c.skewed]), [['peer-dc', true], ['office', false]]);
  assert.equal(r.warnings.length, 1);
  assert.equal(r.ok, true, 'a skew warns; it does not fail status');
});
