import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { kuraAsync, kuraJson, kuraOk } from './support/cli.js';
import { churn, collect, Prng, sha256, sqlDump } from './support/generate.js';
import { referencedChunks } from './support/snapshots.js';
import { agentConfig, sshKey, startVault, vaultSession, type VaultProcess } from './support/vault.js';
import { Frame } from '../src/protocol/frames.js';
import { remoteBlobs } from '../src/restorer/remote.js';
import { SLICE_CHUNKS } from '../src/vault/frames/chunks.js';
import { Repository } from '../src/repository/repository.js';
import { readChunk } from '../src/repository/reader.js';

/**
 * Restores from a vault read ahead: the client asks for several segments at once on its one
 * session, and the vault reads the requests queued behind the one it answers. One vault for the
 * file, holding three nights of a dump in 4 KiB chunks (each night's chunks lie in the three
 * nights' packs, switching every few chunks).
 */
let dir = '';
let vault: VaultProcess;
let env: Record<string, string> = {};
let key: { private: string; public: string };
const nights: Array<{ id: string; data: Buffer }> = [];

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'kura-vault-restore-'));
  key = sshKey(dir, 'relay');
  vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private }) };
  kuraOk(['repo', 'init', '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384'], { env });
  let data = await collect(sqlDump(61, 6 << 20));
  for (let night = 0; night < 3; night++) {
    if (night > 0) data = churn(data, 9, night);
    const f = path.join(dir, `night${night}.sql`);
    writeFileSync(f, data);
    nights.push({ id: kuraJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { env }).id, data });
  }
  kuraOk(['relay', 'once'], { env });
});

after(async () => {
  await vault?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('restore --from of a night of deltas in 4 KiB chunks, its segments read side by side on one session, is byte-identical', async () => {
  for (const night of [nights[2]!, nights[0]!]) {
    const r = await kuraAsync(['restore', '--from', 'peer-dc', night.id, '--to', '-'], { env });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(sha256(r.stdout), sha256(night.data));
  }
});

test('remoteBlobs: readers asking at once on one session each get their own chunks in order, one that stops early disturbs nobody, and a chunk the vault lacks fails its reader and those after it', async (t) => {
  const ids = await referencedChunks(path.join(dir, 'repo'), nights[2]!.id);
  assert.ok(ids.length > 900, `${ids.length} chunks`);
  const local = await Repository.open(path.join(dir, 'repo'), null);
  t.after(() => local.close());
  const conn = await vaultSession(vault, key.private);
  t.after(() => conn.close());
  const blobs = remoteBlobs(conn);

  const asked = { a: ids.slice(0, 300), b: ids.slice(300, 400), c: ids.slice(400, 700), d: ids.slice(700, 900) };
  const a = blobs(asked.a);
  const b = blobs(asked.b);
  const c = blobs(asked.c);
  const got: Record<string, Buffer[]> = { a: [], b: [], c: [], d: [] };
  const check = async (reader: string, x: { id: Buffer; blob: Buffer }) => {
    const i = got[reader]!.length;
    assert.ok(x.id.equals(asked[reader as keyof typeof asked][i]!), `${reader}'s chunk ${i} is the one it asked for`);
    assert.ok(x.blob.equals((await readChunk(local, x.id))!), `${reader}'s chunk ${i} is the stored blob`);
    got[reader]!.push(x.id);
  };
  // b is read first, a and c taken turn about; c stops after 5 while its answers are still coming
  for await (const x of b) await check('b', x);
  for (;;) {
    const [x, y] = await Promise.all([a.next(), got.c!.length < 5 ? c.next() : Promise.resolve({ done: true as const, value: undefined })]);
    if (!x.done) await check('a', x.value);
    if (!y.done) await check('c', y.value);
    if (x.done && (y.done || got.c!.length === 5)) break;
  }
  await c.return(undefined);
  for await (const x of blobs(asked.d)) await check('d', x);
  assert.deepEqual([got.a!.length, got.b!.length, got.c!.length, got.d!.length], [300, 100, 5, 200]);

  // a reader of three requests' chunks that stops after 10 (the rest of its answers are dropped
  // as they come), then 40 readers at once (more requests than are kept in flight): each still
  // gets its own
  const many = Array.from({ length: 3000 }, (_, i) => ids[i % 900]!);
  let taken = 0;
  for await (const x of blobs(many)) {
    assert.ok(x.id.equals(many[taken]!));
    if (++taken === 10) break;
  }
  const crowd = Array.from({ length: 40 }, (_, k) => ids.slice(k * 20, k * 20 + 20));
  const answers = await Promise.all(crowd.map(async (want) => (await collectBlobs(blobs(want))).map((x) => x.id)));
  answers.forEach((got, k) => assert.deepEqual(got, crowd[k], `reader ${k} of 40 gets its own chunks in order`));

  // a chunk the vault does not hold: the reader asking for it fails, and so does any after it (the vault ends the session)
  const unknown = new Prng(62).bytes(32);
  const e = blobs([ids[0]!, unknown, ids[1]!]);
  await assert.rejects(async () => {
    for await (const x of e) void x;
  }, { code: 'E_CHUNK_MISSING' });
  await assert.rejects(async () => {
    for await (const x of blobs([ids[2]!])) void x;
  }, (err: Error & { code?: string }) => err.code === 'E_CHUNK_MISSING' || err.code === 'E_LINK_DOWN');
});

async function collectBlobs<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

test('GET_CHUNKS requests sent back to back are answered in order, slices read ahead included, and a chunk missing from a later one is reported in its turn', async (t) => {
  const ids = await referencedChunks(path.join(dir, 'repo'), nights[1]!.id);
  const conn = await vaultSession(vault, key.private);
  t.after(() => conn.close());
  const unknown = new Prng(63).bytes(32);
  // a request, a small one, and one whose second slice holds a chunk the vault lacks (read ahead
  // while the first requests are answered)
  const before = SLICE_CHUNKS + 36;
  assert.ok(ids.length >= 160 + before + 20, `${ids.length} chunks`);
  const requests = [ids.slice(0, 150), ids.slice(150, 160), [...ids.slice(160, 160 + before), unknown, ...ids.slice(160 + before, 180 + before)]];
  for (const r of requests) await conn.send(Frame.GET_CHUNKS, Buffer.concat(r));
  const expected = [...requests[0]!, ...requests[1]!, ...requests[2]!.slice(0, before)];
  let received = 0;
  const failure = await (async () => {
    for (;;) {
      const f = await conn.expect(Frame.CHUNK).catch((e: Error) => e);
      if (f instanceof Error) return f as Error & { code?: string };
      assert.ok(received < expected.length, 'no chunk after the one the vault lacks');
      assert.ok(f.payload.subarray(0, 32).equals(expected[received]!), `answer ${received} is the chunk asked for`);
      received++;
    }
  })();
  assert.equal(failure.code, 'E_CHUNK_MISSING', failure.message);
  assert.ok(failure.message.includes(unknown.toString('hex')), failure.message);
  // the first two requests whole, and the third's first slice (its chunks are small: not cut by
  // bytes): the failure came in its turn, after what was gathered before it
  assert.equal(received, 160 + SLICE_CHUNKS);
});
