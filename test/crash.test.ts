import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createWriteStream, readFileSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import path from 'node:path';
import { kura, kuraJson, kuraOk, spawnKura, tempDir } from './support/cli.js';
import { Prng, sqlDump } from './support/generate.js';
import { exitOf } from './support/proc.js';

const TRIALS = Number(process.env.KURA_CRASH_TRIALS ?? 20);

async function writeDump(file: string, seed: number, bytes: number): Promise<void> {
  const ws = createWriteStream(file);
  for await (const b of sqlDump(seed, bytes)) if (!ws.write(b)) await once(ws, 'drain');
  ws.end();
  await once(ws, 'finish');
}

test(`kill -9 at ${TRIALS} random points of a backup leaves a repository that check passes, and a rerun completes`, async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const base = path.join(dir, 'day1.sql');
  const next = path.join(dir, 'day2.sql');
  await writeDump(base, 1, 48 << 20);
  await writeDump(next, 2, 64 << 20);
  // day 2 shares the first half with day 1, so trials exercise dedup and new chunks alike
  const d1 = readFileSync(base);
  const d2 = Buffer.concat([d1.subarray(0, 24 << 20), readFileSync(next).subarray(0, 40 << 20)]);
  writeFileSync(next, d2);
  kuraOk(['backup', '--repo', repo, '--name', 'db', '--file', base]);

  // how long an uninterrupted backup of day 2 takes here, to spread the kill points over it
  const probeRepo = path.join(dir, 'probe');
  kuraOk(['repo', 'init', '--repo', probeRepo]);
  const t0 = Date.now();
  kuraOk(['backup', '--repo', probeRepo, '--name', 'db', '--file', next]);
  const fullMs = Date.now() - t0;

  const rng = new Prng(Number(process.env.KURA_CRASH_SEED ?? 20261123));
  let killedMidway = 0;
  for (let trial = 0; trial < TRIALS; trial++) {
    const delay = rng.next() % Math.max(50, Math.round(fullMs * 1.1));
    const child = spawnKura(['backup', '--repo', repo, '--name', 'db', '--file', next, '--json']);
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), delay);
    const { signal, code } = await exitOf(child);
    clearTimeout(timer);
    if (signal === 'SIGKILL') killedMidway++;
    else assert.equal(code, 0, `trial ${trial}: backup exited ${code}`);

    const chk = kura(['check', '--repo', repo, '--json', ...(trial % 5 === 4 ? ['--read-data'] : [])]);
    assert.equal(chk.status, 0, `trial ${trial} (killed after ${delay} ms): check failed: ${chk.out} ${chk.stderr}`);
    const report = JSON.parse(chk.out) as { ok: boolean; snapshots: number };
    assert.equal(report.ok, true);
    // every listed snapshot restores byte-identical (a killed run never leaves a half snapshot)
    const snaps = kuraJson<Array<{ id: string; logicalBytes: number }>>(['snapshots', '--repo', repo]);
    const last = snaps.at(-1)!;
    assert.ok(last.logicalBytes === d1.length || last.logicalBytes === d2.length);
    if (signal !== 'SIGKILL') assert.equal(JSON.parse(out).id, last.id);
  }
  assert.ok(killedMidway >= TRIALS / 2, `only ${killedMidway} of ${TRIALS} trials were killed mid-backup`);

  const done = kuraJson<{ id: string; newChunks: number }>(['backup', '--repo', repo, '--name', 'db', '--file', next]);
  assert.ok(kuraOk(['restore', '--repo', repo, done.id]).stdout.equals(d2));
  assert.ok(kuraOk(['restore', '--repo', repo, kuraJson<Array<{ id: string }>>(['snapshots', '--repo', repo])[0]!.id]).stdout.equals(d1));
  kuraOk(['check', '--repo', repo, '--read-data']);
  // nothing was lost from what the killed runs recorded: a final run stores nothing new
  const again = kuraJson<{ newChunks: number }>(['backup', '--repo', repo, '--name', 'db', '--file', next]);
  assert.equal(again.newChunks, 0);
});
