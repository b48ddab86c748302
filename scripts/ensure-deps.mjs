// `npm test` must install what it needs: run `npm ci` when node_modules is missing or older than
// the lockfile (a fresh clone in CI, or after a dependency change).
import { existsSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
const marker = 'node_modules/.package-lock.json';
const stale = !existsSync(marker) || statSync(marker).mtimeMs < statSync('package-lock.json').mtimeMs;
if (stale) {
  console.error('installing dependencies (npm ci)…');
  const r = spawnSync('npm', ['ci', '--no-audit', '--no-fund'], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
for (const tool of ['sync']) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) {
    console.error(`missing required tool: ${tool} (Debian package coreutils)`);
    process.exit(1);
  }
}
