import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import Database from 'better-sqlite3';
import { kura, kuraAsync, kuraJson, kuraOk, spawnKura, tempDir } from './support/cli.js';
import { collect, Prng, sqlDump } from './support/generate.js';
import { exitOf, waitFor as waitUntil } from './support/proc.js';
import { LinkProxy, sleep } from './support/proxy.js';
import { agentConfig, sshKey, startVault, vaultSession } from './support/vault.js';
import { encodeFrame, Frame, FrameParser, jsonOf, PROTOCOL_VERSION } from '../src/protocol/frames.js';
import { Blake3Hasher } from '@napi-rs/blake-hash';
import { KuraError } from '../src/errors.js';
import { idsOf } from '../src/repository/chunklist.js';
import { packId } from '../src/repository/pack.js';
import { listFetcher, readBlobs } from '../src/repository/reader.js';
import { Repository } from '../src/repository/repository.js';
import { decodeSnapshot, snapshotChunkIds } from '../src/repository/snapshot.js';
import { parseWant, sendSnapshot } from '../src/relay/transfer.js';
import type { VaultConnection } from '../src/relay/connection.js';

const require = createRequire(import.meta.url);
const ssh2 = require('ssh2') as typeof import('ssh2');
const MiB = 1 << 20;

const waitFor = (what: string, cond: () => boolean, timeoutMs = 60_000) => waitUntil(what, cond, timeoutMs);

function relayState(repo: string) {
  const db = new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true, fileMustExist: true });
  try {
    const queued = (db.prepare('SELECT count(*) AS n FROM queue WHERE sent IS NULL').get() as { n: number }).n;
    const route = db.prepare('SELECT * FROM route_state WHERE route = ?').get('peer-dc') as { state: string; last_error: string | null } | undefined;
    return { queued, state: route?.state, lastError: route?.last_error };
  } finally {
    db.close();
  }
}

/** A vault process for tenant city-a, reached through a controllable link. */
async function vaultBehindLink(t: import('node:test').TestContext) {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const link = await new LinkProxy(vault.port).start();
  t.after(() => link.close());
  return { dir, key, vault, link };
}

/** A vault for city-a on its own port, a local repository of chunks min/4 min/16 min, and a file of random bytes. */
async function vaultAndFile(t: import('node:test').TestContext, bytes: number, chunkMin: number) {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private }) };
  kuraOk(['repo', 'init', '--chunk-min', String(chunkMin), '--chunk-avg', String(chunkMin * 4), '--chunk-max', String(chunkMin * 16)], { env });
  const data = new Prng(bytes).bytes(bytes);
  const f = path.join(dir, 'data.bin');
  writeFileSync(f, data);
  return { dir, key, vault, env, data, f };
}

test('after a five-day line outage the relay catches up in order, and every day restores byte-identical from the vault', async (t) => {
  const { dir, key, vault, link } = await vaultBehindLink(t);
  link.down();
  const cfg = agentConfig(dir, { port: link.port, hostKeySha256: vault.hostKeySha256, key: key.private });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  const relay = spawnKura(['relay', 'run'], env);
  t.after(() => relay.kill('SIGKILL'));

  // five nightly exports while the line is down: a shared base, each day with its own changes
  const base = await collect(sqlDump(5, 6 * MiB));
  const days: Buffer[] = [];
  for (let d = 1; d <= 5; d++) {
    const day = Buffer.concat([base.subarray(0, d * MiB), Buffer.from(`-- day ${d}\n`), await collect(sqlDump(100 + d, MiB)), base.subarray(d * MiB)]);
    days.push(day);
    const f = path.join(dir, `day${d}.sql`);
    writeFileSync(f, day);
    kuraOk(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { env });
  }
  await waitFor('the relay to notice the line is down', () => relayState(path.join(dir, 'repo')).state === 'waiting-for-line');
  assert.equal(relayState(path.join(dir, 'repo')).queued, 5);
  assert.match(relayState(path.join(dir, 'repo')).lastError ?? '', /E_LINK_DOWN/);

  link.up();
  await waitFor('the backlog to drain', () => relayState(path.join(dir, 'repo')).queued === 0);
  const local = kuraJson<Array<{ id: string }>>(['snapshots'], { env });
  const listed = await kuraAsync(['snapshots', '--from', 'peer-dc', '--json'], { env });
  assert.equal(listed.status, 0, listed.stderr);
  const remote = JSON.parse(listed.out) as Array<{ id: string; receivedSeq: number }>;
  assert.deepEqual(
    [...remote].sort((a, b) => a.receivedSeq - b.receivedSeq).map((r) => r.id),
    local.map((l) => l.id),
    'the vault received the days oldest first',
  );
  for (let d = 0; d < 5; d++) {
    const out = (await kuraAsync(['restore', '--from', 'peer-dc', local[d]!.id], { env })).stdout;
    assert.ok(out.equals(days[d]!), `day ${d + 1} restores byte-identical from the vault`);
  }
  // the business server is gone: an exported key file alone decrypts what the vault holds
  const keyFile = path.join(dir, 'juki.key');
  kuraOk(['key', 'export', '--to', keyFile, '--raw'], { env });
  const lost = await kuraAsync(['restore', '--from', 'peer-dc', local[4]!.id, '--key-file', keyFile], { env: { ...env, KURA_PASSPHRASE: undefined } });
  assert.equal(lost.status, 0, lost.stderr);
  assert.ok(lost.stdout.equals(days[4]!), 'restored with the key file alone');
  relay.kill('SIGTERM');
  assert.equal((await exitOf(relay)).code, 0, 'SIGTERM stops the relay cleanly');
  assert.ok(vault.audit().some((e) => e.event === 'commit' && e.tenant === 'city-a'));
});

