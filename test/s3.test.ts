import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KURA, ROOT, kuraAsync, type RunResult } from './support/cli.js';
import { churn, collect, Prng, sha256, sqlDump } from './support/generate.js';
import { exitOf, waitFor } from './support/proc.js';
import { sleep } from './support/proxy.js';
import { rgwAvailable, rgwOrSkip, startRgw, type Rgw } from './support/rgw.js';
import { OverwritingProxy } from './support/s3proxy.js';
import { BucketView } from './support/s3util.js';
import { parsePackIndex } from '../src/repository/pack.js';

/**
 * An agent's repository in an S3 bucket on a real Ceph RGW (one gateway for the file), and the
 * GC tests that run on both backends.
 */
const MiB = 1 << 20;
let rgw: Rgw | null = null;
let top = '';

before(async () => {
  top = mkdtempSync(path.join(tmpdir(), 'kura-s3-'));
  if (rgwAvailable()) rgw = await startRgw(path.join(top, 'ceph'));
});

after(async () => {
  await rgw?.stop();
  rmSync(top, { recursive: true, force: true });
});

function s3Config(dir: string, bucket: string, prefix: string, endpoint = rgw!.endpoint): string {
  const file = path.join(dir, `${bucket}-${prefix.replace(/\W/g, '')}.yaml`);
  writeFileSync(
    file,
    `tenant: city-a
repository:
  type: s3
  path: ${path.join(dir, 'local')}
  endpoint: ${endpoint}
  bucket: ${bucket}
  prefix: "${prefix}"
`,
  );
  return file;
}

async function run(args: string[], env: Record<string, string | undefined> = {}): Promise<RunResult> {
  return kuraAsync(args, { env: { ...rgw?.env, ...env } });
}

async function ok(args: string[], env: Record<string, string | undefined> = {}): Promise<RunResult> {
  const r = await run(args, env);
  assert.equal(r.status, 0, `kura ${args.join(' ')}: ${r.stderr}`);
  return r;
}

async function json<T>(args: string[], env: Record<string, string | undefined> = {}): Promise<T> {
  return JSON.parse((await ok([...args, '--json'], env)).out.trim().split('\n').pop()!) as T;
}

function dirOf(name: string): string {
  const d = path.join(top, name);
  mkdirSync(d, { recursive: true });
  return d;
}

