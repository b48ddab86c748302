// Builds kura's native addon (native/kura_native.c + the vendored BLAKE3 C code) with node-gyp
// when it is missing or older than its sources. kura works without it (the same chunks and IDs
// in TypeScript, more slowly), so outside CI a failed build is a warning; under CI=true it fails.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const out = 'build/Release/kura_native.node';
const sources = ['binding.gyp', ...readdirSync('native', { recursive: true }).map((f) => path.join('native', String(f))).filter((f) => statSync(f).isFile())];
const newest = Math.max(...sources.map((f) => statSync(f).mtimeMs));
if (existsSync(out) && statSync(out).mtimeMs >= newest) process.exit(0);

const candidates = [
  process.env.npm_config_node_gyp,
  path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
].filter((p) => p && existsSync(p));
const args = ['rebuild', ...(process.env.npm_config_nodedir ? [`--nodedir=${process.env.npm_config_nodedir}`] : existsSync('/usr/include/node/node_api.h') ? ['--nodedir=/usr'] : [])];
console.error('building the native addon (node-gyp rebuild)…');
const r = candidates.length > 0 ? spawnSync(process.execPath, [candidates[0], ...args], { stdio: 'inherit' }) : { status: -1 };
if (r.status !== 0) {
  const why = candidates.length === 0 ? 'node-gyp was not found' : 'node-gyp failed (a C compiler, make and python3 are needed)';
  if (process.env.CI === 'true') {
    console.error(`native addon: ${why}; CI=true, so this is a failure`);
    process.exit(1);
  }
  console.error(`native addon: ${why}; kura runs without it, chunking and hashing more slowly`);
}
