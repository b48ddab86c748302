/**
 * bench/takeover: how long a vault node takes to take over a tenant of ~100 000 chunks from a
 * node killed with kill -9, on a real one-node Ceph RGW, two real `kura vault serve` nodes on one
 * bucket (vault.node). Prints JSON lines. Not part of npm test.
 *   npm run bench:takeover [-- --mib 430 --ttl 10s]
 * - the tenant: a repository written straight into the tenant's place in the bucket
 *   (<prefix>tenants/city-a/) by `kura backup` of a `mib` MiB dump cut with 4 KiB average chunks
 * - takeover: from the kill of the holder to the audit line of the other node saying it holds the
 *   tenant with its catalogue rebuilt from the bucket (lease expiry: TTL + 1 s by the store's
 *   clock after the last renewal; then the rebuild); the rebuild's own time from that line
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KURA, ROOT } from '../test/support/cli.js';
import { sqlDump } from '../test/support/generate.js';
import { startRgw } from '../test/support/rgw.js';

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : def;
};
const MIB = Number(arg('mib', '430'));
const TTL = arg('ttl', '10s');
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');

async function kura(args: string[], env: Record<string, string | undefined>): Promise<string> {
  const child = spawn(process.execPath, [KURA, ...args], { cwd: ROOT, env: { ...process.env, KURA_PASSPHRASE: 'correct horse', KURA_LOG_FORMAT: 'json', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`kura ${args.join(' ')} exited ${code}: ${err.slice(-2000)}`);
  return out;
}

const audit = (root: string) =>
  existsSync(path.join(root, 'audit.jsonl'))
    ? readFileSync(path.join(root, 'audit.jsonl'), 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>)
    : [];

async function until(what: string, cond: () => boolean, timeoutMs: number, everyMs = 50): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const dir = mkdtempSync(path.join(tmpdir(), 'kura-bench-takeover-'));
const rgw = await startRgw(path.join(dir, 'ceph'));
const nodes: ChildProcess[] = [];
try {
  const env = { ...rgw.env };
  Object.assign(process.env, env);
  // the tenant's repository, written where vault.storage keeps tenant city-a
  const agent = path.join(dir, 'agent.yaml');
  writeFileSync(agent, `repository:\n  type: s3\n  path: ${path.join(dir, 'agent')}\n  endpoint: ${rgw.endpoint}\n  bucket: bench-nodes\n  prefix: "dc-a/tenants/city-a/"\n`);
  await kura(['repo', 'init', '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384'], { KURA_CONFIG: agent });
  const dump = path.join(dir, 'dump.sql');
  const ws = createWriteStream(dump);
  for await (const b of sqlDump(11, MIB << 20)) if (!ws.write(b)) await once(ws, 'drain');
  ws.end();
  await once(ws, 'finish');
  const backup = JSON.parse((await kura(['backup', '--name', 'dump', '--file', dump, '--json'], { KURA_CONFIG: agent })).trim().split('\n').pop()!) as { chunks: number };
  rmSync(dump);

  const start = async (id: string): Promise<{ root: string; child: ChildProcess }> => {
    const root = path.join(dir, id);
    mkdirSync(root);
    const config = path.join(dir, `${id}.yaml`);
    writeFileSync(config, `vault:\n  listen: { host: 127.0.0.1, port: 0 }\n  root: ${root}\n  storage: { type: s3, endpoint: ${rgw.endpoint}, bucket: bench-nodes, prefix: "dc-a/" }\n  node: { id: ${id}, leaseTtl: ${TTL} }\n  tenants:\n    city-a: {}\n`);
    const child = spawn(process.execPath, [KURA, 'vault', 'serve', '--config', config], { cwd: ROOT, env: { ...process.env, KURA_LOG_FORMAT: 'json' }, stdio: ['ignore', 'pipe', 'ignore'] });
    nodes.push(child);
    await once(child.stdout!, 'data');
    return { root, child };
  };
  // node-a holds the tenant (it is first in city-a's order over node-a and node-b)
  const a = await start('node-a');
  await until('node-a to take city-a', () => audit(a.root).some((e) => e.event === 'tenant-taken'), 600_000);
  const first = audit(a.root).find((e) => e.event === 'tenant-taken')!;
  const b = await start('node-b');
  await new Promise((r) => setTimeout(r, 3000)); // node-b sees node-a's lease live
  const killedAt = Date.now();
  a.child.kill('SIGKILL');
  await until('node-b to take city-a', () => audit(b.root).some((e) => e.event === 'tenant-taken'), 600_000);
  const took = audit(b.root).find((e) => e.event === 'tenant-taken')!;
  const seconds = (Date.parse(String(took.time)) - killedAt) / 1000;
  emit({
    bench: 'takeover',
    figure: 'takeover',
    leaseTtl: TTL,
    chunks: took.chunks,
    snapshotChunks: backup.chunks,
    firstOpenSeconds: first.seconds,
    takeoverSeconds: +seconds.toFixed(2),
    rebuildSeconds: took.seconds,
    leaseExpirySeconds: +(seconds - Number(took.seconds)).toFixed(2),
    targetSeconds: 30,
  });
} finally {
  for (const c of nodes) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await rgw.stop();
  rmSync(dir, { recursive: true, force: true });
}