test('an agent repository on S3: backup, byte-identical restore, an unchanged rerun stores nothing, check --read-data finds a flipped byte in a pack object and restore refuses it; rebuild-index from the bucket alone', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = dirOf('agent');
  const cfg = s3Config(dir, 'agent', 'city-a/');
  const env = { KURA_CONFIG: cfg };
  const init = await json<{ repository: string }>(['repo', 'init'], env); // the bucket does not exist yet
  assert.match(init.repository, /^s3:\/\/agent\/city-a\//);
  const again = await run(['repo', 'init'], env);
  assert.notEqual(again.status, 0);
  assert.match(again.stderr, /E_REPO_EXISTS/);

  const data = await collect(sqlDump(5, 24 * MiB));
  const file = path.join(dir, 'juki.sql');
  writeFileSync(file, data);
  const bucket = new BucketView(rgw!, 'agent');
  t.after(() => bucket.close());
  const first = await json<{ id: string; newChunks: number; chunks: number; newBytes: number }>(['backup', '--name', 'juki', '--file', file], env);
  assert.equal(first.newChunks, first.chunks);
  const packs = await bucket.keys('city-a/packs/');
  assert.ok(packs.length >= 2, `${packs.length} packs`);
  assert.deepEqual(await bucket.keys('city-a/snapshots/'), [`city-a/snapshots/${first.id}`]);
  assert.ok(!existsSync(path.join(dir, 'local', 'packs')), 'no pack is written locally');
  const restored = await ok(['restore', first.id, '--to', '-'], env);
  assert.equal(sha256(restored.stdout), sha256(data));

  const same = await json<{ id: string; newChunks: number; newBytes: number }>(['backup', '--name', 'juki', '--file', file], env);
  assert.equal(same.newChunks, 0);
  assert.equal(same.newBytes, 0);
  assert.deepEqual(await bucket.keys('city-a/packs/'), packs, 'an unchanged rerun stores no pack');
  await ok(['check', '--read-data'], env);

  // a flipped byte inside a blob of one pack object
  const victim = packs[new Prng(9).next() % packs.length]!;
  const bytes = await bucket.get(victim);
  const entries = parsePackIndex(bytes, bytes.length)!;
  const entry = entries[Math.floor(entries.length / 2)]!;
  const pos = entry.offset + Math.floor(entry.length / 2);
  bytes[pos] = bytes[pos]! ^ 0x10;
  await bucket.put(victim, bytes);
  const chk = await run(['check', '--read-data', '--json'], env);
  assert.equal(chk.status, 65, chk.stderr);
  const report = JSON.parse(chk.out) as { ok: boolean; problems: Array<{ kind: string; chunk?: string }> };
  assert.equal(report.ok, false);
  assert.ok(report.problems.some((p) => p.kind === 'chunk-corrupt' && p.chunk === entry.id.toString('hex')), JSON.stringify(report.problems));
  const out = path.join(dir, 'restored.sql');
  const rs = await run(['restore', first.id, '--to', out], env);
  assert.notEqual(rs.status, 0);
  assert.match(rs.stderr, /E_CHUNK_CORRUPT/);
  assert.equal(existsSync(out), false);
  bytes[pos] = bytes[pos]! ^ 0x10;
  await bucket.put(victim, bytes);

  // the catalogue is a cache: lost, it is rebuilt from the bucket without the key
  rmSync(path.join(dir, 'local', 'catalogue.sqlite'));
  rmSync(path.join(dir, 'local', 'cache'), { recursive: true, force: true });
  const rebuilt = await json<{ chunks: number; snapshots: number }>(['repo', 'rebuild-index'], { ...env, KURA_PASSPHRASE: undefined });
  assert.equal(rebuilt.snapshots, 2);
  assert.ok(rebuilt.chunks > 0);
  const third = await json<{ newChunks: number }>(['backup', '--name', 'juki', '--file', file], env);
  assert.equal(third.newChunks, 0, 'dedup works from the rebuilt catalogue');
  assert.equal(sha256((await ok(['restore', first.id, '--to', '-'], env)).stdout), sha256(data));
});

test('an S3 repository stores the next night of a dump as deltas of the last, as small as on fs and far below whole chunks, and restores it byte-identical', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = dirOf('delta');
  const small = ['--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384'];
  const s3 = { KURA_CONFIG: s3Config(dir, 'delta', 'deltas/') };
  const whole = { KURA_CONFIG: s3Config(dirOf('delta-whole'), 'delta', 'whole/') };
  const fsArgs = ['--repo', path.join(dir, 'fs-repo')];
  await ok(['repo', 'init', ...small], s3);
  await ok(['repo', 'init', ...small], whole);
  await ok(['repo', 'init', ...fsArgs, ...small]);
  const night1 = await collect(sqlDump(5, 3 * MiB));
  const nights = [night1, churn(night1, 40, 0)];
  type Stored = { id: string; newBytes: number; newChunks: number };
  const got: Record<'s3' | 'whole' | 'fs', Stored[]> = { s3: [], whole: [], fs: [] };
  for (const [i, data] of nights.entries()) {
    const file = path.join(dir, `night${i}.sql`);
    writeFileSync(file, data);
    got.s3.push(await json<Stored>(['backup', '--name', 'juki', '--file', file], s3));
    got.whole.push(await json<Stored>(['backup', '--name', 'juki', '--no-delta', '--file', file], whole));
    got.fs.push(await json<Stored>(['backup', ...fsArgs, '--name', 'juki', '--file', file]));
  }
  const [s3Night2, wholeNight2, fsNight2] = [got.s3[1]!, got.whole[1]!, got.fs[1]!];
  t.diagnostic(`night 2 stored: s3 ${s3Night2.newBytes} B (${s3Night2.newChunks} chunks), fs ${fsNight2.newBytes} B, s3 without deltas ${wholeNight2.newBytes} B`);
  assert.ok(s3Night2.newChunks > 100, `${s3Night2.newChunks} changed chunks`);
  assert.ok(s3Night2.newBytes * 2 < wholeNight2.newBytes, `deltas on s3: ${s3Night2.newBytes} bytes, whole chunks: ${wholeNight2.newBytes} bytes`);
  // chunk boundaries differ by repository (each has its own gear table): comparable, not equal
  assert.ok(s3Night2.newBytes < fsNight2.newBytes * 1.5 && fsNight2.newBytes < s3Night2.newBytes * 1.5, `s3 ${s3Night2.newBytes} bytes against fs ${fsNight2.newBytes}`);
  for (const [i, data] of nights.entries()) assert.equal(sha256((await ok(['restore', got.s3[i]!.id, '--to', '-'], s3)).stdout), sha256(data), `night ${i + 1}`);
  assert.equal((await json<{ ok: boolean }>(['check', '--read-data'], s3)).ok, true);
});

