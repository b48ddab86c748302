import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { kura, kuraJson, kuraOk, spawnKura, tempDir } from './support/cli.js';
import { collect, Prng, sqlDump } from './support/generate.js';
import { exitOf } from './support/proc.js';

const TRIALS = Number(process.env.KURA_CRASH_TRIALS ?? 20);
const MiB = 1 << 20;

test(`kill -9 at ${TRIALS} random points of a backup leaves a repository that check passes, and a rerun completes`, async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const day1 = await collect(sqlDump(1, 40 * MiB));
  const day1File = path.join(dir, 'day1.sql');
  writeFileSync(day1File, day1);
  kuraOk(['backup', '--repo', repo, '--name', 'db', '--file', day1File]);

  // every trial's input shares most of day 1 and has 24 MiB of its own in the middle, so each
  // run deduplicates and writes new packs, catalogue rows and a snapshot: all can be interrupted
  const input = async (seed: number) => Buffer.concat([day1.subarray(0, 20 * MiB), await collect(sqlDump(seed, 24 * MiB)), day1.subarray(20 * MiB)]);
  const probeRepo = path.join(dir, 'probe');
  kuraOk(['repo', 'init', '--repo', probeRepo]);
  kuraOk(['backup', '--repo', probeRepo, '--name', 'db', '--file', day1File]);
  const probeFile = path.join(dir, 'probe.sql');
  writeFileSync(probeFile, await input(999));
  const t0 = Date.now();
  kuraOk(['backup', '--repo', probeRepo, '--name', 'db', '--file', probeFile]);
  const fullMs = Date.now() - t0;
  // one timed run is a poor guess on a loaded machine (a probe at 1823 ms once left 11 of 20
  // trials to finish before their kill): each trial that completes teaches how long one takes
  let estimateMs = fullMs;

  const rng = new Prng(Number(process.env.KURA_CRASH_SEED ?? 20261123));
  const file = path.join(dir, 'today.sql');
  let killedMidway = 0;
  let today = day1;
  for (let trial = 0; trial < TRIALS; trial++) {
    today = await input(100 + trial);
    writeFileSync(file, today);
    const before = kuraJson<unknown[]>(['snapshots', '--repo', repo]).length;
    const delay = rng.next() % Math.round(estimateMs * 1.1);
    const started = Date.now();
    const child = spawnKura(['backup', '--repo', repo, '--name', 'db', '--file', file, '--json']);
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), delay);
    const { signal, code } = await exitOf(child);
    clearTimeout(timer);
    if (signal === 'SIGKILL') killedMidway++;
    else {
      assert.equal(code, 0, `trial ${trial}: backup exited ${code}`);
      estimateMs = Math.min(estimateMs, Date.now() - started);
    }

    const chk = kura(['check', '--repo', repo, '--json', ...(trial % 5 === 4 ? ['--read-data'] : [])]);
    assert.equal(chk.status, 0, `trial ${trial} (killed after ${delay} ms): check failed: ${chk.out} ${chk.stderr}`);
    assert.equal((JSON.parse(chk.out) as { ok: boolean }).ok, true);
    // a killed run never leaves a half snapshot: either none, or one that restores to today
    const snaps = kuraJson<Array<{ id: string }>>(['snapshots', '--repo', repo]);
    if (signal !== 'SIGKILL') assert.equal(JSON.parse(out).id, snaps.at(-1)!.id);
    assert.ok(snaps.length - before <= 1);
    if (snaps.length > before) assert.ok(kuraOk(['restore', '--repo', repo, snaps.at(-1)!.id]).stdout.equals(today), `trial ${trial}: the snapshot differs from its input`);
  }
  assert.ok(killedMidway >= TRIALS * 0.6, `only ${killedMidway} of ${TRIALS} trials were killed mid-backup (full backup: ${fullMs} ms, fastest ${estimateMs} ms)`);
  t.diagnostic(`${killedMidway} of ${TRIALS} backups killed mid-run (a full run took ${fullMs} ms, the fastest ${estimateMs} ms)`);

  // the rerun completes; it stores only what the killed runs had not yet made durable
  const done = kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'db', '--file', file]);
  assert.ok(kuraOk(['restore', '--repo', repo, done.id]).stdout.equals(today));
  const first = kuraJson<Array<{ id: string }>>(['snapshots', '--repo', repo])[0]!.id;
  assert.ok(kuraOk(['restore', '--repo', repo, first]).stdout.equals(day1));
  kuraOk(['check', '--repo', repo, '--read-data']);
  const again = kuraJson<{ newChunks: number }>(['backup', '--repo', repo, '--name', 'db', '--file', file]);
  assert.equal(again.newChunks, 0);
});
