import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

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