test('a dump that compresses to little is stored in packs of a few MiB, not one small pack per batch: gathered, read back, checked, and its next night too', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = dirOf('gather');
  const env = { KURA_CONFIG: s3Config(dir, 'gather', 'g/') };
  await ok(['repo', 'init', '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384'], env);
  // 40 MiB of rows that compress ~20:1: five batches or more (RemoteBatchSizer's ceiling is 8 MiB)
  const dump = (night: number) => {
    const rows: string[] = [];
    const r = new Prng(7);
    for (let id = 1, size = 0; size < 40 * MiB; id++) {
      const row = `${id}\t${r.next() % 9000}\t${id % 50 === 0 ? night : 0}\tactive\t${'municipal ledger entry, no remarks '.repeat(3)}\n`;
      rows.push(row);
      size += row.length;
    }
    return Buffer.from(rows.join(''));
  };
  const bucket = new BucketView(rgw!, 'gather');
  t.after(() => bucket.close());
  const packsOf = async () => {
    const packs = await bucket.keys('g/packs/');
    for (const k of packs) {
      const bytes = await bucket.get(k);
      assert.ok(parsePackIndex(bytes, bytes.length), `${k} is a pack`);
    }
    return packs;
  };
  const nights: Buffer[] = [];
  const ids: string[] = [];
  let before = 0;
  for (const night of [1, 2]) {
    const data = dump(night);
    nights.push(data);
    const file = path.join(dir, `night${night}.sql`);
    writeFileSync(file, data);
    const r = await json<{ id: string; newChunks: number; newBytes: number }>(['backup', '--name', 'juki', '--file', file], env);
    ids.push(r.id);
    const packs = await packsOf();
    const added = packs.length - before;
    before = packs.length;
    t.diagnostic(`night ${night}: ${r.newChunks} new chunks, ${r.newBytes} B stored in ${added} pack(s)`);
    assert.ok(r.newChunks > 1000, `${r.newChunks} new chunks`);
    // (chunk boundaries differ by repository: 5 000-10 000 chunks, 2.4-4 MB stored, measured)
    assert.ok(r.newBytes < 15 * MiB, `${r.newBytes} B: it compresses, so one pack per batch (6 or more) would be far more than it needs`);
    // the night's chunks in as few packs as their size needs (3.8 MiB each but the last), its chunk list in one more
    assert.ok(added <= Math.ceil(r.newBytes / (3.8 * MiB)) + 1, `night ${night} stored ${added} packs`);
  }
  for (const [i, data] of nights.entries()) assert.equal(sha256((await ok(['restore', ids[i]!, '--to', '-'], env)).stdout), sha256(data), `night ${i + 1}`);
  assert.equal((await json<{ ok: boolean }>(['check', '--read-data'], env)).ok, true);
});

