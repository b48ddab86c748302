import { test } from 'node:test';
import assert from 'node:assert/strict';
import { endpointOrder, judgeLease, leaseTrusted, placementOrder, shouldTake, takeoverNeedsRebuild, type LeaseObservation, type LeaseVerdict } from '../src/vault/nodes/policy.js';
import { configSchema } from '../src/config/schema.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { mergeAuditLines, parseSegmentKey, segmentName, segmentsToRead, shipBackoffMs, shipDue } from '../src/vault/nodes/audit-segments.js';
import { AuditShipper } from '../src/vault/nodes/audit-ship.js';
import { footprintFresh } from '../src/vault/nodes/store-usage.js';
import { AuditLog } from '../src/vault/audit.js';
import { waitFor } from './support/proc.js';
import { sinceOf } from '../src/cli/vault-audit.js';
import { KuraError } from '../src/errors.js';

const lease = (node: string | null, lastModifiedMs: number, storeNowMs: number | null, o: { ttlMs?: number; lastHolder?: string; etag?: string } = {}): LeaseObservation => ({
  record: { tenant: 't', node, counter: 7, ttlMs: o.ttlMs ?? 5000, lastHolder: o.lastHolder ?? node, writtenAt: '2026-12-05T00:00:00Z' },
  etag: o.etag ?? 'e1',
  lastModifiedMs,
  storeNowMs,
});

test('judgeLease: expiry is judged by the store\'s clock (Last-Modified vs Date), never the reader\'s', () => {
  const T = 1_800_000_000_000;
  const table: Array<[string, LeaseObservation | null, LeaseVerdict['kind']]> = [
    ['no lease object', null, 'absent'],
    ['released by its holder', lease(null, T, T + 1, { lastHolder: 'a' }), 'released'],
    ['my own lease, however old', lease('me', T, T + 3_600_000), 'mine'],
    ['renewed 1 s ago (store clock)', lease('a', T, T + 1000), 'live'],
    ['exactly the TTL: still live (one second of resolution is added)', lease('a', T, T + 5000), 'live'],
    ['TTL + resolution - 1 ms', lease('a', T, T + 5999), 'live'],
    ['TTL + resolution', lease('a', T, T + 6000), 'expired'],
    ['an hour old', lease('a', T, T + 3_600_000), 'expired'],
    ['store Date behind Last-Modified (two gateways): live', lease('a', T, T - 2000), 'live'],
    ['a longer TTL of the holder counts, not the reader\'s', lease('a', T, T + 9000, { ttlMs: 30_000 }), 'live'],
  ];
  for (const [what, obs, want] of table) assert.equal(judgeLease(obs, 'me').kind, want, what);
});

test('judgeLease: without a Date from the store, the same ETag must be seen unchanged for the TTL on the reader\'s monotonic clock', () => {
  const obs = lease('a', 0, null, { etag: 'e1' });
  const table: Array<[string, { etag: string; sinceMono: number } | null, number, LeaseVerdict['kind']]> = [
    ['never seen before', null, 100, 'live'],
    ['seen 2 s ago', { etag: 'e1', sinceMono: 1000 }, 3000, 'live'],
    ['seen 6 s ago', { etag: 'e1', sinceMono: 1000 }, 7000, 'expired'],
    ['another ETag seen 6 s ago (renewed since)', { etag: 'e0', sinceMono: 1000 }, 7000, 'live'],
  ];
  for (const [what, seen, now, want] of table) assert.equal(judgeLease(obs, 'me', seen, now).kind, want, what);
});

test('leaseTrusted: the holder trusts its lease until the last renewal it sent plus the TTL, less the margin of the act', () => {
  const table: Array<[number | null, number, number, number, boolean]> = [
    [null, 5000, 0, 0, false],
    [1000, 5000, 5999, 0, true],
    [1000, 5000, 6000, 0, false],
    [1000, 5000, 4749, 1250, true],
    [1000, 5000, 4750, 1250, false],
    [1000, 5000, 60_000, 0, false], // resumed from SIGSTOP long after
  ];
  for (const [sent, ttl, now, margin, want] of table) assert.equal(leaseTrusted(sent, ttl, now, margin), want, `${sent}+${ttl} at ${now} margin ${margin}`);
});

test('takeoverNeedsRebuild: a catalogue is rebuilt whenever another node may have written since', () => {
  const table: Array<[LeaseVerdict, boolean]> = [
    [{ kind: 'absent' }, false],
    [{ kind: 'mine', ageMs: 10 }, false],
    [{ kind: 'released', lastHolder: 'me' }, false],
    [{ kind: 'released', lastHolder: 'b' }, true],
    [{ kind: 'released', lastHolder: null }, true],
    [{ kind: 'expired', holder: 'b', ageMs: 9000 }, true],
  ];
  for (const [v, want] of table) assert.equal(takeoverNeedsRebuild(v, 'me'), want, JSON.stringify(v));
});

