import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { kuraAsync, spawnKura } from './support/cli.js';
import { collect, Prng, sha256, sqlDump } from './support/generate.js';
import { exitOf, waitFor } from './support/proc.js';
import { LinkProxy, sleep } from './support/proxy.js';
import { rgwOrSkip, type Rgw, useRgw } from './support/rgw.js';
import { ok, unsent } from './support/routing.js';
import { sshKey } from './support/vault.js';
import { BucketView } from './support/s3util.js';
import { agentConfigFor, NODE_TENANTS, nodesView, startNode, waitForHolders } from './support/nodes.js';

/**
 * Vault nodes sharing one bucket on a real Ceph RGW (vault.node): tenants spread over the nodes
 * under leases in the bucket, a relay whose route lists both nodes reaches its tenant's, a
 * node killed with snapshots on the way loses its tenant to the other once the lease expires.
 */
const MiB = 1 << 20;
let rgw: Rgw | null = null;
let top = '';

useRgw('kura-nodes-', (r, d) => {
  rgw = r;
  top = d;
});

async function okJson<T>(args: string[], env: Record<string, string | undefined>, what: string): Promise<T> {
  const r = await ok(kuraAsync([...args, '--json'], { env }), what);
  return JSON.parse(r.out.trim().split('\n').pop()!) as T;
}

/** Night n's export: a shared base with the night's own rows spread through it. */
function night(base: Buffer, n: number): Buffer {
  const r = new Prng(100 + n);
  const parts: Buffer[] = [];
  for (let i = 0; i * MiB < base.length; i++) parts.push(base.subarray(i * MiB, (i + 1) * MiB), Buffer.from(`-- night ${n} part ${i}\n`), r.bytes(160 << 10));
  return Buffer.concat(parts);
}

const both = (h: Record<string, string | null>) => NODE_TENANTS.every((t) => h[t] !== null && h[t] !== undefined);

