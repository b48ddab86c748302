import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import path from 'node:path';
import { kura, kuraJson, kuraOk, spawnKura, tempDir } from './support/cli.js';
import { collect, Prng, sha256, sqlDump } from './support/generate.js';
import { exitOf, waitFor } from './support/proc.js';
import { sleep } from './support/proxy.js';
import { parsePackIndex } from '../src/repository/pack.js';
import { referencedChunks } from './support/snapshots.js';
import { lockHeld } from './support/locks.js';

const MiB = 1 << 20;

function packFiles(repo: string): string[] {
  const out: string[] = [];
  for (const d of readdirSync(path.join(repo, 'packs'))) for (const f of readdirSync(path.join(repo, 'packs', d))) if (!f.startsWith('.')) out.push(path.join(repo, 'packs', d, f));
  return out;
}

/** Chunk IDs held by the pack files themselves (their indexes), whatever the catalogue says. */
function chunksInPacks(repo: string): Set<string> {
  const out = new Set<string>();
  for (const f of packFiles(repo)) {
    const bytes = readFileSync(f);
    for (const e of parsePackIndex(bytes, bytes.length)!) out.add(e.id.toString('hex'));
  }
  return out;
}

async function chunksOfSnapshot(repo: string, id: string): Promise<string[]> {
  return (await referencedChunks(repo, id)).map((c) => c.toString('hex'));
}

async function chunksOfSnapshots(repo: string, ids: string[]): Promise<Set<string>> {
  const out = new Set<string>();
  for (const id of ids) for (const c of await chunksOfSnapshot(repo, id)) out.add(c);
  return out;
}

function dirBytes(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) n += statSync(path.join(e.parentPath, e.name)).size;
  return n;
}

/** Ten nightly exports of a database: a shared base with each night's own changes spread through it. */
async function tenNights(dir: string, repo: string, scale = 1): Promise<Array<{ id: string; sha: string; file: string }>> {
  const base = await collect(sqlDump(11, 4 * scale * MiB));
  const r = new Prng(3);
  const out = [];
  for (let night = 0; night < 10; night++) {
    const parts: Buffer[] = [];
    for (let i = 0; i < 4 * scale; i++) parts.push(base.subarray(i * MiB, (i + 1) * MiB), Buffer.from(`-- night ${night} part ${i}\n`), r.bytes(96 << 10));
    const data = Buffer.concat(parts);
    const file = path.join(dir, `night${night}.sql`);
    writeFileSync(file, data);
    const b = kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'juki', '--file', file]);
    out.push({ id: b.id, sha: sha256(data), file });
  }
  return out;
}