async function uploadScenario(t: import('node:test').TestContext, interrupt: 'reset' | 'kill') {
  const { dir, key, vault, link } = await vaultBehindLink(t);
  const cfg = agentConfig(dir, { port: link.port, hostKeySha256: vault.hostKeySha256, key: key.private });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  const data = new Prng(interrupt === 'reset' ? 1 : 2).bytes(12 * MiB); // incompressible: 12 MiB must cross
  const f = path.join(dir, 'dump.bin');
  writeFileSync(f, data);
  const b = kuraJson<{ id: string; newBytes: number }>(['backup', '--name', 'db', '--file', f, '--route', 'peer-dc'], { env });

  link.setRate(4 * MiB);
  const first = spawnKura(interrupt === 'reset' ? ['relay', 'once', '--json'] : ['relay', 'run'], env);
  await waitFor('part of the upload', () => link.bytesUp > 5 * MiB, 30_000);
  if (interrupt === 'reset') {
    link.resetAll();
    const r = await exitOf(first);
    assert.equal(r.code, 75, 'relay once says something is left');
  } else {
    first.kill('SIGKILL');
    await exitOf(first);
  }
  assert.equal(relayState(path.join(dir, 'repo')).queued, 1);
  link.setRate(null);
  const again = await kuraAsync(['relay', 'once', '--json'], { env });
  assert.equal(again.status, 0, again.stderr);
  const report = JSON.parse(again.out.trim().split('\n').pop()!) as { sent: number; sendingSeconds: number };
  assert.equal(report.sent, 1);
  assert.ok(report.sendingSeconds > 0, 'the report says how long the sending took');
  assert.equal(relayState(path.join(dir, 'repo')).queued, 0);

  // bytes that crossed the link, measured by the link: the missing data once, plus at most the
  // batch in flight when the link broke (1 MiB here), plus protocol and SSH overhead
  const batch = 1 * MiB;
  const overhead = 0.03 * b.newBytes + 2 * 64 * 1024;
  t.diagnostic(`link carried ${link.bytesUp} bytes for ${b.newBytes} new bytes (${(link.bytesUp / b.newBytes).toFixed(3)}×)`);
  assert.ok(link.bytesUp <= b.newBytes + batch + overhead, `${link.bytesUp} bytes crossed for ${b.newBytes} missing`);
  assert.ok((await kuraAsync(['restore', '--from', 'peer-dc', b.id], { env })).stdout.equals(data));
}

test('a connection reset mid-upload resumes without sending again what the vault acknowledged', (t) => uploadScenario(t, 'reset'));
test('kill -9 of the relay mid-upload: the restarted relay finishes, resending at most the batch in flight', (t) => uploadScenario(t, 'kill'));

/** Open the vault protocol channel directly, to misbehave on purpose. */
function rawChannel(port: number, user: string, keyFile: string): Promise<{ client: import('ssh2').Client; ch: import('ssh2').ClientChannel }> {
  return new Promise((resolve, reject) => {
    const client = new ssh2.Client();
    client.on('error', reject);
    client.on('ready', () => client.exec('kura-vault', (err, ch) => (err ? reject(err) : resolve({ client, ch }))));
    client.connect({ host: '127.0.0.1', port, username: user, privateKey: readFileSync(keyFile) });
  });
}

async function collectReply(ch: import('ssh2').ClientChannel): Promise<Array<{ type: number; payload: Buffer }>> {
  const parser = new FrameParser(64 * MiB);
  const frames: Array<{ type: number; payload: Buffer }> = [];
  await new Promise<void>((resolve) => {
    ch.on('data', (d: Buffer) => frames.push(...parser.push(d)));
    ch.on('close', () => resolve());
  });
  return frames;
}

