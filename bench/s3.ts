/**
 * bench/s3: an agent repository in a bucket on a real one-node Ceph RGW against the same on a
 * local directory, printed as JSON lines (one per figure). Not part of npm test.
 *   npm run bench:s3 [-- --mib 1024 --rebuild-mib 400]
 * - backup: first backup of a generated SQL dump (`mib` MiB) with `kura backup --file`, wall time
 *   of the process, MB/s and peak RSS (GNU time), fs then s3; the ratio s3/fs
 * - rerun: the same dump again (nothing new to store)
 * - night: the same dump with one row in 40 changed all through it (a night of spread updates,
 *   stored as deltas), backed up after the first: wall time, peak RSS, MiB stored, and on s3 the
 *   packs it added and their mean size (small packs of deltas are gathered before their PUT)
 * - restore: `kura restore --to -` of the first backup into /dev/null, MB/s and peak RSS
 * - restore-night: the same of the night (its changed chunks deltas, their bases the first's)
 * - requests: PUT requests per GiB stored on s3, counted as the objects in the bucket (each went
 *   up as one PUT; the store's own counters live in the kura process), and the mean pack size
 * - rebuild: `kura repo rebuild-index` of an s3 repository of ~100 000 chunks (a dump of
 *   `rebuild-mib` MiB cut with 4 KiB average chunks), catalogue deleted first, no key
 * The gateway is warmed up first with `warm-mib` MiB of plain PUTs (deleted again): a one-node
 * cluster just booted spends far more CPU on its first few hundred MiB (measured: 4.1-4.3 CPU-s
 * of Ceph for a first backup's 284 MiB, against 2.2-2.6 once warm), and on two cores that CPU is
 * the backup's; a gateway in service is warm. --warm-mib 0 measures the cold one.
 */
import { spawn } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KURA, ROOT } from '../test/support/cli.js';
import { churn, sqlDump } from '../test/support/generate.js';
import { startRgw, type Rgw } from '../test/support/rgw.js';
import { BucketView } from '../test/support/s3util.js';

const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const MIB = arg('mib', 1024);
const REBUILD_MIB = arg('rebuild-mib', 400);
const WARM_MIB = arg('warm-mib', 512);
const ONLY_REBUILD = process.argv.includes('--only-rebuild');
const SKIP_REBUILD = process.argv.includes('--skip-rebuild');
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
const MB = 1e6;

/** A kura command run to completion under GNU time: its output, wall seconds and peak RSS (MiB). */
async function kura(args: string[], env: Record<string, string | undefined>, stdout: 'pipe' | 'ignore' = 'pipe'): Promise<{ out: string; seconds: number; rssMiB: number }> {
  const t0 = performance.now();
  const rssFile = path.join(dir, 'time.out');
  const child = spawn('/usr/bin/time', ['-f', '%M', '-o', rssFile, process.execPath, KURA, ...args], { cwd: ROOT, env: { ...process.env, KURA_PASSPHRASE: 'correct horse', KURA_LOG_FORMAT: 'json', ...env }, stdio: ['ignore', stdout, 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const [code] = (await once(child, 'exit')) as [number | null];
  const seconds = (performance.now() - t0) / 1000;
  if (code !== 0) throw new Error(`kura ${args.join(' ')} exited ${code}: ${err.slice(-2000)}`);
  return { out, seconds, rssMiB: +(Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop()) / 1024).toFixed(1) };
}

/** The dump of `seed`; with `changeEvery`, one row in that many has another income (the same length). */
async function writeDump(file: string, mib: number, seed: number, changeEvery = 0): Promise<void> {
  const ws = createWriteStream(file);
  for await (let b of sqlDump(seed, mib << 20)) {
    if (changeEvery > 0) b = churn(b, changeEvery, 0);
    if (!ws.write(b)) await once(ws, 'drain');
  }
  ws.end();
  await once(ws, 'finish');
}

const dir = mkdtempSync(path.join(tmpdir(), 'kura-bench-s3-'));
const rgw = await startRgw(path.join(dir, 'ceph'));
try {
  const s3cfg = (name: string, bucket: string) => {
    const f = path.join(dir, `${name}.yaml`);
    writeFileSync(f, `repository:\n  type: s3\n  path: ${path.join(dir, name)}\n  endpoint: ${rgw.endpoint}\n  bucket: ${bucket}\n  prefix: "${name}/"\n`);
    return f;
  };
  if (WARM_MIB > 0) await warmUp(rgw);
  if (!ONLY_REBUILD) await backupFigures(s3cfg);
  if (!SKIP_REBUILD) await rebuildFigure(s3cfg);
} finally {
  await rgw.stop();
  rmSync(dir, { recursive: true, force: true });
}

/** Plain PUTs of 4 MiB objects, 4 in flight, into a scratch bucket, deleted again. */
async function warmUp(gw: Rgw): Promise<void> {
  const { CreateBucketCommand } = await import('@aws-sdk/client-s3');
  const view = new BucketView(gw, 'warm-up');
  await view.client.send(new CreateBucketCommand({ Bucket: 'warm-up' }));
  const body = Buffer.alloc(4 << 20);
  for (let i = 0; i < body.length; i += 4) body.writeUInt32LE((i * 2654435761) >>> 0, i);
  const t0 = performance.now();
  let next = 0;
  const n = Math.ceil(WARM_MIB / 4);
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      for (let i = next++; i < n; i = next++) await view.put(`w/${i}`, body);
    }),
  );
  for (let i = 0; i < n; i++) await view.delete(`w/${i}`);
  emit({ bench: 's3', figure: 'warm-up', MiB: n * 4, seconds: +((performance.now() - t0) / 1000).toFixed(2) });
  view.close();
}

