// Runs the compiled test suite with node's test runner (npm test builds first).
// KURA_TEST=<substring> runs only matching test files.
import { readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
const dir = 'dist/test';
const filter = process.env.KURA_TEST ?? '';
const files = readdirSync(dir).filter((f) => f.endsWith('.test.js') && f.includes(filter)).sort().map((f) => `${dir}/${f}`);
if (files.length === 0) {
  console.error(`no test files match "${filter}"`);
  process.exit(1);
}
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], { stdio: 'inherit', env: { ...process.env, UV_THREADPOOL_SIZE: '16' } });
process.exit(r.status ?? 1);
