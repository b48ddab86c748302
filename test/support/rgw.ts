import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';

/**
 * A one-node Ceph cluster with a RADOS Gateway, started by a test inside its own directory
 * (../shared/docs/ceph-rgw.md): mon → mgr → osd (bluestore on a sparse file) → radosgw on
 * 127.0.0.1, then an S3 user. Only the PIDs started here are ever signalled.
 */
export interface Rgw {
  endpoint: string;
  port: number;
  accessKeyId: string;
  secretAccessKey: string;
  dir: string;
  /** environment for a kura child process: the AWS variables the s3 backend reads */
  env: Record<string, string>;
  /** stop the gateway alone (the cluster keeps running); startGateway() brings it back on the same port */
  stopGateway(): Promise<void>;
  startGateway(): Promise<void>;
  stop(): Promise<void>;
}

const TOOLS = ['ceph-mon', 'ceph-mgr', 'ceph-osd', 'radosgw', 'radosgw-admin', 'ceph-authtool', 'monmaptool', 'ceph'];

export function rgwAvailable(): boolean {
  return TOOLS.every((t) => spawnSync('sh', ['-c', `command -v ${t}`], { stdio: 'ignore' }).status === 0);
}

/**
 * Skip (or, under CI=true, fail) a test when Ceph is not installed: a missing RGW never passes
 * a CI run silently.
 */