test('prune + gc on 10 nightly generations keeping 3 frees exactly the chunks no kept snapshot uses', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const nights = await tenNights(dir, repo);
  const kept = nights.slice(7);
  const want = await chunksOfSnapshots(repo, kept.map((n) => n.id));
  const allBefore = chunksInPacks(repo);
  assert.ok(allBefore.size > want.size + 20, 'the removed nights hold chunks of their own');
  const bytesBefore = dirBytes(path.join(repo, 'packs'));

  const plan = kuraJson<{ dryRun: boolean; kept: number; removed: number; decisions: Array<{ id: string; keep: boolean; reasons: string[] }> }>(['prune', '--repo', repo, '--keep-last', '3', '--dry-run']);
  assert.equal(plan.dryRun, true);
  assert.equal(plan.kept, 3);
  assert.equal(plan.removed, 7);
  assert.deepEqual(
    plan.decisions.filter((d) => d.keep).map((d) => d.id),
    kept.map((n) => n.id).reverse(),
  );
  assert.deepEqual(plan.decisions[0]!.reasons, ['last 1']);
  assert.equal(readdirSync(path.join(repo, 'snapshots')).length, 10, 'a dry run removes nothing');
  const text = kuraOk(['prune', '--repo', repo, '--keep-last', '3', '--dry-run']).out;
  assert.match(text, /^keep +\S+ \S+ +[0-9a-f]{12} +default +juki +last 1$/m);
  assert.equal(text.match(/^would remove .*no rule keeps it$/gm)?.length, 7);

  const dryGc = kuraJson<{ chunksRemoved: number }>(['gc', '--repo', repo, '--dry-run']);
  assert.equal(dryGc.chunksRemoved, 0, 'before prune every chunk is referenced');

  const pruned = kuraJson<{ removed: number }>(['prune', '--repo', repo, '--keep-last', '3']);
  assert.equal(pruned.removed, 7);
  assert.deepEqual(readdirSync(path.join(repo, 'snapshots')).sort(), kept.map((n) => n.id).sort());
  // what each chunk takes in its pack, by the catalogue before gc
  const cat = new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true, fileMustExist: true });
  const storedSize = new Map((cat.prepare('SELECT id, stored_size FROM chunk_rows').all() as Array<{ id: Buffer; stored_size: number }>).map((r) => [r.id.toString('hex'), r.stored_size]));
  cat.close();
  let deadBytes = 0;
  let liveBytes = 0;
  for (const [id, size] of storedSize) if (want.has(id)) liveBytes += size;
  else deadBytes += size;
  const gc = kuraJson<{ chunksRemoved: number; packsRewritten: number; bytesFreed: number; problems: string[] }>(['gc', '--repo', repo]);
  assert.equal(gc.chunksRemoved, allBefore.size - want.size);
  assert.ok(gc.packsRewritten > 0, 'packs holding live and dead chunks were rewritten');
  assert.deepEqual(gc.problems, []);

  // exactly the kept chunks remain, in the packs themselves and in the catalogue
  assert.deepEqual([...chunksInPacks(repo)].sort(), [...want].sort());
  const check = kuraJson<{ ok: boolean; chunksUnreferenced: number; chunksRead: number }>(['check', '--repo', repo, '--read-data']);
  assert.equal(check.ok, true);
  assert.equal(check.chunksUnreferenced, 0);
  assert.equal(check.chunksRead, want.size);
  // the catalogue numbers exactly the pack files that remain
  const numbered = new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true, fileMustExist: true });
  const packRows = numbered.prepare('SELECT name FROM packs ORDER BY name').pluck().all() as string[];
  numbered.close();
  const packFilesLeft = readdirSync(path.join(repo, 'packs'), { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => e.name).sort();
  assert.deepEqual(packRows, packFilesLeft);
  const bytesAfter = dirBytes(path.join(repo, 'packs'));
  // every byte of the removed chunks is given back, and what is left is the kept chunks and the packs' own
  // framing (not all of the pruned nights go: the kept nights' deltas keep their bases, chunks of earlier nights)
  assert.ok(deadBytes > 500_000, `the pruned nights held ${deadBytes} bytes of their own`);
  assert.ok(bytesBefore - bytesAfter >= deadBytes, `space is reused: ${bytesBefore} → ${bytesAfter} bytes, ${deadBytes} held by removed chunks`);
  const framing = bytesAfter - liveBytes;
  t.diagnostic(`packs ${bytesBefore} → ${bytesAfter} bytes; removed chunks held ${deadBytes}, kept ${liveBytes}, framing ${framing}`);
  assert.ok(framing >= 0 && framing <= want.size * 64 + packFiles(repo).length * 4096, `packs hold ${framing} bytes beyond the kept chunks'`);
  assert.equal(gc.bytesFreed, bytesBefore - bytesAfter);
  for (const n of kept) assert.equal(sha256(kuraOk(['restore', '--repo', repo, n.id, '--to', '-']).stdout), n.sha);
  for (const n of nights.slice(0, 7)) assert.equal(kura(['restore', '--repo', repo, n.id, '--to', '-']).status, 66);

  // a second gc finds nothing to do
  assert.equal(kuraJson<{ chunksRemoved: number; packsWritten: number }>(['gc', '--repo', repo]).packsWritten, 0);
});