test('two vault nodes on one bucket, three tenants: each tenant is held by exactly one node (spread by rendezvous order); a relay whose route lists both nodes reaches its tenant\'s node; the other refuses with E_TENANT_ELSEWHERE', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'spread');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  const [a, b] = await Promise.all([startNode(dir, rgw!, 'node-a', 'nodes-spread', key), startNode(dir, rgw!, 'node-b', 'nodes-spread', key)]);
  t.after(() => Promise.all([a.stop(), b.stop()]));
  const h = await waitForHolders(a.config, both, 'every tenant to be held');
  // rendezvous order of (tenant, node): city-a and city-c prefer node-a, city-b node-b
  assert.deepEqual(h, { 'city-a': 'node-a', 'city-b': 'node-b', 'city-c': 'node-a' });
  const view = await nodesView(b.config);
  assert.deepEqual(view.nodes.map((n) => [n.node, n.live, n.tenants]), [['node-a', true, ['city-a', 'city-c']], ['node-b', true, ['city-b']]]);
  for (const x of view.tenants) assert.ok(x.leaseAgeMs !== null && x.leaseAgeMs <= 4000, `lease of ${x.tenant} renewed ${x.leaseAgeMs} ms ago`);

  // city-b's relay lists node-a first: node-a refuses, node-b takes the snapshot
  const cfg = agentConfigFor(dir, 'city-b', key, [a, b]);
  const env = { KURA_CONFIG: cfg };
  await ok(kuraAsync(['repo', 'init'], { env }), 'repo init');
  const data = await collect(sqlDump(7, 2 * MiB));
  const f = path.join(dir, 'b.sql');
  writeFileSync(f, data);
  const snap = await okJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], env, 'backup');
  await ok(kuraAsync(['relay', 'once'], { env }), 'relay once');
  assert.equal(unsent(path.join(dir, 'repo-city-b')), 0);
  assert.ok(b.audit().some((e) => e.event === 'commit' && e.snapshot === snap.id), 'node-b committed it');
  assert.ok(!a.audit().some((e) => e.event === 'commit'), 'node-a committed nothing');
  const refused = a.audit().filter((e) => e.event === 'session-refused' && e.tenant === 'city-b');
  assert.ok(refused.length > 0 && refused.every((e) => e.code === 'E_TENANT_ELSEWHERE'), JSON.stringify(refused));
  assert.match(String(refused[0]!.reason), /held by node-b/);
  assert.equal(sha256((await ok(kuraAsync(['restore', '--from', 'peer-dc', snap.id, '--to', '-'], { env }), 'restore')).stdout), sha256(data));
  // endpoints that name their nodes are tried in the tenant's placement order: node-b first, no refusal
  const refusedBefore = a.audit().filter((e) => e.event === 'session-refused' && e.tenant === 'city-b').length;
  const named = agentConfigFor(dir, 'city-b', key, [{ ...a, node: 'node-a' }, { ...b, node: 'node-b' }], 'agent-named.yaml');
  const second = await okJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { KURA_CONFIG: named }, 'backup 2');
  await ok(kuraAsync(['relay', 'once'], { env: { KURA_CONFIG: named } }), 'relay once (named endpoints)');
  assert.ok(b.audit().some((e) => e.event === 'commit' && e.snapshot === second.id), 'node-b committed the second');
  assert.equal(a.audit().filter((e) => e.event === 'session-refused' && e.tenant === 'city-b').length, refusedBefore, 'node-a was not asked');
  // prune and gc from the command line run under the lease of this host's node, and only there
  const gcB = JSON.parse((await ok(kuraAsync(['vault', 'gc', '--config', b.config, '--tenant', 'city-b', '--json']), 'vault gc on node-b')).out) as { tenant: string; gc: { problems: string[] } };
  assert.equal(gcB.tenant, 'city-b');
  assert.deepEqual(gcB.gc.problems, []);
  const gcA = await kuraAsync(['vault', 'gc', '--config', a.config, '--tenant', 'city-b']);
  assert.equal(gcA.status, 75, gcA.stderr);
  assert.match(gcA.stderr, /E_TENANT_ELSEWHERE: tenant city-b is held by node-b/);
  assert.match((await ok(kuraAsync(['vault', 'gc', '--config', a.config]), 'vault gc on node-a')).out, /held by other vault nodes \(run gc there\): city-b/);
  // a graceful stop releases the leases: the other node takes them at once
  await a.stop();
  await waitForHolders(b.config, (x) => NODE_TENANTS.every((t) => x[t] === 'node-b'), 'node-b to hold every tenant', 10_000);
  // the lease shows in the bucket before the node has opened the tenant's catalogue and said so
  await waitFor('node-b to have opened city-a', () => b.audit().some((e) => e.event === 'tenant-taken' && e.tenant === 'city-a'), 20_000);
});

