import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { kuraAsync } from './support/cli.js';
import { Prng } from './support/generate.js';
import { exitOf, waitFor } from './support/proc.js';
import { rgwOrSkip, type Rgw, useRgw } from './support/rgw.js';
import { ok, serveVaultConfig } from './support/routing.js';
import { sshKey, type SshKey } from './support/vault.js';
import { BucketView } from './support/s3util.js';
import { agentConfigFor, NODE_TENANTS, nodeConfig, startNode, waitForHolders } from './support/nodes.js';

/**
 * What vault nodes keep in their shared store besides leases (a real Ceph RGW, real `kura vault
 * serve` processes): usage and quotas computed from the store's listing, so every node gives the
 * same figure and a takeover enforces what is really in the bucket; each node's audit log
 * shipped into the bucket and readable from any node, a killed one's too.
 */
const MiB = 1 << 20;
let rgw: Rgw | null = null;
let top = '';

useRgw('kura-nodes-store-', (r, d) => {
  rgw = r;
  top = d;
});

const held = (h: Record<string, string | null>) => NODE_TENANTS.every((t) => h[t] !== null && h[t] !== undefined);

interface Usage {
  tenants: Array<{ tenant: string; storedBytes: number; snapshots: number; chunks: number; quota: number | null; storedFrom?: string; catalogueFrom?: string }>;
}

/** What the bucket holds for a tenant, as usage counts it: its packs and snapshot files. */
async function bucketBytes(bucket: BucketView, tenant: string): Promise<{ bytes: number; snapshots: number }> {
  const p = `dc-a/tenants/${tenant}/`;
  return { bytes: (await bucket.bytes(`${p}packs/`)) + (await bucket.bytes(`${p}snapshots/`)), snapshots: (await bucket.keys(`${p}snapshots/`)).length };
}