test('protected snapshots and snapshots a route still has to send are never pruned; policies come from the config', (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  const cfg = path.join(dir, 'kura.yaml');
  writeFileSync(
    cfg,
    `timezone: Asia/Tokyo\nrepository:\n  path: ${repo}\nsources:\n  juki:\n    type: file\n    paths: [/dev/null]\n    retention: { keepLast: 1 }\n` +
      `modules:\n  routing:\n    type: static\n    routes:\n      peer-dc:\n        endpoints: [{ host: 127.0.0.1, port: 9 }]\n`,
  );
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  const r = new Prng(9);
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) {
    const f = path.join(dir, `d${i}`);
    writeFileSync(f, r.bytes(200_000));
    ids.push(kuraJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, ...(i === 2 ? ['--route', 'peer-dc'] : [])], { env }).id);
  }
  // another source without a policy: kept whatever happens
  const other = path.join(dir, 'other');
  writeFileSync(other, r.bytes(1000));
  const otherId = kuraJson<{ id: string }>(['backup', '--name', 'gyosei', '--file', other], { env }).id;

  assert.match(kuraOk(['protect', ids[0]!.slice(0, 10)], { env }).out, /is now protected/);
  assert.match(kuraOk(['protect', ids[0]!], { env }).out, /was already protected/);
  const plan = kuraJson<{ decisions: Array<{ id: string; keep: boolean; reasons: string[] }> }>(['prune', '--dry-run'], { env });
  const why = new Map(plan.decisions.map((d) => [d.id, d.keep ? d.reasons.join(', ') : 'remove']));
  assert.equal(why.get(ids[0]!), 'protected');
  assert.equal(why.get(ids[1]!), 'remove');
  assert.equal(why.get(ids[2]!), 'unsent to peer-dc');
  assert.equal(why.get(ids[3]!), 'last 1');
  assert.equal(why.get(otherId), 'no retention policy');

  kuraOk(['prune', '--gc'], { env });
  assert.deepEqual(kuraJson<Array<{ id: string }>>(['snapshots'], { env }).map((s) => s.id).sort(), [ids[0]!, ids[2]!, ids[3]!, otherId].sort());
  assert.equal(kuraJson<{ ok: boolean }>(['check', '--read-data'], { env }).ok, true);

  // lifting the hold lets the policy apply; a flag policy replaces the config's
  assert.match(kuraOk(['unprotect', ids[0]!], { env }).out, /is no longer protected/);
  const again = kuraJson<{ removed: number; decisions: Array<{ id: string; keep: boolean }> }>(['prune', '--source', 'juki'], { env });
  assert.equal(again.removed, 1);
  assert.equal(kuraJson<{ removed: number }>(['prune', '--source', 'gyosei', '--keep-last', '0'], { env }).removed, 1);
  assert.equal(kura(['protect', 'ffffffff'], { env }).status, 66);
  assert.equal(kura(['prune', '--keep-last', 'three'], { env }).status, 64);
});