export function rgwOrSkip(t: { skip: (why: string) => void }): boolean {
  if (rgwAvailable()) return true;
  const why = 'Ceph RGW is not installed (scripts/ensure-deps.mjs installs radosgw, ceph-mon, ceph-osd, ceph-mgr)';
  if (process.env.CI === 'true') throw new Error(why);
  t.skip(why);
  return false;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function run(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { input: input ?? '', encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

async function runAsync(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  clearTimeout(timer);
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${code}): ${err}${out}`);
  return out;
}

async function waitUntil(what: string, cond: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`Ceph test cluster: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function httpOk(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2000) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

export async function startRgw(dir: string, opts: { objectStore?: 'bluestore' | 'memstore' } = {}): Promise<Rgw> {
  const d = (...p: string[]) => path.join(dir, ...p);
  for (const sub of ['run', 'log', 'crash', 'tmp', 'mon/ceph-a', 'mgr/ceph-x', 'osd/ceph-0', 'rgw']) mkdirSync(d(sub), { recursive: true });
  const monPort = await freePort();
  const rgwPort = await freePort();
  const fsid = randomUUID();
  const conf = d('ceph.conf');
  const rgwName = 'client.rgw.kura';
  writeFileSync(
    conf,
    `[global]
fsid = ${fsid}
mon host = [v2:127.0.0.1:${monPort}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
run dir = ${d('run')}
admin socket = ${d('run')}/$cluster-$name.asok
pid file = ${d('run')}/$name.pid
log file = ${d('log')}/$name.log
crash dir = ${d('crash')}
tmp dir = ${d('tmp')}
mon cluster log file = ${d('log')}/cluster.log
paxos propose interval = 0.1
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon warn on pool no redundancy = false
osd memory target = 1073741824
osd op num shards = 2
osd op num threads per shard = 1
osd objectstore = ${opts.objectStore ?? 'bluestore'}
bluestore block create = true
bluestore block size = 8589934592
memstore device bytes = 4294967296
osd data = ${d('osd')}/$cluster-$id
mon data = ${d('mon')}/$cluster-$id
mgr data = ${d('mgr')}/$cluster-$id

[mon.a]
keyring = ${d('mon.keyring')}
[mgr.x]
keyring = ${d('mgr.keyring')}
[osd.0]
keyring = ${d('osd', 'ceph-0', 'keyring')}
[client.admin]
keyring = ${d('admin.keyring')}
[${rgwName}]
keyring = ${d('rgw.keyring')}
rgw data = ${d('rgw')}
rgw frontends = beast endpoint=127.0.0.1:${rgwPort}
log file = ${d('log')}/rgw.log
`,
  );
  const key = (file: string, name: string, caps: string[]) => run('ceph-authtool', ['--create-keyring', file, '--gen-key', '-n', name, ...caps]);
  key(d('mon.keyring'), 'mon.', ['--cap', 'mon', 'allow *']);
  key(d('admin.keyring'), 'client.admin', ['--cap', 'mon', 'allow *', '--cap', 'osd', 'allow *', '--cap', 'mgr', 'allow *', '--cap', 'mds', 'allow *']);
  key(d('mgr.keyring'), 'mgr.x', ['--cap', 'mon', 'allow profile mgr', '--cap', 'osd', 'allow *', '--cap', 'mds', 'allow *']);
  key(d('rgw.keyring'), rgwName, ['--cap', 'mon', 'allow rw', '--cap', 'osd', 'allow rwx', '--cap', 'mgr', 'allow rw']);
  for (const k of ['admin.keyring', 'mgr.keyring', 'rgw.keyring']) run('ceph-authtool', [d('mon.keyring'), '--import-keyring', d(k)]);
  run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monPort}]`, d('monmap')]);
  run('ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', d('monmap'), '--keyring', d('mon.keyring')]);

  const children: ChildProcess[] = [];
  const daemon = (cmd: string, args: string[]): ChildProcess => {
    const c = spawn(cmd, ['-f', '-c', conf, ...args], { stdio: 'ignore' });
    children.push(c);
    return c;
  };
  const ceph = (args: string[], timeoutMs?: number) => runAsync('ceph', ['-c', conf, '-n', 'client.admin', '--connect-timeout', '20', ...args], timeoutMs);
  let gateway: ChildProcess | null = null;
  const startGateway = async () => {
    gateway = daemon('radosgw', ['-n', rgwName]);
    await waitUntil('the gateway to answer', () => httpOk(rgwPort), 60_000);
  };
  const stopProc = async (c: ChildProcess, graceMs = 10_000) => {
    if (c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
    await gone;
    clearTimeout(t);
  };
  const stop = async () => {
    await Promise.all(children.map((c) => stopProc(c)));
  };
  try {
    daemon('ceph-mon', ['-i', 'a']);
    await ceph(['status'], 60_000);
    daemon('ceph-mgr', ['-i', 'x']);
    const osdUuid = randomUUID();
    const osdSecret = run('ceph-authtool', ['--gen-print-key']).trim();
    writeFileSync(d('osd-secret.json'), JSON.stringify({ cephx_secret: osdSecret }));
    const osdId = (await ceph(['osd', 'new', osdUuid, '-i', d('osd-secret.json')])).trim();
    if (osdId !== '0') throw new Error(`unexpected OSD id ${osdId}`);
    writeFileSync(d('osd', 'ceph-0', 'keyring'), `[osd.0]\n\tkey = ${osdSecret}\n`);
    await runAsync('ceph-osd', ['-c', conf, '-i', '0', '--mkfs', '--osd-uuid', osdUuid]);
    daemon('ceph-osd', ['-i', '0']);
    await startGateway();
    const accessKeyId = randomBytes(10).toString('hex').toUpperCase();
    const secretAccessKey = randomBytes(20).toString('base64url');
    await runAsync('radosgw-admin', ['-c', conf, '-n', 'client.admin', 'user', 'create', '--uid', 'kura', '--display-name', 'kura tests', '--access-key', accessKeyId, '--secret', secretAccessKey]);
    const endpoint = `http://127.0.0.1:${rgwPort}`;
    return {
      endpoint,
      port: rgwPort,
      accessKeyId,
      secretAccessKey,
      dir,
      env: { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey, AWS_REGION: 'us-east-1' },
      stopGateway: async () => {
        if (gateway) await stopProc(gateway, 5_000);
        gateway = null;
      },
      startGateway,
      stop,
    };
  } catch (e) {
    await stop();
    const log = (f: string) => (existsSync(d('log', f)) ? readFileSync(d('log', f), 'utf8').split('\n').slice(-15).join('\n') : '');
    throw new Error(`${(e as Error).message}\n--- rgw.log ---\n${log('rgw.log')}\n--- osd.0.log ---\n${log('osd.0.log')}`);
  }
}

/**
 * One gateway for a test file: before its tests, a scratch directory (named from `prefix`) and,
 * where Ceph is installed, a gateway in it whose AWS variables the processes the tests start
 * inherit; after them, both gone. `set` is told the gateway (null without Ceph: the tests skip,
 * or fail under CI, through rgwOrSkip) and the directory.
 */
export function useRgw(prefix: string, set: (rgw: Rgw | null, dir: string) => void): void {
  let rgw: Rgw | null = null;
  let dir = '';
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), prefix));
    if (rgwAvailable()) {
      rgw = await startRgw(path.join(dir, 'ceph'));
      Object.assign(process.env, rgw.env);
    }
    set(rgw, dir);
  });
  after(async () => {
    await rgw?.stop();
    rmSync(dir, { recursive: true, force: true });
  });
}