/** A backup of `bytes` random (incompressible) bytes queued for the route, through the agent config `cfg`. */
async function backupRandom(dir: string, cfg: string, seed: number, bytes: number): Promise<string> {
  const f = path.join(dir, `random-${seed}`);
  writeFileSync(f, new Prng(seed).bytes(bytes));
  const r = await ok(kuraAsync(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc', '--json'], { env: { KURA_CONFIG: cfg } }), 'backup');
  return (JSON.parse(r.out.trim().split('\n').pop()!) as { id: string }).id;
}

function systemYaml(sys: SshKey): string {
  return `  system:\n    clients:\n      - key: ${sys.public}\n`;
}

test('usage from the store: asked of the node that does not hold a tenant (USAGE on a system session, and kura vault usage on its host), it is the holder\'s figure and the bucket\'s bytes', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'usage');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  const sys = sshKey(dir, 'ops');
  const [a, b] = await Promise.all([startNode(dir, rgw!, 'node-a', 'nodes-usage', key, { extra: systemYaml(sys) }), startNode(dir, rgw!, 'node-b', 'nodes-usage', key, { extra: systemYaml(sys) })]);
  t.after(() => Promise.all([a.stop(), b.stop()]));
  const h = await waitForHolders(a.config, held, 'every tenant to be held');
  assert.equal(h['city-a'], 'node-a');
  const cfg = agentConfigFor(dir, 'city-a', key, [{ ...a, node: 'node-a' }, { ...b, node: 'node-b' }]);
  await ok(kuraAsync(['repo', 'init'], { env: { KURA_CONFIG: cfg } }), 'repo init');
  await backupRandom(dir, cfg, 1, 600_000);
  await backupRandom(dir, cfg, 2, 400_000);
  await ok(kuraAsync(['relay', 'once'], { env: { KURA_CONFIG: cfg } }), 'relay once');
  const bucket = new BucketView(rgw!, 'nodes-usage');
  t.after(() => bucket.close());
  const inBucket = await bucketBytes(bucket, 'city-a');
  assert.ok(inBucket.bytes > 1_000_000 && inBucket.snapshots === 2, JSON.stringify(inBucket));

  // USAGE frames on system sessions, one to each node (routes of one endpoint each)
  const askOf = async (node: typeof a, name: string): Promise<Usage> => {
    const route = agentConfigFor(dir, 'city-a', key, [node], `system-${name}.yaml`);
    const r = await ok(kuraAsync(['vault', 'usage', '--from', 'peer-dc', '--identity', sys.private, '--json'], { env: { KURA_CONFIG: route } }), `usage of ${name}`);
    return JSON.parse(r.out) as Usage;
  };
  const ofA = (await askOf(a, 'a')).tenants.find((x) => x.tenant === 'city-a')!;
  const ofB = (await askOf(b, 'b')).tenants.find((x) => x.tenant === 'city-a')!;
  assert.equal(ofB.storedBytes, inBucket.bytes, `node-b (not the holder) reports what the bucket holds: ${ofB.storedFrom}`);
  assert.equal(ofA.storedBytes, inBucket.bytes, 'node-a (the holder) too');
  assert.equal(ofB.snapshots, 2);
  assert.match(ofB.storedFrom!, /store listing of s3:\/\/nodes-usage\/dc-a\/tenants\/city-a\//);
  assert.match(ofB.catalogueFrom!, /not held by this node \(node-b\).*node-a/);
  assert.match(ofA.catalogueFrom!, /catalogue of node-a, which holds the tenant/);
  assert.ok(ofA.chunks > 0);
  // kura vault usage on node-b's host (no process asked): the same figure, and it says where from
  const host = JSON.parse((await ok(kuraAsync(['vault', 'usage', '--config', b.config, '--json']), 'vault usage on node-b\'s host')).out) as Usage;
  assert.equal(host.tenants.find((x) => x.tenant === 'city-a')!.storedBytes, inBucket.bytes);
  const table = (await ok(kuraAsync(['vault', 'usage', '--config', b.config]), 'usage table')).out;
  assert.match(table, /where the figures come from \(vault nodes\): STORED and SNAPSHOTS from the store itself/);
  assert.match(table, /city-a: stored: store listing of s3:\/\/nodes-usage\/dc-a\/tenants\/city-a\//);
});

test('quota from the store after a takeover: node-a killed (-9) left packs of a snapshot it never committed; node-b, which rebuilt the catalogue without them, refuses an upload that the bucket\'s bytes put over the quota', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'quota');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  const quota = 3 * MiB;
  const tenants = NODE_TENANTS.map((x) => `    ${x}:\n${x === 'city-a' ? `      quota: ${quota}\n` : ''}      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`).join('');
  const [a, b] = await Promise.all([startNode(dir, rgw!, 'node-a', 'nodes-quota', key, { tenants }), startNode(dir, rgw!, 'node-b', 'nodes-quota', key, { tenants })]);
  t.after(() => Promise.all([a.stop(), b.stop()]));
  await waitForHolders(a.config, (h) => held(h) && h['city-a'] === 'node-a', 'city-a to be held by node-a');
  const cfg = agentConfigFor(dir, 'city-a', key, [{ ...a, node: 'node-a' }, { ...b, node: 'node-b' }]);
  const env = { KURA_CONFIG: cfg };
  await ok(kuraAsync(['repo', 'init'], { env }), 'repo init');
  await backupRandom(dir, cfg, 11, 1 * MiB);
  await ok(kuraAsync(['relay', 'once'], { env }), 'the first snapshot fits');
  // what a writer killed mid-upload leaves: pack objects no snapshot refers to (gc reclaims them; until then they take space)
  const bucket = new BucketView(rgw!, 'nodes-quota');
  t.after(() => bucket.close());
  const r = new Prng(12);
  for (let i = 0; i < 2; i++) {
    const id = r.bytes(32).toString('hex');
    await bucket.put(`dc-a/tenants/city-a/packs/${id.slice(0, 2)}/${id}`, r.bytes(768 << 10));
  }
  a.child.kill('SIGKILL');
  await exitOf(a.child);
  await waitForHolders(b.config, (h) => h['city-a'] === 'node-b', 'node-b to take city-a', 30_000);
  await waitFor('node-b to have opened city-a', () => b.audit().some((e) => e.event === 'tenant-taken' && e.tenant === 'city-a'), 30_000);
  const taken = b.audit().find((e) => e.event === 'tenant-taken' && e.tenant === 'city-a')!;
  // 1 MiB stored + 1.5 MiB left over = 2.5 MiB in the bucket; the catalogue knows only the first 1 MiB
  const inBucket = await bucketBytes(bucket, 'city-a');
  assert.ok(inBucket.bytes > 2.5 * MiB && inBucket.bytes < quota, `${inBucket.bytes} bytes in the bucket`);
  await backupRandom(dir, cfg, 13, 1 * MiB);
  const once = await kuraAsync(['relay', 'once', '--json'], { env });
  assert.equal(once.status, 75, `${once.stderr}\n(the catalogue held ${String(taken.chunks)} chunks)`);
  assert.match(once.stderr, /E_QUOTA: route peer-dc: vault: tenant city-a would exceed its quota of 3145728 bytes \(\d+ stored, by store listing of s3:\/\/nodes-quota\/dc-a\/tenants\/city-a\//);
  const refusal = b.audit().find((e) => e.code === 'E_QUOTA' && e.tenant === 'city-a');
  assert.ok(refusal, 'node-b refused it (audited)');
  assert.ok(Number((refusal.reason as string).match(/\((\d+) stored/)![1]) >= inBucket.bytes, String(refusal.reason));
  assert.equal((await bucketBytes(bucket, 'city-a')).snapshots, 1, 'the second snapshot was not committed');
});

test('audit lines in the store: node-a\'s sessions and a refusal are read with kura vault audit on node-b\'s config after node-a was killed (-9); the line it wrote just before the kill goes up when it restarts', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'audit');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  // node-a ships ordinary lines only when a refusal comes, or at its next start
  const slow = '    audit: { every: 1h, lines: 100000 }\n';
  const withAudit = (yaml: string, audit: string) => yaml.replace(/node: \{ id: (\S+), leaseTtl: (\S+) \}/, `node:\n    id: $1\n    leaseTtl: $2\n${audit}`);
  const startA = () => serveVaultConfig(nodeConfig(dir, rgw!, 'node-a', 'nodes-audit', key), { edit: (y) => withAudit(y, slow) });
  let a = await startA();
  const b = await startNode(dir, rgw!, 'node-b', 'nodes-audit', key);
  t.after(() => Promise.all([a.stop(), b.stop()]));
  await waitForHolders(a.config, (h) => held(h) && h['city-a'] === 'node-a' && h['city-b'] === 'node-b', 'city-a on node-a, city-b on node-b');
  const auditOf = async (args: string[] = []) => JSON.parse((await ok(kuraAsync(['vault', 'audit', '--config', b.config, '--json', ...args]), 'kura vault audit')).out) as { nodes: string[]; lines: Array<Record<string, unknown>> };
  const sessionsOf = (lines: Array<Record<string, unknown>>, node: string) => new Set(lines.filter((l) => l.node === node && l.event === 'session-start').map((l) => l.session as string));
  const cityA = agentConfigFor(dir, 'city-a', key, [a]);
  const cityBAtA = agentConfigFor(dir, 'city-b', key, [a], 'city-b-at-a.yaml');
  // a session of city-a on node-a (ordinary lines: they wait), then a refusal (city-b is node-b's): both go up at once
  await ok(kuraAsync(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: cityA } }), 'a session on node-a');
  const first = a.audit().find((e) => e.event === 'session-start' && e.tenant === 'city-a')?.session as string;
  assert.ok(first, 'node-a wrote a session line');
  const refused = await kuraAsync(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: cityBAtA } });
  assert.equal(refused.status, 75, refused.stderr);
  await waitFor('node-a\'s refusal in the store', async () => (await auditOf(['--node', 'node-a'])).lines.some((l) => l.event === 'session-refused'), 10_000, 250);
  // one more session on node-a: its lines stay on node-a's disk (every: 1h) …
  await ok(kuraAsync(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: cityA } }), 'the last session on node-a');
  const last = a.audit().filter((e) => e.event === 'session-end').at(-1)!.session as string;
  assert.notEqual(last, first);
  await new Promise((r) => setTimeout(r, 1500));
  assert.ok(!sessionsOf((await auditOf()).lines, 'node-a').has(last), 'not shipped yet (batched)');
  // … when node-a is killed
  a.child.kill('SIGKILL');
  await exitOf(a.child);

  // node-b ships its own ordinary lines within 5 s (the default): the commands above can take less
  await waitFor('node-b\'s own lines in the store', async () => (await auditOf()).nodes.includes('node-b'), 15_000, 250);
  const all = await auditOf();
  assert.deepEqual(all.nodes, ['node-a', 'node-b']);
  const fromA = all.lines.filter((l) => l.node === 'node-a');
  const refusal = fromA.filter((l) => l.event === 'session-refused' && l.tenant === 'city-b');
  assert.equal(refusal.length, 1, 'the refusal, once');
  assert.equal(refusal[0]!.code, 'E_TENANT_ELSEWHERE');
  assert.equal(refusal[0]!.outcome, 'refused');
  assert.ok(sessionsOf(fromA, 'node-a').has(first), 'the session before the refusal');
  assert.ok(fromA.some((l) => l.event === 'tenant-taken' && l.tenant === 'city-a'), 'node-a taking city-a');
  assert.ok(all.lines.some((l) => l.node === 'node-b' && l.event === 'tenant-taken' && l.tenant === 'city-b'), 'node-b\'s own lines (every 5 s by default)');
  const times = all.lines.map((l) => Date.parse(l.time as string));
  assert.deepEqual(times, [...times].sort((x, y) => x - y), 'merged in time order');
  // the filters and the table
  const onlyB = await auditOf(['--tenant', 'city-b', '--node', 'node-a']);
  assert.ok(onlyB.lines.length > 0 && onlyB.lines.every((l) => l.tenant === 'city-b' && l.node === 'node-a'));
  const later = await auditOf(['--since', refusal[0]!.time as string]);
  assert.ok(later.lines.every((l) => Date.parse(l.time as string) >= Date.parse(refusal[0]!.time as string)) && later.lines.some((l) => l.event === 'session-refused'));
  const table = (await ok(kuraAsync(['vault', 'audit', '--config', b.config, '--tenant', 'city-b']), 'audit table')).out;
  assert.match(table, /node-a +session-refused +refused +city-b +code=E_TENANT_ELSEWHERE/);
  const unknown = await kuraAsync(['vault', 'audit', '--config', b.config, '--node', 'node-z']);
  assert.equal(unknown.status, 64, unknown.stderr);

  // node-a starts again: what it wrote before the kill goes up first
  a = await startA();
  await waitFor('node-a\'s last line before the kill in the store', async () => sessionsOf((await auditOf(['--node', 'node-a'])).lines, 'node-a').has(last), 15_000, 250);
  const again = (await auditOf(['--node', 'node-a'])).lines;
  assert.equal(again.filter((l) => l.event === 'session-refused').length, 1, 'nothing shipped twice');
  assert.equal(again.filter((l) => l.event === 'session-start' && l.session === first).length, 1);
});