test('kill -9 of the node holding a tenant while a relay has 3 snapshots queued: the relay moves to the other node, which takes the tenant once the lease expired and rebuilt its catalogue; all 3 arrive in order, restore byte-identical, nothing committed is sent twice', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'kill');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  const [a, b] = await Promise.all([startNode(dir, rgw!, 'node-a', 'nodes-kill', key), startNode(dir, rgw!, 'node-b', 'nodes-kill', key)]);
  t.after(() => Promise.all([a.stop(), b.stop()]));
  await waitForHolders(a.config, (h) => h['city-a'] === 'node-a' && both(h), 'city-a to be held by node-a');
  // the line to node-a is slow, so node-a dies mid-upload
  const link = await new LinkProxy(a.port).start();
  t.after(() => link.close());
  const cfg = agentConfigFor(dir, 'city-a', key, [{ port: link.port, hostKeySha256: a.hostKeySha256 }, b]);
  const env = { KURA_CONFIG: cfg };
  await ok(kuraAsync(['repo', 'init'], { env }), 'repo init');
  const base = await collect(sqlDump(41, 3 * MiB));
  const nights: Array<{ id: string; sha: string }> = [];
  for (let n = 0; n < 3; n++) {
    const data = night(base, n);
    const f = path.join(dir, `night${n}.sql`);
    writeFileSync(f, data);
    nights.push({ id: (await okJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], env, `backup ${n}`)).id, sha: sha256(data) });
  }
  assert.equal(unsent(path.join(dir, 'repo-city-a')), 3);
  link.setRate(700_000);
  const relay = spawnKura(['relay', 'run'], { KURA_CONFIG: cfg });
  let relayErr = '';
  relay.stderr.on('data', (d) => (relayErr += d));
  t.after(async () => {
    if (relay.exitCode === null) {
      relay.kill('SIGTERM');
      await exitOf(relay);
    }
  });
  // the first night committed on node-a, the second under way: kill -9
  await waitFor('a first commit on node-a', () => a.audit().some((e) => e.event === 'commit'), 60_000);
  await waitFor('the second night to be under way', () => link.bytesUp > 1.5 * MiB, 60_000);
  const killedAt = Date.now();
  a.child.kill('SIGKILL');
  await exitOf(a.child);
  const beforeKill = a.audit().filter((e) => e.event === 'commit').map((e) => e.snapshot as string);
  await waitFor('the relay to empty its queue through node-b', () => unsent(path.join(dir, 'repo-city-a')) === 0, 90_000, 250);
  const tookOver = b.audit().find((e) => e.event === 'tenant-taken' && e.tenant === 'city-a');
  assert.ok(tookOver, 'node-b took city-a over');
  assert.equal(tookOver.rebuilt, true, 'from a catalogue rebuilt from the bucket');
  t.diagnostic(`takeover: node-b holds city-a ${((Date.parse(String(tookOver.time ?? new Date().toISOString())) - killedAt) / 1000).toFixed(1)} s after the kill; catalogue rebuilt in ${String(tookOver.seconds)} s`);
  const onB = b.audit().filter((e) => e.event === 'commit' && e.tenant === 'city-a');
  // in order, each once: what node-a had committed (and acknowledged) is not sent again
  const fresh = [...beforeKill, ...onB.filter((e) => !e.existed).map((e) => e.snapshot as string)];
  assert.deepEqual(fresh, nights.map((n) => n.id), `commits: node-a ${JSON.stringify(beforeKill)}, node-b ${JSON.stringify(onB)}`);
  for (const id of beforeKill) assert.ok(onB.filter((e) => e.snapshot === id).length <= 1, `${id} sent again at most once (only when its acknowledgement was lost with node-a)`);
  assert.equal(onB.filter((e) => e.existed).length <= 1, true, 'at most the snapshot whose acknowledgement died with node-a is committed again');
  for (const n of nights) assert.equal(sha256((await ok(kuraAsync(['restore', '--from', 'peer-dc', n.id, '--to', '-'], { env }), 'restore')).stdout), n.sha);
  const venv = { KURA_CONFIG: b.config, KURA_PASSPHRASE: undefined };
  assert.equal((await okJson<{ ok: boolean }>(['check', '--vault-tenant', 'city-a'], venv, 'check the tenant on node-b')).ok, true);
  assert.equal(relay.exitCode, null, relayErr);
});

const LIBFAKETIME = ['/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1', '/usr/lib/faketime/libfaketime.so.1'].find((f) => existsSync(f));