test('the gateway stopped in the middle of a backup: retries, then a clear E_IO and no snapshot; the next run succeeds', async (t) => {
  if (!rgwOrSkip(t)) return;
  const dir = dirOf('outage');
  const cfg = s3Config(dir, 'outage', '');
  const env = { ...rgw!.env, KURA_CONFIG: cfg, KURA_PASSPHRASE: 'correct horse', KURA_LOG_FORMAT: 'json' };
  await ok(['repo', 'init'], env);
  const data = await collect(sqlDump(6, 64 * MiB));
  const child = spawn(process.execPath, [KURA, 'backup', '--name', 'juki', '--stdin', '--json'], { cwd: ROOT, env: { ...process.env, ...env } });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  child.stdout.resume();
  child.stdin.on('error', () => {});
  // the first 24 MiB go up, then the gateway stops while the rest streams in
  child.stdin.write(data.subarray(0, 24 * MiB));
  const bucket = new BucketView(rgw!, 'outage');
  t.after(() => bucket.close());
  await waitFor('packs to reach the bucket', async () => (await bucket.keys('packs/')).length > 0, 60_000);
  await rgw!.stopGateway();
  try {
    for (let off = 24 * MiB; off < data.length && child.exitCode === null; off += MiB) {
      if (!child.stdin.write(data.subarray(off, off + MiB))) await Promise.race([new Promise((r) => child.stdin.once('drain', r)), exitOf(child)]);
    }
    child.stdin.end();
    const { code } = await exitOf(child);
    assert.equal(code, 74, err.slice(-2000));
    assert.match(err, /E_IO/);
    assert.match(err, /tried \d+ times/);
    assert.match(err, /retrying/, 'the failed requests were retried first');
  } finally {
    await rgw!.startGateway();
  }
  assert.deepEqual(await bucket.keys('snapshots/'), [], 'no snapshot');
  const list = await json<unknown[]>(['snapshots'], env);
  assert.equal(list.length, 0);
  const b = await json<{ id: string }>(['backup', '--name', 'juki', '--file', await writeTemp(dir, data)], env);
  assert.equal(sha256((await ok(['restore', b.id, '--to', '-'], env)).stdout), sha256(data));
  await ok(['check'], env);
});

async function writeTemp(dir: string, data: Buffer): Promise<string> {
  const f = path.join(dir, 'input.sql');
  writeFileSync(f, data);
  return f;
}

test('repo init refuses a store behind a gateway that ignores If-None-Match (E_STORE_UNSAFE) and writes nothing', async (t) => {
  if (!rgwOrSkip(t)) return;
  const proxy = await new OverwritingProxy(rgw!).start();
  t.after(() => proxy.stop());
  const dir = dirOf('unsafe');
  const cfg = s3Config(dir, 'unsafe', 'x/', proxy.endpoint);
  const r = await run(['repo', 'init'], { KURA_CONFIG: cfg });
  assert.equal(r.status, 78, r.stderr);
  assert.match(r.stderr, /E_STORE_UNSAFE/);
  assert.match(r.stderr, /If-None-Match/);
  assert.ok(proxy.conditionalPutsIgnored >= 2);
  const bucket = new BucketView(rgw!, 'unsafe');
  t.after(() => bucket.close());
  assert.deepEqual(await bucket.keys('x/'), [], 'no config, key or probe object left');
});