test('refused attempts get a coded error and an audit line, and the vault keeps serving', async (t) => {
  const dir = tempDir(t);
  const a = sshKey(dir, 'city-a');
  const b = sshKey(dir, 'city-b');
  const far = sshKey(dir, 'far-away');
  const stranger = sshKey(dir, 'stranger');
  const vault = await startVault(
    dir,
    `    city-a:\n      clients:\n        - key: ${a.public}\n          role: tenant-admin\n    city-b:\n      clients:\n        - key: ${b.public}\n          role: tenant-admin\n        - key: ${far.public}\n          networks: [10.0.0.0/8]\n`,
  );
  t.after(() => vault.stop());
  const cfgA = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: a.private, name: 'a.yaml' });
  kuraOk(['repo', 'init'], { env: { KURA_CONFIG: cfgA } });
  kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env: { KURA_CONFIG: cfgA }, input: 'city A resident rows\n' });
  kuraOk(['relay', 'once'], { env: { KURA_CONFIG: cfgA } });

  const refused = (args: string[], cfg: string) => kura(args, { env: { KURA_CONFIG: cfg } });
  // unknown key
  const r1 = refused(['snapshots', '--from', 'peer-dc'], agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: stranger.private, name: 's.yaml' }));
  assert.equal(r1.status, 77);
  assert.match(r1.stderr, /E_AUTH_DENIED/);
  // tenant B's key asking for tenant A
  const r2 = refused(['snapshots', '--from', 'peer-dc'], agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: b.private, tenant: 'city-a', name: 'b-as-a.yaml' }));
  assert.equal(r2.status, 77);
  // a key used from outside its networks
  const r3 = refused(['snapshots', '--from', 'peer-dc'], agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: far.private, tenant: 'city-b', name: 'far.yaml' }));
  assert.equal(r3.status, 77);
  // a wrong pinned host key is refused by the client before anything is sent
  const r4 = refused(['snapshots', '--from', 'peer-dc'], agentConfig(dir, { port: vault.port, hostKeySha256: 'SHA256:' + Buffer.alloc(32, 1).toString('base64').replace(/=+$/, ''), key: a.private, name: 'pin.yaml' }));
  assert.equal(r4.status, 77);
  assert.match(r4.stderr, /E_HOST_KEY/);

  // protocol abuse on an authenticated channel
  const hello = encodeFrame(Frame.HELLO, { protocol: 1, tenant: 'city-b', client: 'test' });
  const abuse: Array<[string, Buffer[], string]> = [
    ['oversized frame', [hello, Buffer.from([0x7f, 0xff, 0xff, 0xff, 0x12])], 'E_FRAME_TOO_LARGE'],
    ['truncated frame', [hello, Buffer.from([0, 0, 3, 0xe8, 0x12, 1, 2, 3])], 'E_FRAME_TRUNCATED'],
    ['garbage after the handshake', [hello, new Prng(3).bytes(300)], ''],
    ['wrong tenant in HELLO', [encodeFrame(Frame.HELLO, { protocol: 1, tenant: 'city-a' })], 'E_TENANT_MISMATCH'],
    ['a request before HELLO', [encodeFrame(Frame.LIST, {})], 'E_PROTOCOL'],
  ];
  for (const [what, chunks, code] of abuse) {
    const refusals = () => vault.audit().filter((e) => e.outcome === 'refused' && e.tenant === 'city-b' && (!code || e.code === code)).length;
    const before = refusals();
    const { client, ch } = await rawChannel(vault.port, 'city-b', b.private);
    const replies = collectReply(ch);
    for (const c of chunks) ch.write(c);
    ch.end();
    const frames = await replies;
    client.end();
    const err = frames.find((f) => f.type === Frame.ERROR);
    if (code && what !== 'truncated frame') {
      assert.ok(err, `${what}: an ERROR frame`);
      assert.equal(JSON.parse(err.payload.toString()).code, code, what);
    }
    await waitFor(`${what} to be audited`, () => refusals() > before, 10_000);
  }
  // an exec of anything but the vault protocol
  const { client } = await rawChannel(vault.port, 'city-b', b.private).catch(() => ({ client: null }));
  client?.end();

  const audit = vault.audit();
  assert.ok(audit.some((e) => e.event === 'auth' && e.reason === 'unknown key'));
  assert.ok(audit.some((e) => e.event === 'auth' && e.code === 'E_TENANT_MISMATCH'));
  assert.ok(audit.some((e) => e.event === 'auth' && String(e.reason).includes('outside')));

  // tenant B sees nothing of tenant A, and cannot store a snapshot of tenant A
  const cfgB = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: b.private, tenant: 'city-b', name: 'bb.yaml' });
  assert.deepEqual(kuraJson<unknown[]>(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: cfgB } }), []);
  const sneaky = path.join(dir, 'sneaky');
  const cfgSneaky = agentConfig(path.join(dir), { port: vault.port, hostKeySha256: vault.hostKeySha256, key: b.private, tenant: 'city-a', name: 'sneaky.yaml' }).replace('', '');
  writeFileSync(cfgSneaky, readFileSync(cfgSneaky, 'utf8').replace(`path: ${path.join(dir, 'repo')}`, `path: ${sneaky}`).replace('        clientKey', '        tenant: city-b\n        clientKey'));
  kuraOk(['repo', 'init'], { env: { KURA_CONFIG: cfgSneaky } });
  kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env: { KURA_CONFIG: cfgSneaky }, input: 'pretending to be city A\n' });
  const sent = kura(['relay', 'once'], { env: { KURA_CONFIG: cfgSneaky } });
  assert.equal(sent.status, 77, sent.stderr);
  assert.match(sent.stderr, /E_TENANT_MISMATCH/);

  // and after all that, tenant A is served as before
  const rows = kuraJson<Array<{ source: string }>>(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: cfgA } });
  assert.deepEqual(rows.map((r) => r.source), ['juki']);
  assert.equal(kuraOk(['restore', '--from', 'peer-dc', 'latest:juki'], { env: { KURA_CONFIG: cfgA } }).out, 'city A resident rows\n');
});