test('a node whose clock jumps 10 minutes forward (libfaketime, wall and monotonic clocks) takes no live lease: expiry is judged by the store\'s clock', { skip: !LIBFAKETIME && process.env.CI !== 'true' ? 'libfaketime is not installed (Debian package faketime; under CI=true this fails)' : false }, async (t) => {
  if (!rgwOrSkip(t)) return;
  assert.ok(LIBFAKETIME, 'libfaketime (Debian package faketime) is required');
  const dir = path.join(top, 'clock');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  // node-b's clocks follow this file (re-read every second): "+0" now, "+10m" later
  const offset = path.join(dir, 'faketime');
  writeFileSync(offset, '+0\n');
  const fake = { LD_PRELOAD: LIBFAKETIME!, FAKETIME_TIMESTAMP_FILE: offset, FAKETIME_CACHE_DURATION: '1' };
  const [a, b] = await Promise.all([startNode(dir, rgw!, 'node-a', 'nodes-clock', key), startNode(dir, rgw!, 'node-b', 'nodes-clock', key, { env: fake })]);
  t.after(() => Promise.all([a.stop(), b.stop()]));
  await waitForHolders(a.config, both, 'every tenant to be held');
  const held = await waitForHolders(a.config, (h) => h['city-a'] === 'node-a' && h['city-c'] === 'node-a', 'node-a to hold city-a and city-c');
  assert.equal(held['city-b'], 'node-b');
  writeFileSync(offset, '+10m\n');
  await sleep(2500); // libfaketime re-reads the file every second
  const cfg = agentConfigFor(dir, 'city-a', key, [b, a]);
  const env = { KURA_CONFIG: cfg };
  await ok(kuraAsync(['repo', 'init'], { env }), 'repo init');
  const f = path.join(dir, 'a.sql');
  writeFileSync(f, await collect(sqlDump(9, 1 * MiB)));
  const snap = await okJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], env, 'backup');
  await ok(kuraAsync(['relay', 'once'], { env }), 'relay once');
  const refusedOnB = b.audit().filter((e) => e.event === 'session-refused' && e.tenant === 'city-a');
  assert.ok(refusedOnB.length > 0, 'node-b was asked first');
  assert.ok(Date.parse(String(refusedOnB.at(-1)!.time)) - Date.now() > 9 * 60_000, `node-b's clock is 10 minutes ahead (${String(refusedOnB.at(-1)!.time)})`);
  assert.match(String(refusedOnB.at(-1)!.reason), /held by node-a/);
  assert.ok(a.audit().some((e) => e.event === 'commit' && e.snapshot === snap.id), 'node-a committed the snapshot');
  // three more TTLs with node-b ahead: node-a keeps its tenants
  await sleep(9000);
  const after = await waitForHolders(a.config, both, 'every tenant held');
  assert.equal(after['city-a'], 'node-a');
  assert.equal(after['city-c'], 'node-a');
  assert.deepEqual(b.audit().filter((e) => e.event === 'tenant-taken' && e.tenant !== 'city-b'), [], 'node-b took nothing of node-a\'s');
  assert.deepEqual(a.audit().filter((e) => e.event === 'tenant-lost'), [], 'node-a lost nothing');
});

test('a node paused (SIGSTOP) mid-gc past its lease, then resumed (SIGCONT): the other node has taken the tenant, and the paused one deletes nothing more', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'pause');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  // node-a runs prune and gc every 2 s on the tenants it holds
  const [a, b] = await Promise.all([startNode(dir, rgw!, 'node-a', 'nodes-pause', key, { extra: '  maintenance: { schedule: "*/2 * * * * *" }\n' }), startNode(dir, rgw!, 'node-b', 'nodes-pause', key)]);
  let stopped = false;
  t.after(async () => {
    if (stopped) process.kill(a.child.pid!, 'SIGCONT');
    await Promise.all([a.stop(), b.stop()]);
  });
  await waitForHolders(a.config, (h) => h['city-a'] === 'node-a' && both(h), 'city-a to be held by node-a');
  await waitFor('node-a to maintain city-a', () => a.audit().some((e) => e.event === 'maintenance' && e.tenant === 'city-a'), 20_000);
  // 300 pack objects nothing refers to (a killed writer's): node-a's gc deletes them, one by one
  const bucket = new BucketView(rgw!, 'nodes-pause');
  t.after(() => bucket.close());
  const prefix = 'dc-a/tenants/city-a/packs/';
  const r = new Prng(3);
  await Promise.all(Array.from({ length: 300 }, async () => {
    const id = r.bytes(32).toString('hex');
    await bucket.put(`${prefix}${id.slice(0, 2)}/${id}`, r.bytes(512));
  }));
  assert.equal((await bucket.keys(prefix)).length, 300);
  await waitFor('node-a\'s gc to start deleting', async () => (await bucket.keys(prefix)).length < 300, 30_000, 20);
  process.kill(a.child.pid!, 'SIGSTOP');
  stopped = true;
  await sleep(500); // requests already on the wire land
  const left = (await bucket.keys(prefix)).length;
  assert.ok(left > 0, 'node-a was paused mid-gc, with deletes still to do');
  await waitForHolders(b.config, (h) => h['city-a'] === 'node-b', 'node-b to take city-a', 30_000);
  process.kill(a.child.pid!, 'SIGCONT');
  stopped = false;
  await waitFor('node-a to notice', () => a.audit().some((e) => e.event === 'tenant-lost' && e.tenant === 'city-a'), 20_000);
  await sleep(5000); // node-a's gc goes on, and its schedule ticks again
  assert.equal((await bucket.keys(prefix)).length, left, 'node-a deleted nothing after its lease ran out');
  const h = await waitForHolders(b.config, both, 'every tenant held');
  assert.equal(h['city-a'], 'node-b', 'node-a did not take city-a back');
});

