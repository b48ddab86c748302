/**
 * bench/executable: the single executable (build/package/kura, from `npm run package`) against the
 * checkout (node bin/kura): its size, cold `kura --version` and backup throughput on the same
 * generated SQL-like dump. Runs alternate between the two so load from elsewhere hits both alike.
 *   npm run bench:executable [-- --mib 1024 --runs 15 --backups 3]
 * Prints one JSON object per line, then a summary line. Not part of npm test.
 */
import { spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sqlDump } from '../test/support/generate.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const EXE = path.join(ROOT, 'build', 'package', 'kura');
const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const MiB = 1 << 20;
const sizeMiB = arg('mib', 1024);
const runs = arg('runs', 15);
const backups = arg('backups', 3);
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
if (!existsSync(EXE)) throw new Error(`${EXE} not found: run npm run package first`);

const work = mkdtempSync(path.join(tmpdir(), 'kura-bench-exe-'));
const home = path.join(work, 'home');
mkdirSync(home, { mode: 0o700 });
const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, KURA_PASSPHRASE: 'bench', KURA_LOG_LEVEL: 'warn' };
const sides = {
  executable: (args: string[]) => [EXE, ...args],
  checkout: (args: string[]) => [process.execPath, path.join(ROOT, 'bin', 'kura'), ...args],
};
type Side = keyof typeof sides;
/** CPU seconds (user + system, from GNU time) of each run: on a machine shared with other work they vary less than wall time. */
const cpu: Record<Side, number[]> = { executable: [], checkout: [] };
function timed(side: Side, args: string[]): number {
  const [cmd, ...rest] = sides[side](args);
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', 'kura-cpu %U %S', cmd!, ...rest], { env, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${side} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  const m = /kura-cpu ([\d.]+) ([\d.]+)/.exec(r.stderr);
  if (m && args[0] === 'backup') cpu[side].push(Number(m[1]) + Number(m[2]));
  return s;
}

try {
  emit({ what: 'executable size', bytes: statSync(EXE).size, mib: Number((statSync(EXE).size / MiB).toFixed(1)) });
  // the first run of the executable writes its addons to the cache; later ones only check them
  timed('executable', ['--version', '--json']);
  const version: Record<Side, number[]> = { executable: [], checkout: [] };
  for (let i = 0; i < runs; i++) for (const side of ['checkout', 'executable'] as const) version[side].push(timed(side, ['--version']));
  const v = { executable: median(version.executable), checkout: median(version.checkout) };
  emit({ what: 'kura --version', runs, medianSeconds: v, ratio: Number((v.executable / v.checkout).toFixed(2)), seconds: version });

  const input = path.join(work, 'dump.sql');
  const ws = createWriteStream(input);
  for await (const b of sqlDump(2024, sizeMiB * MiB)) if (!ws.write(b)) await once(ws, 'drain');
  ws.end();
  await once(ws, 'finish');
  const backup: Record<Side, number[]> = { executable: [], checkout: [] };
  for (let i = 0; i < backups; i++) {
    for (const side of ['checkout', 'executable'] as const) {
      // a new repository each time: every chunk is new, so the whole pipeline runs
      const repo = path.join(work, `repo-${side}-${i}`);
      timed(side, ['repo', 'init', '--repo', repo]);
      backup[side].push(timed(side, ['backup', '--repo', repo, '--name', 'dump', '--file', input]));
      rmSync(repo, { recursive: true, force: true });
    }
  }
  const b = { executable: median(backup.executable), checkout: median(backup.checkout) };
  const mbs = (s: number) => Number((sizeMiB / s).toFixed(1));
  emit({ what: 'backup', mib: sizeMiB, runs: backups, medianSeconds: b, mibPerSecond: { executable: mbs(b.executable), checkout: mbs(b.checkout) }, seconds: backup, medianCpuSeconds: { executable: median(cpu.executable), checkout: median(cpu.checkout) }, cpuSeconds: cpu });
  console.log(`executable ${(statSync(EXE).size / MiB).toFixed(1)} MiB; --version ${v.executable.toFixed(3)} s vs ${v.checkout.toFixed(3)} s (${(v.executable / v.checkout).toFixed(2)}x); backup of ${sizeMiB} MiB ${mbs(b.executable)} vs ${mbs(b.checkout)} MiB/s`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