test('placementOrder: rendezvous hashing is deterministic, spreads tenants, and removing a node moves only its tenants', () => {
  assert.deepEqual(placementOrder('city-a', ['n1', 'n2', 'n3']), placementOrder('city-a', ['n3', 'n1', 'n2', 'n1']));
  // pinned values: every node and relay computes the same order
  const table: Array<[string, string[]]> = [
    ['city-a', placementOrder('city-a', ['n1', 'n2', 'n3'])],
    ['city-b', placementOrder('city-b', ['n1', 'n2', 'n3'])],
  ];
  for (const [t, order] of table) {
    assert.equal(order.length, 3);
    assert.deepEqual([...order].sort(), ['n1', 'n2', 'n3'], t);
  }
  const tenants = Array.from({ length: 300 }, (_, i) => `tenant-${i}`);
  const first = new Map<string, number>();
  for (const t of tenants) {
    const n = placementOrder(t, ['n1', 'n2', 'n3'])[0]!;
    first.set(n, (first.get(n) ?? 0) + 1);
  }
  for (const n of ['n1', 'n2', 'n3']) assert.ok((first.get(n) ?? 0) > 60, `node ${n} is first for ${first.get(n)} of 300 tenants`);
  for (const t of tenants) {
    const before = placementOrder(t, ['n1', 'n2', 'n3']);
    const after = placementOrder(t, ['n1', 'n3']);
    if (before[0] !== 'n2') assert.equal(after[0], before[0], `${t} stays where it was when n2 goes`);
    else assert.equal(after[0], before[1], `${t} goes to its second choice`);
  }
});

test('endpointOrder: a route whose endpoints all name their node is tried in the tenant\'s placement order; otherwise as configured', () => {
  const eps = [{ host: 'a', node: 'node-a' }, { host: 'b', node: 'node-b' }];
  const table: Array<[string, Array<{ host: string; node?: string }>, string[]]> = [
    ['city-a', eps, ['a', 'b']], // city-a prefers node-a
    ['city-b', eps, ['b', 'a']], // city-b prefers node-b
    ['city-b', [{ host: 'a', node: 'node-a' }, { host: 'b' }], ['a', 'b']], // one unnamed: as configured
    ['city-b', [{ host: 'b', node: 'node-b' }], ['b']],
  ];
  for (const [tenant, list, want] of table) assert.deepEqual(endpointOrder(tenant, list).map((e) => e.host), want, `${tenant} over ${JSON.stringify(list)}`);
  assert.deepEqual(placementOrder('city-a', ['node-a', 'node-b']), ['node-a', 'node-b']);
  assert.deepEqual(placementOrder('city-b', ['node-a', 'node-b']), ['node-b', 'node-a']);
});

test('shouldTake: only the first live node of a free tenant\'s order takes it; a node back from the dead takes nothing live', () => {
  const order = placementOrder('city-a', ['n1', 'n2']);
  assert.equal(shouldTake('city-a', order[0]!, [order[1]!]), true);
  assert.equal(shouldTake('city-a', order[1]!, [order[0]!]), false);
  assert.equal(shouldTake('city-a', order[1]!, []), true, 'alone, a node takes every free tenant');
});

test('vault.node in the config: an id and a leaseTtl between 2s and 10m', () => {
  const base = { tenant: 'x', repository: { path: '/tmp/r' } };
  const vault = (node: object) => ({ ...base, vault: { root: '/tmp/v', node } });
  assert.equal(configSchema.safeParse(vault({ id: 'vault-1' })).success, true);
  assert.equal((configSchema.parse(vault({ id: 'vault-1' })) as { vault: { node: { leaseTtl: string } } }).vault.node.leaseTtl, '30s');
  for (const bad of [{ id: 'vault-1', leaseTtl: '1s' }, { id: 'vault-1', leaseTtl: '11m' }, { id: 'a b' }, {}]) {
    const r = configSchema.safeParse(vault(bad));
    assert.equal(r.success, false, JSON.stringify(bad));
  }
});