test('the lease fence itself: a node whose event loop was blocked past its lease (no renewal could run) refuses the next delete and write before sending them; a lease taken over in the store refuses a delete though the holder still trusts it', async (t) => {
  if (!rgwOrSkip(t)) return;
  const { S3Backend } = await import('../src/store/s3/index.js');
  const { openLeaseStore, leaseName } = await import('../src/vault/nodes/lease-store.js');
  const { VaultNode } = await import('../src/vault/nodes/node.js');
  const { withLeaseFence } = await import('../src/vault/nodes/fence.js');
  const spec = { type: 's3', endpoint: rgw!.endpoint, bucket: 'nodes-fence', prefix: 'dc-a/' };
  const objects = new S3Backend({ endpoint: rgw!.endpoint, bucket: 'nodes-fence', prefix: 'dc-a/tenants/city-a/', region: 'us-east-1', forcePathStyle: true });
  await objects.ensureBucket();
  t.after(() => objects.close());
  const quiet = { info: () => {}, warn: () => {} };
  const start = async (id: string) => {
    let term = 0;
    const node = new VaultNode(id, 2000, openLeaseStore(spec), () => ['city-a'], '127.0.0.1:0', { takeOver: async (_t, _r, tm) => void (term = tm), lost: () => {}, sessions: () => 0, log: quiet });
    await node.start();
    return { node, term: () => term };
  };
  const one = await start('node-1');
  t.after(() => one.node.stop());
  const term = await one.node.claim('city-a');
  const fenced = withLeaseFence(objects, { mayWrite: () => one.node.mayWrite('city-a', term), mayDelete: () => one.node.mayDelete('city-a', term) });
  await fenced.put('packs/aa/one', Buffer.from('x'));
  await fenced.put('packs/aa/two', Buffer.from('y'));
  await fenced.delete('packs/aa/one'); // held and trusted: goes through
  assert.equal(await objects.get('packs/aa/one'), null);
  // the event loop blocked 2.5 s (a pause): no renewal ran, and the delete is refused before it is sent
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2500);
  await assert.rejects(fenced.delete('packs/aa/two'), (e: { code?: string }) => e.code === 'E_LEASE_LOST');
  await assert.rejects(fenced.put('packs/aa/three', Buffer.from('z')), (e: { code?: string }) => e.code === 'E_LEASE_LOST');
  assert.ok(await objects.get('packs/aa/two'), 'the object is still there');

  // node-1 stops (releasing what it took back); node-2 takes city-a; then it is taken over in the
  // store (another node's conditional write) while node-2 still trusts its lease
  await one.node.stop();
  const two = await start('node-2');
  t.after(() => two.node.stop());
  // node-1 lost the lease in the pause rather than releasing it: by the store's clock (whole
  // seconds in Date and Last-Modified) it can look held for up to a second past its TTL, and
  // node-2 asks again as a relay would, for a bounded time
  let term2 = 0;
  for (const until = Date.now() + 3 * 2000; ; await sleep(200)) {
    try {
      term2 = await two.node.claim('city-a');
      break;
    } catch (e) {
      if ((e as { code?: string }).code !== 'E_TENANT_ELSEWHERE' || Date.now() > until) throw e;
    }
  }
  assert.equal(term2, two.term());
  const fenced2 = withLeaseFence(objects, { mayWrite: () => two.node.mayWrite('city-a', term2), mayDelete: () => two.node.mayDelete('city-a', term2) });
  const store = openLeaseStore(spec);
  t.after(() => store.close());
  const cur = (await store.read(leaseName('city-a')))!;
  const rec = JSON.parse(cur.body.toString()) as { counter: number };
  assert.ok(await store.write(leaseName('city-a'), Buffer.from(JSON.stringify({ ...rec, node: 'node-3', counter: rec.counter + 1, lastHolder: 'node-3' })), cur.etag), 'node-3 takes it over');
  await assert.rejects(fenced2.delete('packs/aa/two'), (e: { code?: string }) => e.code === 'E_LEASE_LOST');
  assert.ok(await objects.get('packs/aa/two'), 'the object is still there');
});
