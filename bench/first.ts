/**
 * bench/first: a first backup of one dump by kura and by Borg (lz4, its default, and zstd,3), the
 * tools in turn round after round so that load from elsewhere hits them alike.
 *   npm run bench:first -- --file DUMP [--runs 7] [--chunk-avg BYTES]
 * (a saved night: `npm run bench:daily -- --workload oltp --save-dumps DIR`, then DIR/day1.sql).
 * Each run backs up into a fresh copy of a repository initialized before the clock starts (for
 * Borg with its cache directory), every tool in the same small environment (measure.ts toolEnv).
 * Needs borgbackup and GNU time. Prints one JSON object per run
 * (wall and CPU seconds, peak RSS of the largest process, repository bytes: for kura also the store
 * alone, without the catalogue and list cache beside it), then a summary: each tool's medians, and
 * kura's time against Borg lz4's and its repository against Borg zstd,3's, round by round and
 * their medians. Not part of npm test.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { measurer, needCommands, toolEnv, type Run } from './measure.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const KURA = path.join(ROOT, 'bin', 'kura');
const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const file = arg('file');
const runs = Number(arg('runs') ?? 7);
const chunkAvg = arg('chunk-avg');
if (!file || !statSync(file, { throwIfNoEntry: false })?.isFile()) throw new Error('--file DUMP: a dump to back up (e.g. day1.sql of bench:daily --save-dumps)');
if (!(Number.isInteger(runs) && runs > 0)) throw new Error(`--runs is a whole number above 0, not ${arg('runs')}`);
needCommands('bench/first', [
  ['borg', 'borgbackup'],
  ['/usr/bin/time', 'time'],
]);

const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const round3 = (x: number) => +x.toFixed(3);

/** Bytes of the files below `dir`; `skip`: top-level names left out. */
function bytesBelow(dir: string, skip: ReadonlySet<string> = new Set()): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const rel = path.relative(dir, path.join(e.parentPath, e.name));
    if (!skip.has(rel.split(path.sep)[0]!)) n += statSync(path.join(e.parentPath, e.name)).size;
  }
  return n;
}

function run(cmd: string, args: string[], env: Record<string, string>): void {
  const r = spawnSync(cmd, args, { env: toolEnv(env), stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr.slice(-2000)}`);
}

const work = mkdtempSync(path.join(tmpdir(), 'kura-bench-first-'));
const timed = measurer(path.join(work, 'time'));
const kuraEnv = { KURA_PASSPHRASE: 'bench', KURA_LOG_LEVEL: 'warn' };
const borgEnv = (base: string) => ({ BORG_PASSPHRASE: 'bench', BORG_BASE_DIR: base, BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes' });
try {
  // the repositories every run starts from: made once, copied before each run
  const tpl = path.join(work, 'template');
  run(process.execPath, [KURA, 'repo', 'init', '--repo', path.join(tpl, 'kura')], kuraEnv);
  run('borg', ['init', '--encryption=repokey', path.join(tpl, 'borg')], borgEnv(path.join(tpl, 'borg-base')));
  const fresh = (name: string) => {
    const dir = path.join(work, 'run', name);
    rmSync(path.join(work, 'run'), { recursive: true, force: true });
    run('mkdir', ['-p', dir], {});
    run('cp', ['-a', path.join(tpl, name === 'kura' ? 'kura' : 'borg'), path.join(dir, 'repo')], {});
    if (name !== 'kura') run('cp', ['-a', path.join(tpl, 'borg-base'), path.join(dir, 'base')], {});
    return dir;
  };
  const tools: Record<string, (dir: string) => Run> = {
    kura: (dir) => timed(process.execPath, [KURA, 'backup', '--repo', path.join(dir, 'repo'), '--name', 'dump', '--file', file, ...(chunkAvg ? ['--chunk-avg', chunkAvg] : [])], kuraEnv),
    'borg-lz4': (dir) => timed('borg', ['create', '--compression', 'lz4', `${path.join(dir, 'repo')}::first`, file], borgEnv(path.join(dir, 'base'))),
    'borg-zstd3': (dir) => timed('borg', ['create', '--compression', 'zstd,3', `${path.join(dir, 'repo')}::first`, file], borgEnv(path.join(dir, 'base'))),
  };
  const names = Object.keys(tools);
  const results: Record<string, Array<Run & { repoBytes: number }>> = Object.fromEntries(names.map((n) => [n, []]));
  for (let round = 0; round < runs; round++) {
    // the order turns each round: no tool always runs right after another
    for (let k = 0; k < names.length; k++) {
      const tool = names[(round + k) % names.length]!;
      const dir = fresh(tool);
      const r = tools[tool]!(dir);
      const repoBytes = bytesBelow(path.join(dir, 'repo'));
      const line: Record<string, unknown> = { bench: 'first', round, tool, seconds: round3(r.seconds), cpuSeconds: round3(r.cpuSeconds), rssMiB: r.rssMiB, repoBytes };
      if (tool === 'kura') line.storeBytes = bytesBelow(path.join(dir, 'repo'), new Set(['catalogue.sqlite', 'catalogue.sqlite-wal', 'catalogue.sqlite-shm', 'cache']));
      emit(line);
      results[tool]!.push({ ...r, repoBytes });
    }
  }
  const perRound = (f: (i: number) => number) => median(Array.from({ length: runs }, (_, i) => f(i)));
  emit({
    bench: 'first-summary',
    file,
    bytes: statSync(file).size,
    runs,
    ...(chunkAvg ? { chunkAvg: Number(chunkAvg) } : {}),
    medians: Object.fromEntries(names.map((n) => [n, { seconds: round3(median(results[n]!.map((r) => r.seconds))), cpuSeconds: round3(median(results[n]!.map((r) => r.cpuSeconds))), rssMiB: median(results[n]!.map((r) => r.rssMiB)), repoBytes: median(results[n]!.map((r) => r.repoBytes)) }])),
    'kura-vs-borg-lz4-seconds': round3(perRound((i) => results.kura![i]!.seconds / results['borg-lz4']![i]!.seconds)),
    'kura-vs-borg-lz4-cpu': round3(perRound((i) => results.kura![i]!.cpuSeconds / results['borg-lz4']![i]!.cpuSeconds)),
    'kura-vs-borg-zstd3-repo': round3(perRound((i) => results.kura![i]!.repoBytes / results['borg-zstd3']![i]!.repoBytes)),
  });
} finally {
  rmSync(work, { recursive: true, force: true });
}