test('audit segments: named by the time of their first line, the file and the offset, so they sort by time and a range shipped again keeps its name', () => {
  const table: Array<[string, string, number, number, string]> = [
    ['a first segment', '2026-12-05T19:03:38.123Z', 0x2a, 0, '20261205T190338.123Z-2a-000000000000.jsonl'],
    ['further on in the file', '2026-12-05T19:03:40.000Z', 0x2a, 4096, '20261205T190340.000Z-2a-000000001000.jsonl'],
    ['an unreadable time sorts first', 'torn', 1, 0, '19700101T000000.000Z-1-000000000000.jsonl'],
  ];
  for (const [what, time, ino, offset, want] of table) {
    assert.equal(segmentName(time, ino, offset), want, what);
    const back = parseSegmentKey(`vault-1/${want}`);
    assert.equal(back?.node, 'vault-1', what);
  }
  assert.equal(parseSegmentKey('vault-1/notes.txt'), null);
  assert.equal(parseSegmentKey('20261205T190338.123Z-2a-0.jsonl'), null, 'no node folder');
  const names = ['2026-12-05T19:00:00.000Z', '2026-12-05T09:00:00.000Z', '2026-12-05T19:00:00.001Z', '2025-01-01T00:00:00.000Z'].map((t, i) => segmentName(t, 1, i));
  assert.deepEqual([...names].sort().map((n) => parseSegmentKey(`n/${n}`)!.first), ['2025-01-01T00:00:00.000Z', '2026-12-05T09:00:00.000Z', '2026-12-05T19:00:00.000Z', '2026-12-05T19:00:00.001Z']);
});

test('segmentsToRead: --since keeps, per node, the segments starting after it and the one before (its lines run on); --node keeps one node', () => {
  const k = (node: string, t: string, off: number) => `${node}/${segmentName(t, 7, off)}`;
  const keys = [k('a', '2026-12-05T10:00:00.000Z', 0), k('a', '2026-12-05T11:00:00.000Z', 100), k('a', '2026-12-05T12:00:00.000Z', 200), k('b', '2026-12-05T09:00:00.000Z', 0), 'a/garbage.txt'];
  const firsts = (refs: ReturnType<typeof segmentsToRead>) => refs.map((r) => `${r.node}@${r.first.slice(11, 13)}`).sort();
  const table: Array<[string, string | null, string | null, string[]]> = [
    ['everything', null, null, ['a@10', 'a@11', 'a@12', 'b@09']],
    ['since 11:30: the 11:00 segment may hold lines after it', '2026-12-05T11:30:00Z', null, ['a@11', 'a@12', 'b@09']],
    ['since exactly 11:00', '2026-12-05T11:00:00Z', null, ['a@10', 'a@11', 'a@12', 'b@09']],
    ['since after everything: the last of each node', '2026-12-06T00:00:00Z', null, ['a@12', 'b@09']],
    ['one node', null, 'b', ['b@09']],
  ];
  for (const [what, since, node, want] of table) assert.deepEqual(firsts(segmentsToRead(keys, since, node)), want, what);
});

test('mergeAuditLines: several nodes\' lines in time order (ties by node, then as written), filtered by time and tenant; torn lines counted, not shown', () => {
  const line = (time: string, event: string, tenant = 't1') => JSON.stringify({ time, event, outcome: 'ok', tenant });
  const segs = [
    { node: 'b', body: `${line('2026-12-05T10:00:02.000Z', 'b1')}\n${line('2026-12-05T10:00:01.000Z', 'b0-late-clock', 't2')}\n` },
    { node: 'a', body: `${line('2026-12-05T10:00:01.000Z', 'a1')}\n{"time":"2026-12-05T10:0\n${line('2026-12-05T10:00:01.000Z', 'a2')}\n${line('2026-12-05T10:00:03.000Z', 'a3')}\n\n` },
  ];
  const all = mergeAuditLines(segs);
  assert.deepEqual(all.lines.map((l) => `${l.node}:${String(l.event)}`), ['a:a1', 'a:a2', 'b:b0-late-clock', 'b:b1', 'a:a3']);
  assert.equal(all.unreadable, 1);
  assert.deepEqual(mergeAuditLines(segs, { since: '2026-12-05T10:00:02Z' }).lines.map((l) => l.event), ['b1', 'a3']);
  assert.deepEqual(mergeAuditLines(segs, { tenant: 't2' }).lines.map((l) => l.event), ['b0-late-clock']);
});

test('shipDue and shipBackoffMs: refusals at once, ordinary lines by count or age; a failing bucket is retried after a doubling pause of at most a minute', () => {
  const base = { urgent: false, waitingBytes: 100, waitingLines: 3, oldestWaitMs: 1000, lines: 500, everyMs: 5000 };
  const table: Array<[string, Partial<typeof base>, boolean]> = [
    ['ordinary lines, young and few: wait', {}, false],
    ['a refusal: now', { urgent: true }, true],
    ['nothing waiting, even urgent: nothing', { urgent: true, waitingBytes: 0 }, false],
    ['as many lines as the batch', { waitingLines: 500 }, true],
    ['the oldest waited the interval', { oldestWaitMs: 5000 }, true],
    ['lines written by another process (not counted) age too', { waitingLines: 0, oldestWaitMs: 6000 }, true],
  ];
  for (const [what, over, want] of table) assert.equal(shipDue({ ...base, ...over }), want, what);
  assert.deepEqual([0, 1, 2, 3, 6, 7, 50].map(shipBackoffMs), [0, 1000, 2000, 4000, 32_000, 60_000, 60_000]);
});