test('gc refuses to run beside a backup of the same repository (E_LOCKED, exit 75), and runs after it', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const backup = spawnKura(['backup', '--repo', repo, '--name', 'slow', '--stdin', '--json']);
  backup.stdin.write(new Prng(1).bytes(MiB));
  let out = '';
  backup.stdout.on('data', (d) => (out += d));
  // the backup holds its lock while it waits for more input (a gc started before it took the
  // lock would run, and the backup would be the one refused)
  await waitFor('the backup to take its lock', () => lockHeld(repo, 'backup'));
  const gc = kura(['gc', '--repo', repo]);
  assert.equal(gc.status, 75, gc.stderr);
  assert.match(gc.stderr, /E_LOCKED: .*backup \(pid \d+/);
  backup.stdin.end(new Prng(2).bytes(MiB));
  assert.equal((await exitOf(backup)).code, 0);
  assert.match(out, /"id"/);
  kuraOk(['gc', '--repo', repo]);
  // a killed holder does not block forever: its lock row is recognised as stale
  const killed = spawnKura(['backup', '--repo', repo, '--name', 'killed', '--stdin']);
  killed.stdin.on('error', () => {}); // killed before it read everything: EPIPE is expected
  killed.stdin.write(new Prng(3).bytes(MiB));
  await sleep(1500);
  killed.kill('SIGKILL');
  await exitOf(killed);
  const after = kuraJson<{ chunksRemoved: number; orphanPacks: number }>(['gc', '--repo', repo]);
  assert.ok(after.chunksRemoved + after.orphanPacks >= 0);
  assert.equal(kuraJson<{ ok: boolean; chunksUnreferenced: number }>(['check', '--repo', repo]).chunksUnreferenced, 0);
});

/** Whether a gc of `repo` holds its lock (it has opened the repository and started work). */
function gcRunning(repo: string): boolean {
  return lockHeld(repo, 'gc');
}

test('kill -9 at random moments of a gc: no chunk of a kept snapshot is lost, and a rerun finishes', async (t) => {
  const dir = tempDir(t);
  const pristine = path.join(dir, 'pristine');
  kuraOk(['repo', 'init', '--repo', pristine]);
  const nights = await tenNights(dir, pristine, 4);
  kuraOk(['prune', '--repo', pristine, '--keep-last', '3']);
  const kept = nights.slice(7);
  const wantChunks = [...(await chunksOfSnapshots(pristine, kept.map((n) => n.id)))].sort();
  // how long an undisturbed gc works, to spread the kills over it
  const probe = path.join(dir, 'probe');
  cpSync(pristine, probe, { recursive: true });
  let work = kuraJson<{ seconds: number }>(['gc', '--repo', probe]).seconds * 1000;
  const r = new Prng(77);
  let killedMidRun = 0;
  const trials = 8;
  for (let trial = 0; trial < trials; trial++) {
    const repo = path.join(dir, `trial${trial}`);
    cpSync(pristine, repo, { recursive: true });
    const gc = spawnKura(['gc', '--repo', repo, '--json']);
    let out = '';
    gc.stdout.on('data', (d) => (out += d));
    for (let i = 0; i < 2000 && gc.exitCode === null && !gcRunning(repo); i++) await sleep(2);
    await sleep(r.next() % Math.max(1, Math.round(work)));
    const code = gc.exitCode;
    gc.kill('SIGKILL');
    await exitOf(gc);
    if (code === null) killedMidRun++;
    // one timed probe is a poor guess on a loaded machine: a gc that finished first says how long one takes
    else if (code === 0) work = Math.min(work, (JSON.parse(out) as { seconds: number }).seconds * 1000);
    // whatever state it was left in: the kept snapshots restore, and a rerun completes
    for (const n of kept) assert.equal(sha256(kuraOk(['restore', '--repo', repo, n.id, '--to', '-']).stdout), n.sha, `trial ${trial}`);
    kuraOk(['gc', '--repo', repo]);
    const check = kuraJson<{ ok: boolean; chunksUnreferenced: number }>(['check', '--repo', repo, '--read-data']);
    assert.equal(check.ok, true, `trial ${trial}`);
    assert.equal(check.chunksUnreferenced, 0, `trial ${trial}`);
    assert.deepEqual([...chunksInPacks(repo)].sort(), wantChunks, `trial ${trial}`);
    rmSync(repo, { recursive: true, force: true });
  }
  t.diagnostic(`gc works ${Math.round(work)} ms undisturbed (the fastest run seen); ${killedMidRun} of ${trials} kills landed while it ran`);
  assert.ok(killedMidRun >= trials / 2, `most kills landed mid-run (${killedMidRun}/${trials})`);
});
