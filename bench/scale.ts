/**
 * bench/scale: peak memory and time as the dump grows, kura beside restic and Borg. Two saved
 * nights (DIR/day1.sql and DIR/day2.sql, as `npm run bench:daily -- --workload oltp --save-dumps
 * DIR` leaves them) are made N times larger: N copies one after the other, each line prefixed by
 * its copy's number, so that no chunk repeats another copy's and night 2 changes every copy the
 * way day 2 changed day 1. For each `--copies` N every tool (kura with the repository's defaults,
 * restic, Borg with lz4 and with zstd,3) backs up night 1, then night 2, into a fresh repository
 * of its own, and restores night 2 to standard output redirected to /dev/null.
 *
 *   npm run bench:scale -- --dumps DIR [--copies 1,4,16]
 *
 * The nights are written to a temporary directory first (2 × N × the dump: 16 GB at N = 16 for
 * bench/daily's OLTP dump) so that every tool reads the same files from the page cache and disk.
 * Prints JSON lines: one per copies, tool and step (seconds, peak RSS in MiB of the command's
 * largest process from GNU time, dump bytes), then a summary of each tool's peak RSS by size.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, linkSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KURA } from '../test/support/cli.js';
import { measurer, needCommands, type Run } from './measure.js';

const argv = process.argv;
const arg = (name: string, def: string) => {
  const i = argv.indexOf(`--${name}`);
  return i > 0 ? argv[i + 1]! : def;
};
const DUMPS = arg('dumps', '');
const COPIES = arg('copies', '1,4,16').split(',').map(Number);
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');

if (!DUMPS) {
  process.stderr.write('bench/scale needs --dumps DIR with day1.sql and day2.sql (npm run bench:daily -- --workload oltp --save-dumps DIR)\n');
  process.exit(64);
}
if (COPIES.some((n) => !Number.isInteger(n) || n < 1)) {
  process.stderr.write(`--copies takes whole numbers from 1, comma-separated, not ${arg('copies', '')}\n`);
  process.exit(64);
}
needCommands('bench/scale', [
  ['restic', 'restic'],
  ['borg', 'borgbackup'],
  ['/usr/bin/time', 'time'],
]);

const dir = mkdtempSync(path.join(tmpdir(), 'kura-bench-scale-'));
const measured = measurer(path.join(dir, 'rss'));
const rounded = (r: Run) => ({ ...r, seconds: +r.seconds.toFixed(2) });
const shell = (line: string, env: Record<string, string> = {}) => measured('bash', ['-o', 'pipefail', '-c', line], env);

/** `copies` copies of `from`, each line prefixed by `c<copy> `, written to `to`, flushed to disk. */
function enlarge(from: string, copies: number, to: string): number {
  const src = readFileSync(from);
  const out = openSync(to, 'w');
  try {
    for (let c = 1; c <= copies; c++) {
      const prefix = Buffer.from(`c${c} `);
      const parts: Buffer[] = [];
      let size = 0;
      let at = 0;
      while (at < src.length) {
        const nl = src.indexOf(10, at);
        const end = nl < 0 ? src.length : nl + 1;
        parts.push(prefix, src.subarray(at, end));
        size += prefix.length + end - at;
        at = end;
        if (size >= 16 << 20) {
          writeSync(out, Buffer.concat(parts, size));
          parts.length = 0;
          size = 0;
        }
      }
      if (size > 0) writeSync(out, Buffer.concat(parts, size));
    }
  } finally {
    closeSync(out);
  }
  spawnSync('sync');
  return statSync(to).size;
}

const tools: Array<{ tool: string; init: (repo: string) => void; backup: (repo: string, night: number, file: string) => Run; restore: (repo: string, file: string) => Run }> = [
  {
    tool: 'kura',
    init: (repo) => void measured(process.execPath, [KURA, 'repo', 'init', '--repo', repo], { KURA_PASSPHRASE: 'bench' }),
    backup: (repo, _night, file) => measured(process.execPath, [KURA, 'backup', '--repo', repo, '--name', 'big', '--file', file], { KURA_PASSPHRASE: 'bench', KURA_LOG_LEVEL: 'warn' }),
    restore: (repo) => shell(`'${process.execPath}' '${KURA}' restore --repo '${repo}' latest:big > /dev/null`, { KURA_PASSPHRASE: 'bench', KURA_LOG_LEVEL: 'warn' }),
  },
  {
    tool: 'restic',
    init: (repo) => void measured('restic', ['-r', repo, 'init'], { RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: `${repo}-cache` }),
    backup: (repo, _night, file) => measured('restic', ['-r', repo, 'backup', '--host', 'bench', file], { RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: `${repo}-cache` }),
    restore: (repo, file) => shell(`restic -r '${repo}' dump latest '${file}' > /dev/null`, { RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: `${repo}-cache` }),
  },
  ...(['lz4', 'zstd,3'] as const).map((compression) => ({
    tool: compression === 'lz4' ? 'borg-lz4' : 'borg-zstd3',
    init: (repo: string) => void measured('borg', ['init', '--encryption=repokey', repo], { BORG_PASSPHRASE: 'bench', BORG_BASE_DIR: `${repo}-base` }),
    // the same archive name each night: the file's path is what restore names
    backup: (repo: string, night: number, file: string) => measured('borg', ['create', '--compression', compression, `${repo}::night${night}`, file], { BORG_PASSPHRASE: 'bench', BORG_BASE_DIR: `${repo}-base` }),
    restore: (repo: string) => shell(`borg extract --stdout '${repo}::night2' > /dev/null`, { BORG_PASSPHRASE: 'bench', BORG_BASE_DIR: `${repo}-base` }),
  })),
];

const peaks: Record<string, Record<string, number>> = {};
try {
  for (const copies of COPIES) {
    const nights = [1, 2].map((d) => path.join(dir, `night${d}`, 'big.sql'));
    const bytes = nights.map((file, i) => {
      mkdirSync(path.dirname(file), { recursive: true });
      return enlarge(path.join(DUMPS, `day${i + 1}.sql`), copies, file);
    });
    for (const t of tools) {
      const repo = path.join(dir, `${t.tool}-${copies}`);
      t.init(repo);
      const runs: Record<string, Run> = {};
      for (const night of [1, 2]) {
        // restic and Borg name the file they stored by its path: both nights come from one path
        const file = path.join(dir, 'current.sql');
        rmSync(file, { force: true });
        linkSync(nights[night - 1]!, file);
        runs[`night${night}`] = t.backup(repo, night, file);
        emit({ copies, tool: t.tool, step: `backup night ${night}`, dumpBytes: bytes[night - 1], ...rounded(runs[`night${night}`]!) });
      }
      runs.restore = t.restore(repo, path.join(dir, 'current.sql'));
      emit({ copies, tool: t.tool, step: 'restore night 2', dumpBytes: bytes[1], ...rounded(runs.restore) });
      const peak = Math.max(...Object.values(runs).map((r) => r.rssMiB));
      (peaks[t.tool] ??= {})[`${(bytes[1]! / 1e9).toFixed(1)} GB`] = peak;
      rmSync(repo, { recursive: true, force: true });
      rmSync(`${repo}-cache`, { recursive: true, force: true });
      rmSync(`${repo}-base`, { recursive: true, force: true });
    }
    for (const f of nights) rmSync(path.dirname(f), { recursive: true, force: true });
  }
  emit({ summary: 'peak RSS (MiB) of backup and restore, by the size of night 2', ...peaks });
} finally {
  rmSync(dir, { recursive: true, force: true });
}