test('footprintFresh: a tenant\'s listing serves for its maximum age, then the store is listed again; a clock that went back lists again', () => {
  const table: Array<[string, number | null, number, number, boolean]> = [
    ['never listed', null, 1000, 30_000, false],
    ['just listed', 1000, 1000, 30_000, true],
    ['29.999 s old', 1000, 30_999, 30_000, true],
    ['30 s old', 1000, 31_000, 30_000, false],
    ['the clock went back', 5000, 1000, 30_000, false],
    ['no cache (kura vault usage on a host)', 1000, 1000, 0, false],
  ];
  for (const [what, listed, now, max, want] of table) assert.equal(footprintFresh(listed, now, max), want, what);
});

test('AuditShipper: a bucket that fails keeps the lines on disk and ships them later, once; a new shipper (a restart) ships what the last one had not, from the recorded offset', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kura-ship-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const audit = new AuditLog(path.join(dir, 'audit.jsonl'));
  t.after(() => audit.close());
  const put: Array<{ key: string; body: string }> = [];
  let down = true;
  const errors: string[] = [];
  const make = () =>
    new AuditShipper({
      file: audit.file,
      stateFile: path.join(dir, 'audit-shipped.json'),
      node: 'n1',
      sink: { put: async (key, body) => void (down ? (() => { throw new Error('connect ECONNREFUSED') })() : put.push({ key, body: body.toString() })) },
      everyMs: 3_600_000,
      lines: 1000,
      pollMs: 20,
      log: { info: () => {}, error: (_o, m) => void errors.push(m) },
    });
  let shipper = make();
  audit.subscribe((e) => shipper.observe(e));
  shipper.start();
  audit.write({ event: 'session-start', outcome: 'ok', tenant: 't' });
  audit.write({ event: 'auth', outcome: 'refused', code: 'E_AUTH_DENIED' });
  await waitFor('the failure to be logged', () => errors.length > 0, 5000, 10);
  assert.match(errors[0]!, /not shipped to the store .*ECONNREFUSED.*next try in 1 s/);
  assert.equal(put.length, 0);
  down = false;
  await waitFor('the retry to ship', () => put.length > 0, 5000, 20);
  assert.equal(put.length, 1, 'one segment');
  assert.match(put[0]!.key, /^n1\/\d{8}T\d{6}\.\d{3}Z-[0-9a-f]+-000000000000\.jsonl$/);
  assert.deepEqual(put[0]!.body.trim().split('\n').map((l) => (JSON.parse(l) as { event: string }).event), ['session-start', 'auth']);
  // an ordinary line waits (every: 1h); the process "dies" (no stop): a new shipper ships it at start
  audit.write({ event: 'session-end', outcome: 'ok', tenant: 't' });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(put.length, 1, 'batched');
  shipper = make();
  shipper.start();
  await waitFor('the next start to ship it', () => put.length === 2, 5000, 20);
  assert.deepEqual(put[1]!.body.trim().split('\n').map((l) => (JSON.parse(l) as { event: string }).event), ['session-end'], 'only what was not shipped');
  assert.notEqual(put[1]!.key, put[0]!.key);
  await shipper.stop();
});

test('kura vault audit --since: an ISO time, a date, or a duration back from now; anything else is E_USAGE', () => {
  const now = Date.parse('2026-12-05T18:00:00Z');
  const table: Array<[string | undefined, string | undefined]> = [
    [undefined, undefined],
    ['30m', '2026-12-05T17:30:00.000Z'],
    ['2h', '2026-12-05T16:00:00.000Z'],
    ['7d', '2026-11-28T18:00:00.000Z'],
    ['45s', '2026-12-05T17:59:15.000Z'],
    ['2026-12-05T12:00:00Z', '2026-12-05T12:00:00.000Z'],
    ['2026-12-04', '2026-12-04T00:00:00.000Z'],
  ];
  for (const [v, want] of table) assert.equal(sinceOf(v, now), want, String(v));
  for (const bad of ['yesterday', '3w', '']) assert.throws(() => sinceOf(bad, now), (e: unknown) => e instanceof KuraError && e.code === 'E_USAGE', bad);
});