test('a bucket that does not answer stops no node: it serves on, the refusal it wrote meanwhile waits on its disk and goes up once the gateway is back', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = path.join(top, 'outage');
  mkdirSync(dir);
  const key = sshKey(dir, 'relay');
  // a long lease: the node goes on trusting it through the outage
  const a = await startNode(dir, rgw!, 'node-a', 'nodes-outage', key, { ttl: '60s' });
  t.after(() => a.stop());
  const cityA = agentConfigFor(dir, 'city-a', key, [a]);
  await ok(kuraAsync(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: cityA } }), 'a session (city-a taken on demand)');
  const file = path.join(a.root, 'audit.jsonl');
  const shipped = () => (existsSync(path.join(a.root, 'audit-shipped.json')) ? (JSON.parse(readFileSync(path.join(a.root, 'audit-shipped.json'), 'utf8')) as { offset: number }).offset : 0);
  await waitFor('node-a to have shipped its lines so far', () => shipped() === statSync(file).size, 15_000, 100);
  const stranger = sshKey(dir, 'stranger');
  const strangerCfg = agentConfigFor(dir, 'city-a', stranger, [a], 'stranger.yaml');
  await rgw!.stopGateway();
  let down = true;
  t.after(async () => {
    if (down) await rgw!.startGateway();
  });
  const refused = await kuraAsync(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: strangerCfg } });
  assert.equal(refused.status, 77, refused.stderr);
  await ok(kuraAsync(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: cityA } }), 'node-a serves city-a with the bucket down');
  await new Promise((r) => setTimeout(r, 2000));
  assert.ok(shipped() < statSync(file).size, 'the refusal waits on node-a\'s disk');
  assert.ok(a.audit().some((e) => e.event === 'auth' && e.outcome === 'refused'));
  await rgw!.startGateway();
  down = false;
  const inStore = async () => (JSON.parse((await ok(kuraAsync(['vault', 'audit', '--config', a.config, '--json', '--node', 'node-a']), 'kura vault audit')).out) as { lines: Array<Record<string, unknown>> }).lines;
  await waitFor('the refusal in the store', async () => (await inStore()).some((l) => l.event === 'auth' && l.outcome === 'refused'), 90_000, 500);
  assert.equal((await inStore()).filter((l) => l.event === 'auth' && l.outcome === 'refused').length, 1);
});
