import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { kuraOk, tempDir } from './support/cli.js';
import { collect, sqlDump } from './support/generate.js';

/**
 * What a backup's holdYoungGeneration does to V8, in a process of its own (the flag is the
 * process's): objects that live through a few scavenges (as a backup's chunks in flight do) grow
 * the young generation, except while it is held, nested holds included; released, it grows again.
 */
test('a backup keeps the young generation at its size while it runs; released, it grows again', () => {
  const mod = new URL('../src/archiver/young-generation.js', import.meta.url).href;
  const script = `
    import { getHeapSpaceStatistics } from 'node:v8';
    import { holdYoungGeneration } from ${JSON.stringify(mod)};
    const newSpace = () => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size;
    const churn = () => { const ring = new Array(2000); for (let i = 0; i < 3e6; i++) ring[i % 2000] = { i, s: 'x'.repeat(20) + i }; return ring.length; };
    const start = newSpace();
    const outer = holdYoungGeneration();
    const inner = holdYoungGeneration();
    churn();
    inner();
    inner(); // a second call of the same release counts once
    churn();
    const held = newSpace();
    outer();
    churn();
    console.log(JSON.stringify({ start, held, after: newSpace() }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const { start, held, after } = JSON.parse(r.stdout) as { start: number; held: number; after: number };
  assert.ok(held <= 2 * start, `held at ${held} bytes (started at ${start})`);
  assert.ok(after >= 4 * held, `released, it grew only to ${after} bytes (held at ${held})`);
});

/**
 * The same seen from outside a real `kura backup`: a probe loaded before kura samples the main
 * thread's young generation every few milliseconds. Backing up 96 MiB of dump in 4 KiB chunks
 * (~22 000 chunks, each with objects that live while its batch is sealed) grew it to 32 MiB
 * without the hold and left it at the 8 MiB start-up reached with it (measured here).
 */
test('kura backup holds the young generation while it runs', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  const dump = path.join(dir, 'dump.sql');
  const probe = path.join(dir, 'probe.cjs');
  const out = path.join(dir, 'largest');
  writeFileSync(dump, await collect(sqlDump(3, 96 << 20)));
  writeFileSync(
    probe,
    `const { isMainThread } = require('node:worker_threads');
     if (isMainThread) {
       const { getHeapSpaceStatistics } = require('node:v8');
       let largest = 0;
       setInterval(() => { largest = Math.max(largest, getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size); }, 5).unref();
       process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(out)}, String(largest)));
     }`,
  );
  kuraOk(['repo', 'init', '--repo', repo, '--chunk-avg', '4096']);
  kuraOk(['backup', '--repo', repo, '--name', 'db', '--file', dump], { env: { NODE_OPTIONS: `--require ${probe}` } });
  const largest = Number(readFileSync(out, 'utf8'));
  assert.ok(largest > 0, 'the probe sampled the backup');
  assert.ok(largest < 16 << 20, `the young generation grew to ${largest} bytes during the backup`);
});
