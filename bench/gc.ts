/**
 * bench/gc: garbage collection and retention planning at scale, printed as JSON lines.
 *   npm run bench:gc [-- --chunks 1000000 --snapshots 20 --prune 6]
 * - build: a synthetic keyless repository (a vault tenant's) with `chunks` chunks of 128..383
 *   bytes in packs of 250, assigned to packs in random order, and `snapshots` overlapping
 *   snapshots; the oldest `prune` are then removed, so the dead chunks are scattered over
 *   nearly every pack (the expensive case: almost every pack is rewritten)
 * - gc: wall time of the whole `kura gc` process and its peak RSS (VmHWM from /proc)
 * - plan: planRetention over 10 000 snapshots (daily/weekly/monthly/yearly, Asia/Tokyo)
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KURA, ROOT } from '../test/support/cli.js';
import { Prng } from '../test/support/generate.js';
import { Repository } from '../src/repository/repository.js';
import { encodePack } from '../src/repository/pack.js';
import type { ChunkRow } from '../src/repository/catalogue.js';
import { encodeSnapshot } from '../src/repository/snapshot.js';
import { packName, snapshotName } from '../src/store/backend.js';
import { planRetention } from '../src/retention/plan.js';

const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const CHUNKS = arg('chunks', 1_000_000);
const SNAPSHOTS = arg('snapshots', 20);
const PRUNE = arg('prune', 6);
const PER_PACK = 250;
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');

function peakRssMiB(pid: number): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

async function buildRepository(dir: string): Promise<void> {
  const t0 = performance.now();
  const repo = await Repository.initKeyless(dir);
  const r = new Prng(42);
  const ids: Buffer[] = new Array(CHUNKS);
  for (let i = 0; i < CHUNKS; i++) ids[i] = randomBytes(32);
  // packs hold chunks in random order, so retention frees chunks scattered over every pack
  const order = Array.from({ length: CHUNKS }, (_, i) => i);
  for (let i = CHUNKS - 1; i > 0; i--) {
    const j = r.next() % (i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const rows: ChunkRow[] = [];
  for (let p = 0; p < CHUNKS; p += PER_PACK) {
    const members = order.slice(p, p + PER_PACK);
    const blobs = members.map(() => randomBytes(128 + (r.next() & 255)));
    const pack = encodePack(
      blobs,
      members.map((m) => ids[m]!),
    );
    await repo.store.put(packName(pack.id), pack.bytes);
    pack.entries.forEach((e) => rows.push({ id: e.id, pack: pack.id, offset: e.offset, storedSize: e.length, plainSize: e.length }));
    if (rows.length >= 100_000) repo.catalogue.addChunks(rows.splice(0));
  }
  repo.catalogue.addChunks(rows.splice(0));
  // overlapping windows: snapshot k uses chunks [k*step, k*step + width)
  const step = Math.floor(CHUNKS / (SNAPSHOTS + 8));
  const width = CHUNKS - step * (SNAPSHOTS - 1);
  const key = randomBytes(32);
  for (let k = 0; k < SNAPSHOTS; k++) {
    const list = Buffer.concat(ids.slice(k * step, k * step + width));
    const end = new Date(Date.UTC(2026, 10, 1 + k, 16)).toISOString();
    const header = { tenant: 'bench', source: 'juki', host: 'bench', startTime: end, endTime: end, logicalBytes: width * 65536, chunkCount: width, newChunks: 0, newBytes: 0, parent: null, tags: [] };
    const snap = encodeSnapshot(header, list, {}, key);
    await repo.store.putIfAbsent(snapshotName(snap.id), snap.bytes);
    repo.catalogue.addSnapshot(snap.id, header);
  }
  await repo.store.sync();
  // retention removed the oldest generations
  const snaps = repo.catalogue.snapshots();
  for (const s of snaps.slice(0, PRUNE)) {
    await repo.store.delete(snapshotName(s.id));
    repo.catalogue.removeSnapshot(s.id);
  }
  await repo.store.sync();
  repo.close();
  emit({ bench: 'gc-build', chunks: CHUNKS, packs: Math.ceil(CHUNKS / PER_PACK), snapshots: SNAPSHOTS - PRUNE, chunksPerSnapshot: width, pruned: PRUNE, seconds: +((performance.now() - t0) / 1000).toFixed(1) });
}

async function timeGc(dir: string): Promise<void> {
  const t0 = performance.now();
  const child = spawn(process.execPath, [KURA, 'gc', '--repo', dir, '--json'], { cwd: ROOT, env: { ...process.env, KURA_PASSPHRASE: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let peak = 0;
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const sampler = setInterval(() => (peak = Math.max(peak, peakRssMiB(child.pid!) ?? 0)), 20);
  const [code] = (await once(child, 'exit')) as [number];
  clearInterval(sampler);
  if (code !== 0) throw new Error(`kura gc exited ${code}: ${err}`);
  const r = JSON.parse(out) as Record<string, number>;
  emit({
    bench: 'gc',
    chunks: CHUNKS,
    seconds: +((performance.now() - t0) / 1000).toFixed(2),
    peakRssMiB: Math.round(peak),
    chunksRemoved: r.chunksRemoved,
    packsRewritten: r.packsRewritten,
    packsDeleted: r.packsDeleted,
    packsWritten: r.packsWritten,
    bytesFreed: r.bytesFreed,
    targetSeconds: 60,
  });
}

function timePlan(): void {
  const items = Array.from({ length: 10_000 }, (_, i) => ({ id: i.toString(16).padStart(8, '0'), time: new Date(Date.UTC(2026, 10, 23, 16) - i * 3 * 3_600_000).toISOString() }));
  const policy = { keepLast: 3, keepHourly: 24, keepDaily: 14, keepWeekly: 8, keepMonthly: 24, keepYearly: 10, keepWithin: '2d' };
  planRetention(items.slice(0, 100), policy, new Date(), 'Asia/Tokyo'); // warm-up
  const t0 = performance.now();
  const plan = planRetention(items, policy, new Date('2026-11-24T00:00:00Z'), 'Asia/Tokyo');
  const ms = performance.now() - t0;
  emit({ bench: 'prune-plan', snapshots: items.length, kept: plan.filter((d) => d.keep).length, ms: +ms.toFixed(1), targetMs: 1000 });
}

timePlan();
const dir = mkdtempSync(path.join(tmpdir(), 'kura-bench-gc-'));
try {
  await buildRepository(dir);
  await timeGc(dir);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
