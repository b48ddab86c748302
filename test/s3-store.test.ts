import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { openStore, prepareStore, type StorageSpec } from '../src/store/index.js';
import { S3Backend } from '../src/store/s3/index.js';
import { FsBackend } from '../src/store/fs/index.js';
import { probeConditionalPut } from '../src/store/probe.js';
import { withRetry, withAccounting, StoreCounters, renderStoreMetrics } from '../src/store/wrappers.js';
import type { StoreBackend } from '../src/store/backend.js';
import { spansOf } from '../src/store/spans.js';
import { KuraError } from '../src/errors.js';
import { rgwAvailable, rgwOrSkip, startRgw, type Rgw } from './support/rgw.js';
import { OverwritingProxy } from './support/s3proxy.js';

/**
 * The storage layer on both backends: the StoreBackend contract, the conditional-create probe,
 * retry and accounting wrappers. One RGW for the file.
 */
let rgw: Rgw | null = null;
let dir = '';

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'kura-s3store-'));
  if (rgwAvailable()) rgw = await startRgw(path.join(dir, 'ceph'));
});

after(async () => {
  await rgw?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function s3Spec(bucket: string, endpoint = rgw!.endpoint): StorageSpec {
  return { type: 's3', endpoint, bucket, prefix: 'kura/', region: 'us-east-1', forcePathStyle: true };
}

async function withEnv<T>(env: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
}

async function contract(store: StoreBackend): Promise<void> {
  const a = Buffer.from('first version of a');
  assert.equal(await store.putIfAbsent('snapshots/aa', a), true);
  assert.equal(await store.putIfAbsent('snapshots/aa', Buffer.from('second')), false, 'a create over an existing name is refused');
  assert.deepEqual(await store.get('snapshots/aa'), a, 'and the first bytes stay');
  assert.equal(await store.get('snapshots/none'), null);
  const pack = Buffer.alloc(3 << 20);
  for (let i = 0; i < pack.length; i++) pack[i] = (i * 7) & 0xff;
  await store.put('packs/ab/abcd', [pack.subarray(0, 1000), pack.subarray(1000)]);
  await store.put('packs/ab/abcd', pack); // the same content again: fine
  await store.sync();
  assert.deepEqual(await store.getRange('packs/ab/abcd', 10, 20), pack.subarray(10, 30));
  assert.deepEqual(await store.getRange('packs/ab/abcd', -16, 16), pack.subarray(pack.length - 16));
  const rs = await store.getRanges('packs/ab/abcd', [
    { offset: 2_900_000, length: 100 },
    { offset: 5, length: 3 },
    { offset: 6, length: 10 },
    { offset: pack.length - 4, length: 8 },
  ]);
  assert.deepEqual(rs, [pack.subarray(2_900_000, 2_900_100), pack.subarray(5, 8), pack.subarray(6, 16), pack.subarray(pack.length - 4)]);
  // read into a buffer of the caller's, back to back: the same bytes, the gaps between ranges
  // fetched together left out, a range past the end short; a buffer too small is no harm
  const wanted = [
    { offset: 600_000, length: 70_000 },
    { offset: 100_000, length: 50 },
    { offset: 100_010, length: 20 },
    { offset: 2_000_000, length: 300_000 },
    { offset: pack.length - 4, length: 8 },
  ];
  const expect = wanted.map((r) => pack.subarray(r.offset, Math.min(pack.length, r.offset + r.length)));
  const into = Buffer.alloc(wanted.reduce((n, r) => n + r.length, 0) + 5, 0xee);
  const inInto = await store.getRanges('packs/ab/abcd', wanted, into);
  assert.deepEqual(inInto, expect);
  let at = 0;
  inInto!.forEach((b, i) => {
    assert.ok(b.buffer === into.buffer && b.byteOffset === into.byteOffset + at, `range ${i} lies in the buffer at ${at}`);
    at += wanted[i]!.length;
  });
  assert.deepEqual(into.subarray(at), Buffer.alloc(5, 0xee), 'nothing written past the ranges');
  assert.deepEqual(await store.getRanges('packs/ab/abcd', wanted, Buffer.alloc(10)), expect);
  assert.equal(await store.getRanges('packs/ab/none', [{ offset: 0, length: 1 }]), null);
  assert.equal((await store.stat('packs/ab/abcd'))?.size, pack.length);
  assert.equal(await store.stat('packs/ab/none'), null);
  await store.replace('config', Buffer.from('one'));
  assert.equal((await store.getRange('config', 0, 3))?.toString(), 'one');
  await store.replace('config', Buffer.from('two'));
  assert.equal((await store.get('config'))?.toString(), 'two');
  assert.equal((await store.getRange('config', 0, 3))?.toString(), 'two', 'a range read after a replace reads the new object');
  const names: string[] = [];
  for await (const n of store.list('packs/')) names.push(n);
  assert.deepEqual(names, ['packs/ab/abcd']);
  const sized: Array<{ name: string; size: number }> = [];
  for await (const o of store.listWithSizes('packs/')) sized.push(o);
  assert.deepEqual(sized, [{ name: 'packs/ab/abcd', size: pack.length }]);
  await store.delete('packs/ab/abcd');
  await store.delete('packs/ab/abcd'); // absent: not an error
  assert.equal(await store.stat('packs/ab/abcd'), null);
  assert.equal(await store.getRange('packs/ab/abcd', 0, 4), null, 'a deleted object reads as absent');
}

test('an fs store keeps the StoreBackend contract', async () => {
  const store = openStore({ type: 'fs' }, { dir: path.join(dir, 'fs-contract'), scope: '' });
  await contract(store);
  assert.ok(store.local, 'fs offers local-disk abilities');
});

test('spansOf: ranges at most the gap apart, overlapping or not, are read as one span; the others alone', () => {
  const cases: Array<{ ranges: Array<[number, number]>; gap: number; max?: number; spans: Array<[number, number, number[]]>; why: string }> = [
    { ranges: [], gap: 10, spans: [], why: 'nothing to read' },
    { ranges: [[100, 10]], gap: 10, spans: [[100, 110, [0]]], why: 'one range' },
    { ranges: [[0, 10], [20, 5]], gap: 10, spans: [[0, 25, [0, 1]]], why: 'a gap of exactly the limit joins' },
    { ranges: [[0, 10], [21, 5]], gap: 10, spans: [[0, 10, [0]], [21, 26, [1]]], why: 'one byte more does not' },
    { ranges: [[50, 10], [0, 10], [12, 3]], gap: 5, spans: [[0, 15, [1, 2]], [50, 60, [0]]], why: 'in offset order, each range keeps its place' },
    { ranges: [[0, 100], [10, 5], [90, 30]], gap: 0, spans: [[0, 120, [0, 1, 2]]], why: 'ranges inside or over the span so far join it' },
    { ranges: [[0, 10], [15, 10], [30, 10]], gap: 10, max: 25, spans: [[0, 25, [0, 1]], [30, 40, [2]]], why: 'a span stops before it would pass the longest read' },
    { ranges: [[0, 50]], gap: 10, max: 25, spans: [[0, 50, [0]]], why: 'a range longer than that is read alone' },
  ];
  for (const c of cases) {
    const got = spansOf(c.ranges.map(([offset, length]) => ({ offset, length })), c.gap, c.max).map((sp) => [sp.start, sp.end, sp.members.map((m) => m.i)]);
    assert.deepEqual(got, c.spans, c.why);
  }
});

test('an fs store keeps read handles open between reads only for a moment, and never more than 64', async () => {
  const root = path.join(dir, 'fs-handles');
  const store = openStore({ type: 'fs' }, { dir: root, scope: '' });
  const openHere = () => readdirSync('/proc/self/fd').filter((fd) => { try { return readlinkSync(`/proc/self/fd/${fd}`).startsWith(root); } catch { return false; } }).length;
  const names = Array.from({ length: 80 }, (_, i) => `packs/${(i % 4).toString(16).padStart(2, '0')}/p${i}`);
  for (const n of names) await store.put(n, Buffer.from(n));
  for (const n of names) assert.equal((await store.getRange(n, 0, n.length))?.toString(), n);
  const held = openHere();
  assert.ok(held > 0 && held <= 64, `after reading 80 objects, ${held} handles are open`);
  for (let i = 0; i < 50 && openHere() > 0; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(openHere(), 0, 'unused for a moment, every handle is closed');
  // one read again opens again; closing the store closes it at once
  assert.equal((await store.getRange(names[0]!, 0, 4))?.toString(), names[0]!.slice(0, 4));
  assert.equal(openHere(), 1);
  store.close?.();
  for (let i = 0; i < 20 && openHere() > 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(openHere(), 0);
});

test('an fs store reads ranges on the calling thread through the same kept handles: near ones at once, a replaced or deleted object anew', async () => {
  const root = path.join(dir, 'fs-handles-sync');
  const store = new FsBackend(root);
  const openHere = () => readdirSync('/proc/self/fd').filter((fd) => { try { return readlinkSync(`/proc/self/fd/${fd}`).startsWith(root); } catch { return false; } }).length;
  const big = Buffer.alloc(3 << 20);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE(i, i);
  await store.put('packs/ab/big', big);
  // near ranges (one span), one far away (its own read), one running past the end (short), in any order
  const ranges = [{ offset: 2 << 20, length: 64 }, { offset: 8, length: 16 }, { offset: 100, length: 40 }, { offset: (3 << 20) - 10, length: 30 }, { offset: 40_000, length: 8 }];
  const got = store.getRangesSync('packs/ab/big', ranges)!;
  assert.deepEqual(got.map((b) => b.length), [64, 16, 40, 10, 8]);
  ranges.forEach((r, i) => assert.ok(got[i]!.equals(big.subarray(r.offset, r.offset + r.length)), `range ${i}`));
  assert.equal(store.getRangesSync('packs/ab/absent', [{ offset: 0, length: 4 }]), null, 'an absent object reads as absent');
  const names = Array.from({ length: 80 }, (_, i) => `packs/${(i % 4).toString(16).padStart(2, '0')}/s${i}`);
  for (const n of names) await store.put(n, Buffer.from(n));
  for (const n of names) assert.equal(store.getRangesSync(n, [{ offset: 0, length: n.length }])![0]!.toString(), n);
  const held = openHere();
  assert.ok(held > 0 && held <= 64, `after reading 80 objects, ${held} descriptors are open`);
  assert.equal(store.getRangesSync(names[79]!, [{ offset: 0, length: 3 }])![0]!.toString(), 'pac');
  assert.equal(openHere(), held, 'a second read of an object uses its open descriptor');
  // this process replacing or deleting an object drops its descriptor: the next read sees the new bytes, or nothing
  await store.put(names[79]!, Buffer.from('replaced'));
  assert.equal(store.getRangesSync(names[79]!, [{ offset: 0, length: 8 }])![0]!.toString(), 'replaced');
  await store.delete(names[79]!);
  assert.equal(store.getRangesSync(names[79]!, [{ offset: 0, length: 8 }]), null);
  for (let i = 0; i < 50 && openHere() > 0; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(openHere(), 0, 'unused for a moment, every descriptor is closed');
  store.getRangesSync(names[0]!, [{ offset: 0, length: 1 }]);
  assert.equal(openHere(), 1);
  store.close();
  assert.equal(openHere(), 0, 'closing the store closes its descriptors at once');
});

/**
 * sync() makes the directory entries of the packs put so far durable before the catalogue records
 * them: a directory is forgotten only once its fsync succeeded and nothing was renamed into it
 * meanwhile, so a failed fsync is tried again by the next sync and a pack renamed in during one is
 * flushed by the next.
 */
test('an fs store forgets a directory to sync only once its fsync succeeded and nothing was renamed into it meanwhile', async () => {
  const root = path.join(dir, 'fs-sync');
  const store = new FsBackend(root);
  const unsynced = () => [...(store as unknown as { touchedDirs: Map<string, number> }).touchedDirs.keys()].map((d) => path.relative(root, d));
  await store.put('packs/ab/one', Buffer.from('1'));
  assert.deepEqual(unsynced(), ['packs/ab']);
  const first = store.sync();
  await store.put('packs/ab/two', Buffer.from('2'));
  await first;
  assert.deepEqual(unsynced(), ['packs/ab'], 'a pack renamed in while the directory was being flushed: flushed again by the next sync');
  await store.sync();
  assert.deepEqual(unsynced(), []);
  await store.put('packs/cd/three', Buffer.from('3'));
  rmSync(path.join(root, 'packs', 'cd'), { recursive: true });
  await assert.rejects(store.sync(), (e: KuraError) => e.code === 'E_IO' && /cannot make writes in .* durable/.test(e.message));
  assert.deepEqual(unsynced(), ['packs/cd'], 'a directory whose fsync failed is tried again');
});

test('an s3 store on Ceph RGW keeps the StoreBackend contract', async (t) => {
  if (!rgwOrSkip(t)) return;
  await withEnv(rgw!.env, async () => {
    const spec = s3Spec('contract');
    const store = openStore(spec, { dir: path.join(dir, 'unused'), scope: 'tenants/a/' });
    await prepareStore(spec, { dir, scope: '' }, store); // creates the bucket, probes conditional puts
    await prepareStore(spec, { dir, scope: '' }, store); // a bucket already there is fine
    await contract(store);
    assert.equal(store.local, undefined, 's3 has no local-disk abilities');
    // tenants under their own prefixes do not see each other
    const other = openStore(spec, { dir, scope: 'tenants/b/' });
    await other.putIfAbsent('snapshots/aa', Buffer.from('b'));
    assert.equal((await store.get('snapshots/aa'))?.toString(), 'first version of a');
    store.close?.();
    other.close?.();
  });
});

test('eight racing creates of one name on RGW: exactly one wins', async (t) => {
  if (!rgwOrSkip(t)) return;
  await withEnv(rgw!.env, async () => {
    const spec = s3Spec('contract');
    const store = openStore(spec, { dir, scope: 'race/' });
    const wins = await Promise.all(Array.from({ length: 8 }, (_, i) => store.putIfAbsent('snapshots/x', Buffer.from(`writer ${i}`))));
    assert.equal(wins.filter(Boolean).length, 1);
    const body = (await store.get('snapshots/x'))!.toString();
    assert.equal(body, `writer ${wins.indexOf(true)}`);
    store.close?.();
  });
});

test('a store that overwrites on a conditional put is refused with E_STORE_UNSAFE', async (t) => {
  if (!rgwOrSkip(t)) return;
  const proxy = await new OverwritingProxy(rgw!).start();
  try {
    await withEnv(rgw!.env, async () => {
      const good = openStore(s3Spec('contract'), { dir, scope: '' });
      await probeConditionalPut(good); // the gateway itself honours If-None-Match
      const spec = s3Spec('contract', proxy.endpoint);
      const bad = openStore(spec, { dir, scope: '' });
      await assert.rejects(prepareStore(spec, { dir, scope: '' }, bad), (e: unknown) => e instanceof KuraError && e.code === 'E_STORE_UNSAFE' && /If-None-Match/.test(e.message));
      assert.ok(proxy.conditionalPutsIgnored >= 2);
      good.close?.();
      bad.close?.();
    });
  } finally {
    await proxy.stop();
  }
});

test('retry: transient failures are retried with back-off, then a clear E_IO; accounting counts every request', async () => {
  let failures = 3;
  const calls: string[] = [];
  const flaky: StoreBackend = {
    location: 'flaky',
    get: async (name) => {
      calls.push(name);
      if (failures-- > 0) throw new KuraError('E_IO', 'HTTP 503 SlowDown', { retryable: true });
      return Buffer.from('ok');
    },
    getRange: async () => null,
    getRanges: async () => null,
    putIfAbsent: async () => {
      throw new KuraError('E_IO', 'connect ECONNREFUSED', { retryable: true });
    },
    put: async () => {
      throw new KuraError('E_IO', 'HTTP 403 AccessDenied', { retryable: false });
    },
    replace: async () => {},
    list: async function* () {},
    listWithSizes: async function* () {},
    delete: async () => {},
    stat: async () => null,
    sync: async () => {},
  };
  const counters = new StoreCounters();
  let retries = 0;
  const store = withRetry(withAccounting(flaky, counters), { attempts: 4, baseMs: 5, capMs: 20, onRetry: () => retries++ });
  assert.equal((await store.get('x'))?.toString(), 'ok');
  assert.equal(calls.length, 4);
  assert.equal(counters.requests.get('get'), 4);
  assert.equal(counters.failures.get('get'), 3);
  assert.equal(counters.bytesRead, 2);
  await assert.rejects(store.putIfAbsent('y', Buffer.from('z')), (e: unknown) => e instanceof KuraError && e.code === 'E_IO' && /tried 4 times/.test(e.message));
  const before = retries;
  await assert.rejects(store.put('y', Buffer.from('z')), (e: unknown) => e instanceof KuraError && /AccessDenied/.test(e.message));
  assert.equal(retries, before, 'a permanent failure is not retried');
  assert.match(renderStoreMetrics(), /# TYPE kura_store_requests_total counter/);
});

test('an s3 store on a stopped gateway fails with E_IO after its retries, and works again once it is back', async (t) => {
  if (!rgwOrSkip(t)) return;
  await withEnv(rgw!.env, async () => {
    const raw = new S3Backend({ endpoint: rgw!.endpoint, bucket: 'contract', prefix: 'down/', region: 'us-east-1', forcePathStyle: true, requestTimeoutMs: 5_000 });
    const store = withRetry(raw, { attempts: 3, baseMs: 100, capMs: 200 });
    await store.replace('config', Buffer.from('x'));
    await rgw!.stopGateway();
    try {
      await assert.rejects(store.get('config'), (e: unknown) => e instanceof KuraError && e.code === 'E_IO' && /tried 3 times/.test(e.message));
    } finally {
      await rgw!.startGateway();
    }
    assert.equal((await store.get('config'))?.toString(), 'x');
    raw.close();
  });
});

test('two-phase deletes: a condemned pack answers no chunk present, a session writing the same pack takes back an unclaimed one and waits out a claimed one, and a leased pack is never claimed', async () => {
  const { Catalogue } = await import('../src/repository/catalogue.js');
  const cat = new Catalogue(path.join(dir, 'condemned.sqlite'));
  try {
    const id = Buffer.alloc(32, 7);
    cat.addChunks([{ id, pack: 'p1', offset: 0, storedSize: 10, plainSize: 10, bases: [] }]);
    // the GC's proof: no row points at p2 (p1 still has one)
    cat.db.transaction(() => cat.condemned.condemn('p2'))();
    assert.deepEqual(cat.condemned.list(), ['p2']);
    // a row pointing at a condemned pack is never answered present: condemned.claim drops the condemnation instead
    cat.db.transaction(() => cat.condemned.condemn('p1'))();
    assert.equal(cat.condemned.claim('p1'), false, 'a pack in use is not deleted');
    assert.deepEqual(cat.condemned.list(), ['p2']);
    // a session about to write p2 takes it back before any GC claimed it
    assert.equal(cat.vault.leasePack('p2', 's1', Date.now() + 60_000), true);
    assert.deepEqual(cat.condemned.list(), []);
    assert.equal(cat.condemned.claim('p2'), false);
    // condemned and claimed: the session must wait until the delete has landed
    cat.db.transaction(() => cat.condemned.condemn('p3'))();
    assert.equal(cat.condemned.claim('p3'), true);
    assert.equal(cat.condemned.claim('p3'), true, 'the next GC (GCs exclude each other) takes over a killed one\'s claim');
    const gc = cat.acquireLock('gc', ['gc']); // the claimer is running
    assert.equal(cat.vault.leasePack('p3', 's2', Date.now() + 60_000), false);
    cat.condemned.forget('p3');
    gc.release();
    assert.equal(cat.vault.leasePack('p3', 's2', Date.now() + 60_000), true);
    // a leased pack condemned by a stale proof is not claimed
    cat.db.transaction(() => cat.condemned.condemn('p3'))();
    assert.equal(cat.condemned.claim('p3'), false);
    // a claim whose GC is gone (no gc lock held) does not hold a session up
    cat.db.transaction(() => cat.condemned.condemn('p5'))();
    assert.equal(cat.condemned.claim('p5'), true);
    assert.equal(cat.vault.leasePack('p5', 's3', Date.now() + 60_000), true);
    assert.ok(!cat.condemned.list().includes('p5'));
    // a failed delete releases its claim: the next GC (or a session) may go on
    cat.db.transaction(() => cat.condemned.condemn('p4'))();
    assert.equal(cat.condemned.claim('p4'), true);
    cat.condemned.release('p4');
    assert.equal(cat.condemned.claim('p4'), true);
  } finally {
    cat.close();
  }
});