/** Five nightly exports sharing a base, each with its own changes. */
async function nights(dir: string, env: Record<string, string>, repoArgs: string[]): Promise<Array<{ id: string; sha: string }>> {
  const base = await collect(sqlDump(11, 4 * MiB));
  const r = new Prng(3);
  const out = [];
  for (let night = 0; night < 5; night++) {
    const parts: Buffer[] = [];
    for (let i = 0; i < 4; i++) parts.push(base.subarray(i * MiB, (i + 1) * MiB), Buffer.from(`-- night ${night} part ${i}\n`), r.bytes(96 << 10));
    const data = Buffer.concat(parts);
    const file = path.join(dir, `night${night}.sql`);
    writeFileSync(file, data);
    const b = await json<{ id: string }>(['backup', ...repoArgs, '--name', 'juki', '--file', file], env);
    out.push({ id: b.id, sha: sha256(data) });
  }
  return out;
}

for (const backend of ['fs', 's3'] as const) {
  test(`${backend}: prune + gc free what no kept snapshot uses, and a gc killed at any moment leaves the kept snapshots whole; a rerun deletes what it condemned`, async (t) => {
    if (backend === 's3' && !rgwOrSkip(t)) return;
    const dir = dirOf(`gc-${backend}`);
    const env: Record<string, string> = backend === 's3' ? { KURA_CONFIG: s3Config(dir, 'gc-test', 'pristine/') } : {};
    const repoArgs = backend === 'fs' ? ['--repo', path.join(dir, 'repo')] : [];
    await ok(['repo', 'init', ...repoArgs], env);
    const all = await nights(dir, env, repoArgs);
    await ok(['prune', ...repoArgs, '--keep-last', '2'], env);
    const kept = all.slice(3);
    // an undisturbed gc, on a copy, for its duration
    const bucket = backend === 's3' ? new BucketView(rgw!, 'gc-test') : null;
    t.after(() => bucket?.close());
    const copyOf = async (name: string): Promise<{ env: Record<string, string>; args: string[] }> => {
      if (backend === 'fs') {
        cpSync(path.join(dir, 'repo'), path.join(dir, name), { recursive: true });
        return { env, args: ['--repo', path.join(dir, name)] };
      }
      for (const k of await bucket!.keys('pristine/')) await bucket!.put(`${name}/${k.slice('pristine/'.length)}`, await bucket!.get(k));
      const d = dirOf(`gc-${backend}-${name}`);
      cpSync(path.join(dir, 'local'), path.join(d, 'local'), { recursive: true });
      return { env: { KURA_CONFIG: s3Config(d, 'gc-test', `${name}/`) }, args: [] };
    };
    const probe = await copyOf('probe');
    const work = (await json<{ seconds: number; chunksRemoved: number; packsDeleted: number; packsRewritten: number }>(['gc', ...probe.args], probe.env));
    assert.ok(work.chunksRemoved > 0);
    for (const n of kept) assert.equal(sha256((await ok(['restore', ...probe.args, n.id, '--to', '-'], probe.env)).stdout), n.sha);
    const r = new Prng(backend === 'fs' ? 71 : 72);
    for (let trial = 0; trial < 2; trial++) {
      const c = await copyOf(`trial${trial}`);
      const gc = spawn(process.execPath, [KURA, 'gc', ...c.args], { cwd: ROOT, env: { ...process.env, ...rgw?.env, KURA_PASSPHRASE: 'correct horse', ...c.env }, stdio: 'ignore' });
      await sleep(300 + (r.next() % Math.max(1, Math.round(work.seconds * 1000))));
      gc.kill('SIGKILL');
      await exitOf(gc);
      for (const n of kept) assert.equal(sha256((await ok(['restore', ...c.args, n.id, '--to', '-'], c.env)).stdout), n.sha, `trial ${trial}`);
      await ok(['gc', ...c.args], c.env);
      const check = await json<{ ok: boolean; chunksUnreferenced: number }>(['check', ...c.args, '--read-data'], c.env);
      assert.equal(check.ok, true, `trial ${trial}`);
      assert.equal(check.chunksUnreferenced, 0, `trial ${trial}`);
    }
    t.diagnostic(`${backend}: gc took ${work.seconds.toFixed(2)} s undisturbed`);
  });
}
