/**
 * bench/pipeline: figures for the backup pipeline on a generated SQL-like dump.
 *   npm run bench:pipeline [-- --mib 1024 --level 3]
 * Prints one JSON object per line (machine-readable), then a summary line. Not part of npm test.
 */
import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { FastCdc, defaultChunkerParams } from '../src/chunker/fastcdc.js';
import { chunkId } from '../src/crypto/blob.js';
import { sqlDump } from '../test/support/generate.js';

const require = createRequire(import.meta.url);
const zstd = require('zstd-napi') as typeof import('zstd-napi');
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const KURA = path.join(ROOT, 'bin/kura');

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}

const MiB = 1 << 20;
const sizeMiB = arg('mib', 1024);
const level = arg('level', 3);
const bytes = sizeMiB * MiB;
const work = mkdtempSync(path.join(tmpdir(), 'kura-bench-'));
const input = path.join(work, 'dump.sql');
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
const mbps = (n: number, s: number) => Number((n / s / 1e6).toFixed(1));

async function generate(): Promise<void> {
  const ws = createWriteStream(input);
  for await (const b of sqlDump(2024, bytes)) if (!ws.write(b)) await once(ws, 'drain');
  ws.end();
  await once(ws, 'finish');
}

async function stage(name: string, perChunk: ((c: Buffer) => void) | null, quiet = false): Promise<number> {
  const seed = Buffer.alloc(32, 1);
  const key = Buffer.alloc(32, 2);
  const cdc = new FastCdc(defaultChunkerParams, seed);
  const chunks: Buffer[] = [];
  let seconds = 0;
  for await (const b of createReadStream(input, { highWaterMark: MiB })) {
    const t = process.hrtime.bigint();
    cdc.push(b as Buffer, (c) => (perChunk ? chunks.push(c) : undefined));
    if (perChunk) {
      for (const c of chunks) perChunk(c);
      chunks.length = 0;
    }
    seconds += Number(process.hrtime.bigint() - t) / 1e9;
  }
  cdc.finish(() => {});
  if (!quiet) emit({ stage: name, bytes, seconds: Number(seconds.toFixed(3)), MBps: mbps(bytes, seconds) });
  void key;
  return seconds;
}

/** Runs kura as an operator would and samples its peak RSS (VmHWM) from /proc. */
async function timedKura(args: string[]): Promise<{ seconds: number; peakRssMiB: number; json: Record<string, unknown> }> {
  const t = process.hrtime.bigint();
  const child = spawn(process.execPath, [KURA, ...args], { env: { ...process.env, KURA_PASSPHRASE: 'bench' }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  let peak = 0;
  const sample = () => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) / 1024);
    } catch {
      /* exited */
    }
  };
  const timer = setInterval(sample, 20);
  const [code] = (await once(child, 'exit')) as [number];
  clearInterval(timer);
  if (code !== 0) throw new Error(`kura ${args.join(' ')} exited ${code}`);
  return { seconds: Number(process.hrtime.bigint() - t) / 1e9, peakRssMiB: Math.round(peak), json: JSON.parse(out.trim().split('\n').pop() ?? '{}') };
}

try {
  let t = process.hrtime.bigint();
  await generate();
  emit({ stage: 'generate', bytes, seconds: Number((Number(process.hrtime.bigint() - t) / 1e9).toFixed(3)) });
  await stage('warm-up', null, true); // JIT and page cache, so the differences below are fair
  const tChunk = await stage('chunk', null);
  const key = Buffer.alloc(32, 2);
  const tHash = await stage('chunk+hash', (c) => chunkId(key, c));
  const cx = new zstd.Compressor();
  cx.setParameters({ compressionLevel: level });
  const tZstd = await stage(`chunk+compress(zstd ${level}, 1 thread)`, (c) => cx.compress(c));
  // the stages alone, by difference (same input, same chunks)
  emit({ stage: 'hash (keyed BLAKE3) alone', bytes, seconds: Number((tHash - tChunk).toFixed(3)), MBps: mbps(bytes, tHash - tChunk) });
  emit({ stage: `compress (zstd ${level}, 1 thread) alone`, bytes, seconds: Number((tZstd - tChunk).toFixed(3)), MBps: mbps(bytes, tZstd - tChunk) });

  const repo = path.join(work, 'repo');
  await timedKura(['repo', 'init', '--repo', repo, '--compression', String(level), '--json']);
  const first = await timedKura(['backup', '--repo', repo, '--name', 'bench', '--file', input, '--json']);
  emit({ stage: 'backup first', bytes, seconds: Number(first.seconds.toFixed(3)), MBps: mbps(bytes, first.seconds), peakRssMiB: first.peakRssMiB, newBytes: first.json.newBytes, chunks: first.json.chunks });
  const rerun = await timedKura(['backup', '--repo', repo, '--name', 'bench', '--file', input, '--json']);
  emit({ stage: 'backup unchanged rerun', bytes, seconds: Number(rerun.seconds.toFixed(3)), MBps: mbps(bytes, rerun.seconds), peakRssMiB: rerun.peakRssMiB, newBytes: rerun.json.newBytes });
  t = process.hrtime.bigint();
  const restore = await timedKura(['restore', '--repo', repo, 'latest:bench', '--to', path.join(work, 'restored.sql'), '--json']);
  emit({ stage: 'restore', bytes, seconds: Number(restore.seconds.toFixed(3)), MBps: mbps(bytes, restore.seconds), peakRssMiB: restore.peakRssMiB });
  emit({ summary: true, inputMiB: sizeMiB, level, firstMBps: mbps(bytes, first.seconds), rerunMBps: mbps(bytes, rerun.seconds), peakRssMiB: Math.max(first.peakRssMiB, rerun.peakRssMiB), targets: { firstMBps: 250, rerunMBps: 500, peakRssMiB: 300 } });
} finally {
  rmSync(work, { recursive: true, force: true });
}