async function backupFigures(s3cfg: (name: string, bucket: string) => string): Promise<void> {
  const dump = path.join(dir, 'dump.sql');
  await writeDump(dump, MIB, 7);
  const night = path.join(dir, 'night.sql');
  await writeDump(night, MIB, 7, 40);
  const bytes = statSync(dump).size;
  const view = new BucketView(rgw, 'bench');
  const targets: Array<{ backend: string; env: Record<string, string | undefined>; args: string[] }> = [
    { backend: 'fs', env: {}, args: ['--repo', path.join(dir, 'fs-repo')] },
    { backend: 's3', env: { ...rgw.env, KURA_CONFIG: s3cfg('s3-repo', 'bench') }, args: [] },
  ];
  const first: Record<string, number> = {};
  for (const t of targets) {
    await kura(['repo', 'init', ...t.args], t.env);
    const b = await kura(['backup', ...t.args, '--name', 'dump', '--file', dump, '--json'], t.env);
    const r = JSON.parse(b.out.trim().split('\n').pop()!) as { id: string; newBytes: number; chunks: number; seconds: number };
    first[t.backend] = bytes / MB / b.seconds;
    emit({ bench: 's3', figure: 'first-backup', backend: t.backend, inputMiB: MIB, wallSeconds: +b.seconds.toFixed(2), MBps: +(bytes / MB / b.seconds).toFixed(1), rssMiB: b.rssMiB, storedMiB: +(r.newBytes / 2 ** 20).toFixed(1), chunks: r.chunks });
    const again = await kura(['backup', ...t.args, '--name', 'dump', '--file', dump, '--json'], t.env);
    const r2 = JSON.parse(again.out.trim().split('\n').pop()!) as { newBytes: number };
    emit({ bench: 's3', figure: 'unchanged-rerun', backend: t.backend, wallSeconds: +again.seconds.toFixed(2), MBps: +(bytes / MB / again.seconds).toFixed(1), newBytes: r2.newBytes });
    const packsBefore = t.backend === 's3' ? (await view.keys('s3-repo/packs/')).length : 0;
    const n = await kura(['backup', ...t.args, '--name', 'dump', '--file', night, '--json'], t.env);
    const rn = JSON.parse(n.out.trim().split('\n').pop()!) as { id: string; newBytes: number };
    const packs = t.backend === 's3' ? (await view.keys('s3-repo/packs/')).length - packsBefore : undefined;
    emit({ bench: 's3', figure: 'night', backend: t.backend, wallSeconds: +n.seconds.toFixed(2), rssMiB: n.rssMiB, storedMiB: +(rn.newBytes / 2 ** 20).toFixed(2), packs, meanPackMiB: packs ? +(rn.newBytes / packs / 2 ** 20).toFixed(2) : undefined });
    const rs = await kura(['restore', ...t.args, r.id, '--to', '-'], t.env, 'ignore');
    emit({ bench: 's3', figure: 'restore', backend: t.backend, wallSeconds: +rs.seconds.toFixed(2), MBps: +(bytes / MB / rs.seconds).toFixed(1), rssMiB: rs.rssMiB });
    const rsn = await kura(['restore', ...t.args, rn.id, '--to', '-'], t.env, 'ignore');
    emit({ bench: 's3', figure: 'restore-night', backend: t.backend, wallSeconds: +rsn.seconds.toFixed(2), MBps: +(statSync(night).size / MB / rsn.seconds).toFixed(1), rssMiB: rsn.rssMiB });
  }
  emit({ bench: 's3', figure: 'first-backup-ratio', s3OverFs: +(first.s3! / first.fs!).toFixed(2), target: 0.7 });

  const packs = await view.keys('s3-repo/packs/');
  const stored = await view.bytes('s3-repo/');
  const objects = (await view.keys('s3-repo/')).length;
  emit({ bench: 's3', figure: 'requests', objects, packs: packs.length, storedMiB: +(stored / 2 ** 20).toFixed(1), putsPerGiBStored: +(objects / (stored / 2 ** 30)).toFixed(0), meanPackMiB: +(stored / packs.length / 2 ** 20).toFixed(2), target: 300 });
  view.close();
  rmSync(dump);
  rmSync(night);
}

/** rebuild of a repository of ~100 000 chunks, from the bucket alone */
async function rebuildFigure(s3cfg: (name: string, bucket: string) => string): Promise<void> {
  const small = path.join(dir, 'small.sql');
  await writeDump(small, REBUILD_MIB, 9);
  const env = { ...rgw.env, KURA_CONFIG: s3cfg('rebuild', 'bench') };
  await kura(['repo', 'init', '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384'], env);
  const b = JSON.parse((await kura(['backup', '--name', 'dump', '--file', small, '--json'], env)).out.trim().split('\n').pop()!) as { chunks: number };
  rmSync(path.join(dir, 'rebuild', 'catalogue.sqlite'));
  const rb = await kura(['repo', 'rebuild-index', '--json'], { ...env, KURA_PASSPHRASE: undefined });
  const res = JSON.parse(rb.out.trim().split('\n').pop()!) as { chunks: number; snapshots: number };
  emit({ bench: 's3', figure: 'rebuild-index', backend: 's3', chunks: res.chunks, snapshotChunks: b.chunks, wallSeconds: +rb.seconds.toFixed(2) });
}
