import { test } from 'node:test';
import assert from 'node:assert/strict';
import { endpointOrder, judgeLease, leaseTrusted, placementOrder, shouldTake, takeoverNeedsRebuild, type LeaseObservation, type LeaseVerdict } from '../src/vault/nodes/policy.js';
import { configSchema } from '../src/config/schema.js';

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
