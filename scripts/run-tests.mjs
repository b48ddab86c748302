// Runs the compiled test suite with node's test runner (npm test builds first).
// KURA_TEST=<substring> runs only matching test files.
//
// Two lanes: the files in SIDE wait on clocks and schedules far more than they compute (a
// backup window played out in real time), so they run beside the main lane instead of after
// it. Each file uses its own temporary directories and ports chosen by the kernel, so the lanes
// share nothing. The side lane's report is printed when it ends (not interleaved); the exit
// status fails if either lane fails. KURA_TEST_LANES=1 runs everything in one lane.
import { readdirSync, readFileSync, rmSync, openSync, closeSync, mkdtempSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';

const dir = 'dist/test';
const filter = process.env.KURA_TEST ?? '';
const files = readdirSync(dir).filter((f) => f.endsWith('.test.js') && f.includes(filter)).sort().map((f) => `${dir}/${f}`);
if (files.length === 0) {
  console.error(`no test files match "${filter}"`);
  process.exit(1);
}
const SIDE = ['windows.test.js'];
const oneLane = process.env.KURA_TEST_LANES === '1';
const side = oneLane ? [] : files.filter((f) => SIDE.includes(path.basename(f)));
const main = files.filter((f) => !side.includes(f));
const env = { ...process.env, UV_THREADPOOL_SIZE: '16' };

function lane(list, out) {
  return new Promise((resolve) => {
    if (list.length === 0) return resolve(0);
    const stdio = out === null ? 'inherit' : ['ignore', out, out];
    const child = spawn(process.execPath, ['--test', '--test-concurrency=1', ...list], { stdio, env });
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

const logDir = mkdtempSync(path.join(tmpdir(), 'kura-test-lane-'));
const sideLog = path.join(logDir, 'side.log');
const fd = openSync(sideLog, 'w');
const started = Date.now();
const sideDone = lane(side, fd).then((code) => {
  closeSync(fd);
  return code;
});
const mainCode = await lane(main, null);
const sideCode = await sideDone;
if (side.length > 0) {
  process.stdout.write(`\n# side lane (${side.map((f) => path.basename(f)).join(', ')}), run beside the main lane:\n`);
  process.stdout.write(readFileSync(sideLog, 'utf8'));
  process.stdout.write(`# side lane: ${sideCode === 0 ? 'passed' : `FAILED (exit ${sideCode})`}; both lanes took ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
}
rmSync(logDir, { recursive: true, force: true });
process.exit(mainCode !== 0 ? mainCode : sideCode);