test('endpoints fail over in order; when none answers the route waits for the line and says which failed', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n`);
  t.after(() => vault.stop());
  const dead = await new LinkProxy(1).start(); // a port that takes connections and resets them
  dead.down();
  t.after(() => dead.close());
  const extra = (ports: number[]) =>
    `      dr:\n        endpoints:\n${ports.map((p) => `          - { host: 127.0.0.1, port: ${p}, hostKeySha256: "${vault.hostKeySha256}" }\n`).join('')}        clientKey: ${key.private}\n`;
  const cfg = agentConfig(dir, { port: dead.port, key: key.private, extraRoute: extra([dead.port, vault.port]) });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'dr', '--route', 'peer-dc'], { env, input: 'rows\n' });
  const r = await kuraAsync(['relay', 'once', '--json'], { env });
  assert.equal(r.status, 75, r.stderr);
  const reports = r.out.trim().split('\n').map((l) => JSON.parse(l) as { route: string; state: string; sent: number; error?: { message: string } });
  const dr = reports.find((x) => x.route === 'dr')!;
  const peer = reports.find((x) => x.route === 'peer-dc')!;
  assert.equal(dr.sent, 1, 'the second endpoint took the transfer');
  assert.equal(peer.state, 'waiting-for-line');
  assert.match(peer.error!.message, new RegExp(`127\\.0\\.0\\.1:${dead.port}`));
});

test('a churned day crosses the link as little more than its new bytes: the vault works out what it lacks from the chunk list', async (t) => {
  const { dir, key, vault, link } = await vaultBehindLink(t);
  const env = { KURA_CONFIG: agentConfig(dir, { port: link.port, hostKeySha256: vault.hostKeySha256, key: key.private }) };
  kuraOk(['repo', 'init'], { env });
  const day1 = await collect(sqlDump(21, 32 * MiB));
  const f = path.join(dir, 'day.sql');
  writeFileSync(f, day1);
  kuraOk(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { env });
  assert.equal((await kuraAsync(['relay', 'once'], { env })).status, 0);
  // day 2: 300 scattered row edits and 1 % appended rows
  const day2 = Buffer.from(day1);
  const r = new Prng(22);
  for (let i = 0; i < 300; i++) day2.write(String(r.next() % 1e6).padStart(6, '0'), r.next() % (day2.length - 16), 'latin1');
  const data = Buffer.concat([day2, await collect(sqlDump(23, Math.round(day1.length / 100)))]);
  writeFileSync(f, data);
  const b = kuraJson<{ id: string; newBytes: number; chunks: number }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc', '--json'], { env });
  const before = link.bytesUp;
  const sent = await kuraAsync(['relay', 'once'], { env });
  assert.equal(sent.status, 0, sent.stderr);
  const wire = link.bytesUp - before;
  t.diagnostic(`${wire} bytes crossed for ${b.newBytes} new bytes stored (${(wire / b.newBytes).toFixed(3)}×), ${b.chunks} chunks`);
  // asking about every chunk (32 bytes each) and naming every sent blob (64 bytes) took ~1.15× here;
  // what remains is the SSH handshake (~4 KiB) and a few bytes of framing per blob
  assert.ok(wire <= 1.03 * b.newBytes + 8192, `${wire} bytes crossed for ${b.newBytes} new bytes`);
  assert.ok((await kuraAsync(['restore', '--from', 'peer-dc', b.id], { env })).stdout.equals(data));
});

test('WANT names what a snapshot lacks (list blocks, then data), PUT_NEXT fills it in order, and a damaged batch is refused with nothing of it stored', async (t) => {
  const { dir, key, vault, env, data, f } = await vaultAndFile(t, 2 * MiB, 1024);
  const { id } = kuraJson<{ id: string }>(['backup', '--name', 'db', '--file', f], { env });
  const repoDir = path.join(dir, 'repo');
  const bytes = readFileSync(path.join(repoDir, 'snapshots', id));
  const snap = decodeSnapshot(bytes, id);
  assert.ok(snap.listDepth >= 1, 'the chunk list is a tree of blocks');
  const local = await Repository.open(repoDir, null);
  t.after(() => local.close());
  const dataIds = [...idsOf(await snapshotChunkIds(snap, listFetcher(local)))];
  const hex = (ids: Buffer[]) => ids.map((i) => i.toString('hex')).sort();
  const want = async (conn: VaultConnection, payload: Buffer) => parseWant((await conn.request(Frame.WANT, payload, Frame.WANT_REPLY)).payload);
  // PUT_NEXT each blob, or (runs) PUT_RUN frames of up to 7 blobs
  const putAll = async (conn: VaultConnection, ids: Buffer[], seq: number, damage = false, runs = false) => {
    const sum = new Blake3Hasher();
    let run: Buffer[] = [];
    const sendRun = async () => {
      const head = Buffer.alloc(4 + 4 * run.length);
      head.writeUInt32BE(run.length, 0);
      run.forEach((b, i) => head.writeUInt32BE(b.length, 4 + 4 * i));
      await conn.send(Frame.PUT_RUN, Buffer.concat([head, ...run]));
      run = [];
    };
    for await (const { blob } of readBlobs(local, ids, 'test')) {
      sum.update(blob);
      if (!runs) await conn.send(Frame.PUT_NEXT, blob);
      else if (run.push(blob) === 7) await sendRun();
    }
    if (run.length > 0) await sendRun();
    await conn.send(Frame.FLUSH, { seq, sum: damage ? '00'.repeat(32) : sum.digest('hex') });
    return conn.expect(Frame.FLUSHED);
  };

  // a COMMIT after a WANT that still lacked something is checked in full, and refused (the frames
  // below are protocol 3's: protocol 4 adds the blobs' digests to FLUSH, tested in corruption.test.ts)
  const early = await vaultSession(vault, key.private, 'city-a', 3);
  assert.ok((await want(early, bytes)).ids.length > 0);
  const refused = await early.request(Frame.COMMIT, Buffer.from(id, 'hex'), Frame.COMMITTED).catch((e: Error) => e);
  early.close();
  assert.ok(refused instanceof KuraError && refused.code === 'E_CHUNK_MISSING', `commit of an incomplete snapshot: ${String(refused)}`);

  const conn = await vaultSession(vault, key.private, 'city-a', 3);
  t.after(() => conn.close());
  const blocks = await want(conn, bytes);
  assert.deepEqual(hex(blocks.ids), hex([...idsOf(snap.listIds)]), 'first the list blocks: the vault cannot read further without them');
  await putAll(conn, blocks.ids, 1);
  const lacking = await want(conn, Buffer.from(id, 'hex'));
  assert.deepEqual(hex(lacking.ids), [...new Set(hex(dataIds))], 'then every data chunk, once');
  const half = lacking.ids.slice(0, lacking.ids.length >> 1);
  const damaged = await putAll(conn, half, 2, true).catch((e: Error) => e);
  assert.ok(damaged instanceof KuraError && damaged.code === 'E_CHUNK_CORRUPT', `a batch whose checksum does not match is refused: ${String(damaged)}`);

  const again = await vaultSession(vault, key.private, 'city-a', 3);
  t.after(() => again.close());
  assert.equal(again.protocol, 3);
  assert.equal((await want(again, bytes)).ids.length, lacking.ids.length, 'nothing of the damaged batch was stored');
  // this time as PUT_RUN frames (protocol 3): several blobs in order under one header
  const flushed = jsonOf<{ chunks: number }>(await putAll(again, lacking.ids, 1, false, true));
  assert.equal(flushed.chunks, lacking.ids.length);
  assert.deepEqual(await want(again, Buffer.from(id, 'hex')), { ids: [], prefixes: [] });
  const committed = JSON.parse((await again.request(Frame.COMMIT, Buffer.from(id, 'hex'), Frame.COMMITTED)).payload.toString()) as { id: string };
  assert.equal(committed.id, id);

  // PUT_NEXT or PUT_RUN with nothing asked for, a WANT naming a snapshot this session was never
  // sent, a PUT_RUN whose lengths do not add up, and PUT_RUN in a protocol 2 session
  let oneBlob: Buffer = Buffer.alloc(0);
  for await (const { blob } of readBlobs(local, [dataIds[0]!], 'test')) oneBlob = blob;
  const runOf = (lengths: number[], blobs: Buffer) => {
    const head = Buffer.alloc(4 + 4 * lengths.length);
    head.writeUInt32BE(lengths.length, 0);
    lengths.forEach((l, i) => head.writeUInt32BE(l, 4 + 4 * i));
    return Buffer.concat([head, blobs]);
  };
  const cases: Array<[string, [number, Buffer], boolean?, number?]> = [
    ['PUT_NEXT without WANT', [Frame.PUT_NEXT, oneBlob]],
    ['PUT_RUN without WANT', [Frame.PUT_RUN, runOf([oneBlob.length], oneBlob)]],
    ['WANT by ID only', [Frame.WANT, Buffer.alloc(32, 7)]],
    ['PUT_RUN whose lengths do not add up', [Frame.PUT_RUN, runOf([oneBlob.length, 5], oneBlob)], true],
    ['PUT_RUN of a huge count', [Frame.PUT_RUN, runOf([oneBlob.length], oneBlob).fill(0xff, 0, 4)], true],
    ['PUT_RUN in a protocol 2 session', [Frame.PUT_RUN, runOf([oneBlob.length], oneBlob)], true, 2],
  ];
  for (const [what, frame, afterWant, protocol] of cases) {
    const c = await vaultSession(vault, key.private, 'city-a', protocol);
    if (protocol) assert.equal(c.protocol, protocol, 'the vault speaks the version offered');
    if (afterWant) await want(c, bytes);
    await c.send(frame[0], frame[1]);
    const e = await c.request(Frame.STATS, {}, Frame.STATS_REPLY).catch((err: Error) => err);
    c.close();
    assert.ok(e instanceof KuraError && e.code === 'E_PROTOCOL', `${what}: ${String(e)}`);
  }
  await waitFor('the refusals to be audited', () => vault.audit().filter((e) => e.outcome === 'refused' && e.code === 'E_PROTOCOL').length >= cases.length, 10_000);
  // a newer client is answered with the vault's version
  const newer = await vaultSession(vault, key.private, 'city-a', PROTOCOL_VERSION + 5);
  assert.equal(newer.protocol, PROTOCOL_VERSION);
  newer.close();
  assert.ok(vault.audit().some((e) => e.outcome === 'refused' && e.code === 'E_CHUNK_CORRUPT'));
  local.close();
  assert.ok((await kuraAsync(['restore', '--from', 'peer-dc', id], { env })).stdout.equals(data));

  // a vault told to stop while clients sit idle in sessions ends them and exits, in bounded time
  const t0 = Date.now();
  await vault.stop();
  assert.ok(Date.now() - t0 < 5000, `the vault stopped in ${Date.now() - t0} ms with two idle sessions open`);
  assert.equal(vault.child.exitCode, 0);
  assert.ok(vault.audit().filter((e) => e.event === 'session-end').length >= 1, 'the ended sessions are audited');
});

test('a first send of more chunks than one WANT_REPLY names (65,536) goes in rounds, commits and restores', async (t) => {
  const { dir, vault, env, data, f } = await vaultAndFile(t, 96 * MiB, 256);
  const b = kuraJson<{ id: string; chunks: number }>(['backup', '--name', 'db', '--file', f, '--route', 'peer-dc', '--json'], { env });
  assert.ok(b.chunks > 70_000, `${b.chunks} chunks`);
  const sent = await kuraAsync(['relay', 'once', '--json'], { env });
  assert.equal(sent.status, 0, sent.stderr);
  // exactly the distinct chunks and list blocks of the snapshot, each once
  const local = await Repository.open(path.join(dir, 'repo'), null);
  const blocks = new Set<string>();
  const ids = await snapshotChunkIds(decodeSnapshot(readFileSync(path.join(dir, 'repo', 'snapshots', b.id)), b.id), listFetcher(local), (id) => blocks.add(id.toString('hex')));
  local.close();
  const distinct = new Set([...idsOf(ids)].map((i) => i.toString('hex'))).size;
  const put = vault.audit().filter((e) => e.event === 'session-end').reduce((n, e) => n + Number(e.put ?? 0), 0);
  t.diagnostic(`${put} blobs put for ${distinct} distinct data chunks and ${blocks.size} chunk list blocks`);
  assert.equal(put, distinct + blocks.size);
  // every pack the vault wrote is named by the hash of its bytes (a batch's ID continues the hash
  // of its checksum)
  const packs = readdirSync(path.join(vault.root, 'tenants', 'city-a', 'packs'), { recursive: true, withFileTypes: true }).filter((e) => e.isFile() && !e.name.startsWith('.'));
  assert.ok(packs.length > 20, `${packs.length} packs`);
  for (const p of packs) assert.equal(packId(readFileSync(path.join(p.parentPath, p.name))), p.name);
  assert.ok((await kuraAsync(['restore', '--from', 'peer-dc', b.id], { env })).stdout.equals(data));
});

test('a relay sends runs of blobs as PUT_RUN, and one blob per PUT_NEXT to a vault that speaks protocol 2; both commit and restore', async (t) => {
  const { dir, key, vault, env, f } = await vaultAndFile(t, 3 * MiB, 1024);
  const repoDir = path.join(dir, 'repo');
  const sends: Array<{ protocol: number; id: string; data: Buffer }> = [];
  for (const protocol of [2, PROTOCOL_VERSION]) {
    const data = new Prng(protocol).bytes(3 * MiB);
    writeFileSync(f, data);
    const { id } = kuraJson<{ id: string }>(['backup', '--name', 'db', '--file', f], { env });
    sends.push({ protocol, id, data });
  }
  const local = await Repository.open(repoDir, null);
  t.after(() => local.close());
  for (const s of sends) {
    const conn = await vaultSession(vault, key.private, 'city-a', s.protocol);
    assert.equal(conn.protocol, s.protocol);
    const r = await sendSnapshot(local, conn, s.id, 256 << 10);
    conn.close();
    assert.equal(r.existed, false);
    t.diagnostic(`protocol ${s.protocol}: ${r.missing} blobs, ${r.bytesOnWire} bytes on the wire for ${r.missingBytes} bytes of blobs`);
    // PUT_NEXT costs 5 bytes a blob; PUT_RUN 4 bytes a blob plus 9 a run
    const overhead = r.bytesOnWire - r.missingBytes;
    assert.ok(overhead < r.missing * (s.protocol === 2 ? 6 : 5) + 64 * 1024, `${overhead} bytes of framing for ${r.missing} blobs`);
  }
  local.close();
  await waitFor('both sessions to end', () => vault.audit().filter((e) => e.event === 'session-end').length === 2, 10_000);
  const ends = vault.audit().filter((e) => e.event === 'session-end');
  assert.equal(ends[0]!.putRuns, 0, 'protocol 2: PUT_NEXT only');
  assert.ok(Number(ends[1]!.putRuns) > 0 && Number(ends[1]!.putRuns) < Number(ends[1]!.put) / 4, `protocol 3: ${String(ends[1]!.put)} blobs in ${String(ends[1]!.putRuns)} PUT_RUN frames`);
  for (const s of sends) assert.ok((await kuraAsync(['restore', '--from', 'peer-dc', s.id], { env })).stdout.equals(s.data), `protocol ${s.protocol} send restores`);
  const packs = readdirSync(path.join(vault.root, 'tenants', 'city-a', 'packs'), { recursive: true, withFileTypes: true }).filter((e) => e.isFile() && !e.name.startsWith('.'));
  for (const p of packs) assert.equal(packId(readFileSync(path.join(p.parentPath, p.name))), p.name);
});

test('a session asking what a snapshot lacks waits while another session is still receiving its data, and is not asked for what that one delivered', async (t) => {
  const { dir, key, vault, env, f } = await vaultAndFile(t, 2 * MiB, 1024);
  const { id } = kuraJson<{ id: string }>(['backup', '--name', 'db', '--file', f], { env });
  const bytes = readFileSync(path.join(dir, 'repo', 'snapshots', id));
  const local = await Repository.open(path.join(dir, 'repo'), null);
  t.after(() => local.close());
  const want = async (conn: VaultConnection, payload: Buffer) => parseWant((await conn.request(Frame.WANT, payload, Frame.WANT_REPLY)).payload);
  let seq = 0;
  const putBatch = async (conn: VaultConnection, ids: Buffer[]) => {
    const sum = new Blake3Hasher();
    for await (const { blob } of readBlobs(local, ids, 'test')) {
      sum.update(blob);
      await conn.send(Frame.PUT_NEXT, blob);
    }
    await conn.send(Frame.FLUSH, { seq: ++seq, sum: sum.digest('hex') });
    await conn.expect(Frame.FLUSHED);
  };
  // the first sender: list blocks, then its data in paced batches (a dying relay's tail
  // arriving over a slow link), then its connection ends without a commit
  const first = await vaultSession(vault, key.private, 'city-a', 3);
  let asked = await want(first, bytes);
  while (asked.ids.length > 0 && asked.ids.length < 100) {
    await putBatch(first, asked.ids);
    asked = await want(first, Buffer.from(id, 'hex'));
  }
  const data = asked.ids;
  assert.ok(data.length >= 200, `${data.length} data chunks asked for`);
  const sentByFirst = data.slice(0, 160);
  let firstEnded = 0;
  const tail = (async () => {
    for (let i = 0; i < sentByFirst.length; i += 16) {
      await putBatch(first, sentByFirst.slice(i, i + 16));
      await sleep(100);
    }
    first.close();
    firstEnded = Date.now();
  })();
  await sleep(250);
  // a restarted relay asks while the tail is still arriving
  const second = await vaultSession(vault, key.private, 'city-a', 3);
  t.after(() => second.close());
  const lacking = await want(second, bytes);
  const answered = Date.now();
  await tail;
  assert.ok(firstEnded > 0 && answered >= firstEnded, 'the answer waited for the other session to end');
  assert.deepEqual(
    lacking.ids.map((i) => i.toString('hex')).sort(),
    data.slice(sentByFirst.length).map((i) => i.toString('hex')).sort(),
    'what the other session delivered is not asked for again',
  );
});

test('the business server is lost: a SQLite source shipped by the relay is rebuilt from the vault into a new database with an exported key file alone', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const file = path.join(dir, 'portal.sqlite');
  const sources = `sources:\n  portal:\n    type: sqlite\n    path: ${file}\n    routes: [peer-dc]\n`;
  const env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private, extraTop: sources }) };
  const db = new Database(file);
  db.exec('CREATE TABLE residents (id INTEGER PRIMARY KEY, name TEXT NOT NULL, ward TEXT NOT NULL); CREATE TABLE notices (id INTEGER PRIMARY KEY, resident INTEGER NOT NULL, body TEXT NOT NULL)');
  const add = db.prepare('INSERT INTO residents (name, ward) VALUES (?, ?)');
  const note = db.prepare('INSERT INTO notices (resident, body) VALUES (?, ?)');
  db.transaction(() => {
    for (let i = 1; i <= 20_000; i++) {
      add.run(`resident ${i}`, `ward ${i % 17}`);
      if (i % 3 === 0) note.run(i, `notice for ${i} ${'・'.repeat(i % 40)}`);
    }
  })();
  const contents = () => ({
    residents: db.prepare('SELECT * FROM residents ORDER BY id').all(),
    notices: db.prepare('SELECT * FROM notices ORDER BY id').all(),
  });
  const night1 = contents();
  kuraOk(['repo', 'init'], { env });
  type Job = { result: string; snapshot?: string; error?: { message: string } };
  const run = async () => {
    const r = await kuraAsync(['agent', 'run', '--json'], { env });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.out.trim()) as Job;
  };
  const first = await run();
  db.exec("UPDATE residents SET ward = 'ward 99' WHERE id % 500 = 0; DELETE FROM notices WHERE id % 7 = 0");
  const second = await run();
  db.close();
  assert.equal((await kuraAsync(['relay', 'once'], { env })).status, 0);

  const keyFile = path.join(dir, 'portal.key');
  kuraOk(['key', 'export', '--to', keyFile, '--raw'], { env });
  rmSync(path.join(dir, 'repo'), { recursive: true, force: true });
  rmSync(file);
  const lostEnv = { ...env, KURA_PASSPHRASE: undefined };
  const listed = await kuraAsync(['snapshots', '--from', 'peer-dc', '--json'], { env: lostEnv });
  assert.equal(listed.status, 0, listed.stderr);
  assert.deepEqual((JSON.parse(listed.out) as Array<{ id: string }>).map((s) => s.id).sort(), [first.snapshot, second.snapshot].sort());
  const target = path.join(dir, 'rebuilt.sqlite');
  const r = await kuraAsync(['restore', '--from', 'peer-dc', first.snapshot!, '--key-file', keyFile, '--into', `sqlite:${target}`], { env: lostEnv });
  assert.equal(r.status, 0, r.stderr);
  const rebuilt = new Database(target, { readonly: true });
  t.after(() => rebuilt.close());
  assert.equal(rebuilt.pragma('integrity_check', { simple: true }), 'ok');
  assert.deepEqual(
    { residents: rebuilt.prepare('SELECT * FROM residents ORDER BY id').all(), notices: rebuilt.prepare('SELECT * FROM notices ORDER BY id').all() },
    night1,
    'the first night, table by table, as it was',
  );
  // a target that already holds tables is refused, as for a local restore
  const again = await kuraAsync(['restore', '--from', 'peer-dc', second.snapshot!, '--key-file', keyFile, '--into', `sqlite:${target}`], { env: lostEnv });
  assert.equal(again.status, 73, again.stderr);
  assert.match(again.stderr, /E_TARGET_NOT_EMPTY/);
});

test('several routes send at the same time, each over its own link, and each vault restores the snapshot', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const tenants = `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`;
  const ends = await Promise.all(
    ['peer-dc', 'office'].map(async (name) => {
      const own = path.join(dir, name);
      mkdirSync(own);
      const vault = await startVault(own, tenants);
      t.after(() => vault.stop());
      const link = await new LinkProxy(vault.port).start();
      t.after(() => link.close());
      link.setRate(2 * MiB);
      return { name, vault, link };
    }),
  );
  const [peer, office] = ends as [(typeof ends)[0], (typeof ends)[0]];
  const officeRoute = `      office:\n        endpoints:\n          - { host: 127.0.0.1, port: ${office.link.port}, hostKeySha256: "${office.vault.hostKeySha256}" }\n        clientKey: ${key.private}\n`;
  const env = { KURA_CONFIG: agentConfig(dir, { port: peer.link.port, hostKeySha256: peer.vault.hostKeySha256, key: key.private, extraRoute: officeRoute }) };
  kuraOk(['repo', 'init'], { env });
  const data = new Prng(7).bytes(4 * MiB);
  const f = path.join(dir, 'dump.bin');
  writeFileSync(f, data);
  const { id } = kuraJson<{ id: string }>(['backup', '--name', 'db', '--file', f, '--route', 'peer-dc', '--route', 'office'], { env });
  // at 2 MiB/s a link takes about two seconds: one route after the other never has both halfway
  let both = 0;
  const sampler = setInterval(() => {
    if (ends.every((e) => e.link.bytesUp > MiB && e.link.bytesUp < 3 * MiB)) both++;
  }, 50);
  const r = await kuraAsync(['relay', 'once', '--json'], { env });
  clearInterval(sampler);
  assert.equal(r.status, 0, r.stderr);
  const reports = r.out.trim().split('\n').map((l) => JSON.parse(l) as { route: string; sent: number });
  assert.deepEqual(reports.map((x) => [x.route, x.sent]).sort(), [['office', 1], ['peer-dc', 1]]);
  assert.ok(both >= 3, `both links were mid-transfer in ${both} samples`);
  for (const e of ends) {
    const out = await kuraAsync(['restore', '--from', e.name, id], { env });
    assert.equal(out.status, 0, out.stderr);
    assert.ok(out.stdout.equals(data), `${e.name} restores the snapshot`);
  }
});
