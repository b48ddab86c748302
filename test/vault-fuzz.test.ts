import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Blake3Hasher, blake3 } from '@napi-rs/blake-hash';
import { kuraAsync, kuraJson, kuraOk, tempDir } from './support/cli.js';
import { Prng } from './support/generate.js';
import { agentConfig, sshKey, startVault } from './support/vault.js';
import { encodeFrame, Frame, FrameParser } from '../src/protocol/frames.js';
import { Repository } from '../src/repository/repository.js';
import { decodeSnapshot, snapshotChunkIds } from '../src/repository/snapshot.js';
import { idsOf } from '../src/repository/chunklist.js';
import { listFetcher, readBlobs } from '../src/repository/reader.js';

const require = createRequire(import.meta.url);
const ssh2 = require('ssh2') as typeof import('ssh2');

const FRAMES_WANTED = 100_000; // mutated frames the vault must have taken
// fails if 100 000 take longer: about a minute on 2 idle cores (49-62 s; one CI run here 104 s),
// 2-3 on a machine loaded 8-16 deep; a bound on a hang, not a rate the vault must reach
const TIME_LIMIT_MS = 300_000;
const SESSION_BOUND_MS = 35_000; // a session answers or closes within this after the client's EOF (a WANT may wait 30 s for another session's data to land)
const PER_SESSION = 64; // mutated frames at most in one session
const CONNECTIONS = 4; // of the tenant-admin key, and one each of a backup and a restore key
const IN_FLIGHT = 5; // sessions at a time on each connection

interface Corpus {
  frames: Array<{ type: number; payload: Buffer }>;
  want: Buffer; // a snapshot file the vault lacks
  blobs: Buffer[]; // blobs of it, as WANT_REPLY names them
  snapshot: string; // a snapshot the vault holds
  chunks: Buffer[]; // IDs of chunks the vault holds
}

/** Odd JSON bodies: what a broken or hostile client may put where an object belongs. */
const ODD_JSON: string[] = [
  'null', '[]', '""', '0', '-1', 'true', '{}', '1e308', '"\\u0000"', '{"source":{}}', '{"source":null}', '{"source":["a"]}', '{"id":null}',
  '{"id":1}', '{"id":"' + 'f'.repeat(63) + '"}', '{"id":"' + 'F'.repeat(64) + '"}', '{"protocol":"3","tenant":"city-a"}', '{"protocol":3}', '{"protocol":3,"tenant":null}',
  '{"protocol":1e400,"tenant":"city-a"}', '{"protocol":-7,"tenant":"city-a"}', '{"protocol":2.5,"tenant":"city-a"}', '{"seq":"1"}', '{"seq":-1}', '{"seq":1.5}', '{"seq":1,"sum":5}',
  '{"seq":1,"sum":{"toString":1}}', '{"__proto__":{"polluted":true},"seq":1}', '{"constructor":{"prototype":{"x":1}}}', '{"protect":"yes","id":"' + 'a'.repeat(64) + '"}',
  '[' .repeat(5000) + ']'.repeat(5000), '{"a":' .repeat(2000) + '1' + '}'.repeat(2000), '"' + 'x'.repeat(100_000) + '"', '{"source":"' + '\u{1F600}'.repeat(1000) + '"}', 'NaN', '{"seq":1,}', '\ufeff{}',
];

/** Strings a source name, an ID or a tenant may come as. */
const ODD_STRINGS = ['', 'db', 'x'.repeat(4096), '\u0000', '../../etc/passwd', "'; DROP TABLE snapshots; --", '\u{1F600}'.repeat(64), '%s%n', 'CON', ' db ', 'DB'];

/**
 * A request of the right shape with values picked at random (field-level mutation): random,
 * real and duplicate IDs, odd source names, any sequence number, PUTs of real blobs under random
 * IDs, a second HELLO. Most of these are answered and the session lives on, so the vault's
 * handlers see long sequences of them.
 */
/**
 * Which kinds of field mutation each key draws, weighted: the requests that always end a session
 * (a second HELLO, WANT or COMMIT of a snapshot file that is not one, one the key's role may not
 * make) are rarer, so that sessions run long enough to reach state.
 */
const FIELD_KINDS: Record<'admin' | 'backup' | 'restore', number[]> = {
  admin: [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 5, 6, 6, 6, 7, 7, 7, 8, 9, 0, 1, 3, 5],
  backup: [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5, 6, 7, 8, 9, 0, 1, 3, 0, 1, 3, 4, 0, 3],
  restore: [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 0, 3, 4, 7, 8, 9, 1, 5, 6, 1, 5, 6, 2, 5],
};

function fieldMutation(c: Corpus, r: Prng, role: keyof typeof FIELD_KINDS = 'admin'): Buffer {
  const pick = <T>(a: readonly T[]): T => a[r.next() % a.length]!;
  const ids = (n: number) => Buffer.concat(Array.from({ length: n }, () => (r.next() % 3 === 0 ? pick(c.chunks) : new Prng(r.next()).bytes(32))));
  const hex = () => new Prng(r.next()).bytes(32).toString('hex');
  switch (pick(FIELD_KINDS[role])) {
    case 0:
      return encodeFrame(Frame.HAS, ids(r.next() % 64));
    case 1:
      return encodeFrame(Frame.LIST, r.next() % 4 === 0 ? {} : { source: pick(ODD_STRINGS) });
    case 2:
      return encodeFrame(Frame.STATS, { [pick(ODD_STRINGS)]: pick([null, 1, 'x', [], {}]) });
    case 3: {
      const blob = pick(c.blobs);
      return encodeFrame(Frame.PUT, Buffer.concat([r.next() % 2 ? new Prng(r.next()).bytes(32) : pick(c.chunks), blake3(blob), blob]));
    }
    case 4:
      return encodeFrame(Frame.FLUSH, { seq: pick([0, 1, r.next(), Number.MAX_SAFE_INTEGER]), ...(r.next() % 2 === 0 ? { digests: hex() } : {}) });
    case 5:
      return encodeFrame(Frame.GET_CHUNKS, Buffer.concat(Array.from({ length: 1 + (r.next() % 8) }, () => pick(c.chunks))));
    case 6:
      return encodeFrame(Frame.GET_SNAPSHOT, { id: r.next() % 8 === 0 ? hex() : c.snapshot });
    case 7:
      return encodeFrame(Frame.PROTECT, { id: r.next() % 8 === 0 ? hex() : c.snapshot, protect: r.next() % 2 === 0 });
    case 8:
      return encodeFrame(Frame.HELLO, { protocol: pick([1, 2, 3, 4, 99]), tenant: pick(['city-a', 'city-b', ...ODD_STRINGS]) });
    default:
      return encodeFrame(pick([Frame.WANT, Frame.COMMIT]), Buffer.from(hex(), 'hex'));
  }
}

/** One mutated frame as raw bytes: bit flips, truncation, extension, a wrong length, an odd JSON body, an unknown type, another frame's payload, an oversized count. */
function byteMutation(f: { type: number; payload: Buffer }, c: Corpus, r: Prng): Buffer {
  const pick = <T>(a: readonly T[]): T => a[r.next() % a.length]!;
  const p = Buffer.from(f.payload);
  switch (r.next() % 9) {
    case 0: {
      const flips = 1 + (r.next() % 4);
      if (p.length === 0) return encodeFrame(f.type ^ (1 << (r.next() % 8)), p);
      for (let i = 0; i < flips; i++) p[r.next() % p.length]! ^= 1 << (r.next() % 8);
      return encodeFrame(f.type, p);
    }
    case 1:
      return encodeFrame(f.type, p.subarray(0, r.next() % (p.length + 1)));
    case 2:
      return encodeFrame(f.type, Buffer.concat([p, new Prng(r.next()).bytes(1 + (r.next() % 64))]));
    case 3: {
      const raw = encodeFrame(f.type, p);
      const lengths = [0, 1, raw.length - 4 + 1 + (r.next() % 8), Math.max(1, raw.length - 4 - 1 - (r.next() % 8)), 0x7fffffff, (16 << 20) + 2, r.next()];
      raw.writeUInt32BE(pick(lengths) >>> 0, 0);
      return raw;
    }
    case 4:
      return encodeFrame(f.type, Buffer.from(pick(ODD_JSON)));
    case 5: {
      const known = new Set<number>(Object.values(Frame));
      let t = r.next() & 0xff;
      while (known.has(t) && t !== Frame.ERROR) t = r.next() & 0xff;
      return encodeFrame(t, p);
    }
    case 6:
      return encodeFrame(f.type, pick(c.frames).payload);
    case 7: {
      // oversized or impossible counts
      const n = pick([0, 1, 0xffffffff, 0x40000000, 65537, 3]);
      const head = Buffer.alloc(4 + 4 * Math.min(n, 3));
      head.writeUInt32BE(n >>> 0, 0);
      for (let i = 0; i < Math.min(n, 3); i++) head.writeUInt32BE(pick([0, 1, 0xffffffff, c.blobs[0]!.length]), 4 + 4 * i);
      return encodeFrame(pick([Frame.PUT_RUN, Frame.WANT, Frame.COMMIT, f.type]), Buffer.concat([head, pick(c.blobs)]));
    }
    default: {
      // a long list of IDs, of which some are real, or one byte short of a list
      const ids = Buffer.concat(Array.from({ length: 1 + (r.next() % 2048) }, () => (r.next() % 4 === 0 ? pick(c.frames.filter((x) => x.type === Frame.GET_CHUNKS)).payload.subarray(0, 32) : new Prng(r.next()).bytes(32))));
      return encodeFrame(pick([Frame.HAS, Frame.GET_CHUNKS, Frame.WANT, Frame.COMMIT]), r.next() % 3 === 0 ? ids.subarray(1) : ids);
    }
  }
}

/** A third of the frames mutated byte by byte, two thirds field by field (most of the former end the session, most of the latter do not). */
function mutate(c: Corpus, r: Prng): { bytes: Buffer; kind: 'byte' | 'field' } {
  if (r.next() % 3 !== 0) return { bytes: fieldMutation(c, r), kind: 'field' };
  return { bytes: byteMutation(c.frames[r.next() % c.frames.length]!, c, r), kind: 'byte' };
}

/** An exec of the vault protocol on an open connection. */
function channel(client: import('ssh2').Client): Promise<import('ssh2').ClientChannel> {
  return new Promise((resolve, reject) => client.exec('kura-vault', (err, ch) => (err ? reject(err) : resolve(ch))));
}

function connect(port: number, keyFile: string): Promise<import('ssh2').Client> {
  return new Promise((resolve, reject) => {
    const c = new ssh2.Client();
    c.on('ready', () => resolve(c));
    c.on('error', reject);
    c.connect({ host: '127.0.0.1', port, username: 'city-a', privateKey: readFileSync(keyFile) });
  });
}

test('HELLO or FLUSH with a null body, and LIST with an object for a source, are E_PROTOCOL: the session closes and the refusal is audited', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'admin');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const client = await connect(vault.port, key.private);
  t.after(() => client.end());
  const hello = encodeFrame(Frame.HELLO, { protocol: 3, tenant: 'city-a' });
  const cases: Array<[string, Buffer[], RegExp]> = [
    ['HELLO with a null body', [encodeFrame(Frame.HELLO, Buffer.from('null'))], /malformed HELLO frame: .*expected object, received null/],
    ['FLUSH with a null body', [hello, encodeFrame(Frame.FLUSH, Buffer.from('null'))], /malformed FLUSH frame: .*expected object, received null/],
    ['LIST with an object for a source', [hello, encodeFrame(Frame.LIST, { source: {} })], /malformed LIST frame: .*source.*expected string/],
  ];
  for (const [what, frames, message] of cases) {
    const ch = await channel(client);
    const parser = new FrameParser(1 << 20);
    const got: Array<{ type: number; payload: Buffer }> = [];
    const closed = new Promise<void>((resolve) => {
      ch.on('data', (d: Buffer) => got.push(...parser.push(d)));
      ch.on('close', () => resolve());
    });
    // no EOF: the vault itself must end the session
    ch.write(Buffer.concat(frames));
    await closed;
    const error = got.find((f) => f.type === Frame.ERROR);
    assert.ok(error, `${what}: an ERROR frame, then the channel closes`);
    const e = JSON.parse(error.payload.toString()) as { code: string; message: string };
    assert.equal(e.code, 'E_PROTOCOL', `${what}: ${e.message}`);
    assert.match(e.message, message, what);
    assert.ok(
      vault.audit().some((a) => a.event === 'session-refused' && a.code === 'E_PROTOCOL' && message.test(String(a.reason))),
      `${what}: an audit line`,
    );
  }
  assert.ok(!vault.audit().some((a) => a.code === 'E_INTERNAL'));
});

test(`${FRAMES_WANTED.toLocaleString('en')} mutated frames over real SSH sessions: never E_INTERNAL, every session answers or closes in bounded time, the vault lives on and a backup still relays and restores byte-identical`, async (t) => {
  const dir = tempDir(t);
  const admin = sshKey(dir, 'admin');
  const backup = sshKey(dir, 'backup');
  const restore = sshKey(dir, 'restore');
  const vault = await startVault(
    dir,
    `    city-a:\n      clients:\n        - key: ${admin.public}\n          role: tenant-admin\n        - key: ${backup.public}\n          role: backup\n        - key: ${restore.public}\n          role: restore\n`,
  );
  t.after(() => vault.stop());
  const env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: admin.private }) };
  kuraOk(['repo', 'init', '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384'], { env });
  const seedData = new Prng(81).bytes(256 << 10);
  writeFileSync(path.join(dir, 'sent.bin'), seedData);
  const sent = kuraJson<{ id: string }>(['backup', '--name', 'db', '--file', path.join(dir, 'sent.bin'), '--route', 'peer-dc'], { env });
  kuraOk(['relay', 'once'], { env });
  writeFileSync(path.join(dir, 'kept.bin'), new Prng(82).bytes(128 << 10));
  const kept = kuraJson<{ id: string }>(['backup', '--name', 'other', '--file', path.join(dir, 'kept.bin')], { env });

  // the seed corpus: one of every request, as a relay and a restore send them
  const repoDir = path.join(dir, 'repo');
  const local = await Repository.open(repoDir, null);
  const sentFile = readFileSync(path.join(repoDir, 'snapshots', sent.id));
  const keptFile = readFileSync(path.join(repoDir, 'snapshots', kept.id));
  const sentIds = [...idsOf(await snapshotChunkIds(decodeSnapshot(sentFile, sent.id), listFetcher(local)))];
  const keptSnap = decodeSnapshot(keptFile, kept.id);
  const listBlocks = [...idsOf(keptSnap.listIds)];
  const blobs: Buffer[] = [];
  for await (const b of readBlobs(local, listBlocks.length > 0 ? listBlocks : [...idsOf(await snapshotChunkIds(keptSnap, listFetcher(local)))], 'fuzz')) blobs.push(Buffer.from(b.blob));
  const sentBlobs: Array<{ id: Buffer; blob: Buffer }> = [];
  for await (const b of readBlobs(local, sentIds.slice(0, 4), 'fuzz')) sentBlobs.push({ id: Buffer.from(b.id), blob: Buffer.from(b.blob) });
  local.close();
  const j = (o: unknown) => Buffer.from(JSON.stringify(o));
  const runOf = (bs: Buffer[]) => {
    const head = Buffer.alloc(4 + 4 * bs.length);
    head.writeUInt32BE(bs.length, 0);
    bs.forEach((b, i) => head.writeUInt32BE(b.length, 4 + 4 * i));
    return Buffer.concat([head, ...bs]);
  };
  const sum = new Blake3Hasher();
  sum.update(blobs[0]!);
  const corpus: Corpus = {
    want: keptFile,
    blobs,
    snapshot: sent.id,
    chunks: sentIds,
    frames: [
      { type: Frame.HELLO, payload: j({ protocol: 3, tenant: 'city-a', client: 'fuzz' }) },
      { type: Frame.HAS, payload: Buffer.concat(sentIds.slice(0, 8)) },
      { type: Frame.PUT, payload: Buffer.concat([sentBlobs[0]!.id, blake3(sentBlobs[0]!.blob), sentBlobs[0]!.blob]) },
      { type: Frame.WANT, payload: keptFile },
      { type: Frame.WANT, payload: Buffer.from(kept.id, 'hex') },
      { type: Frame.PUT_NEXT, payload: blobs[0]! },
      { type: Frame.PUT_RUN, payload: runOf(blobs.slice(0, 2)) },
      { type: Frame.FLUSH, payload: j({ seq: 1, sum: sum.digest('hex') }) },
      { type: Frame.COMMIT, payload: Buffer.from(kept.id, 'hex') },
      { type: Frame.COMMIT, payload: sentFile },
      { type: Frame.LIST, payload: j({}) },
      { type: Frame.LIST, payload: j({ source: 'db' }) },
      { type: Frame.GET_SNAPSHOT, payload: j({ id: sent.id }) },
      { type: Frame.GET_CHUNKS, payload: Buffer.concat(sentIds.slice(0, 3)) },
      { type: Frame.PROTECT, payload: j({ id: sent.id, protect: false }) },
      { type: Frame.STATS, payload: j({}) },
    ],
  };
  // sessions speak protocol 3 or 4 (4: FLUSH checks the digests of the batch's blobs)
  const hellos = [3, 4].map((protocol) => encodeFrame(Frame.HELLO, { protocol, tenant: 'city-a', client: 'fuzz' }));

  const r = new Prng(0x5eed);
  const codes = new Map<string, number>();
  const hangs: string[] = [];
  let taken = 0;
  let validStarts = 0;
  // the frames the vault took, by its audit log (sessions of this run only), less the valid starts
  const auditFile = path.join(vault.root, 'audit.jsonl');
  let auditRead = readFileSync(auditFile).length;
  let framesAudited = 0;
  const takenSoFar = () => {
    const more = readFileSync(auditFile).subarray(auditRead);
    const whole = more.lastIndexOf(0x0a) + 1;
    auditRead += whole;
    for (const m of more.subarray(0, whole).toString().matchAll(/"event":"session-(?:end|refused)".*?"frames":(\d+)/g)) framesAudited += Number(m[1]);
    return framesAudited - validStarts;
  };
  const fedKinds = { byte: 0, field: 0 };
  let sessions = 0;
  const t0 = Date.now();
  /**
   * One session, written in one go: a valid start (HELLO; for some a WANT of a snapshot the vault
   * lacks, or two PUTs), then up to PER_SESSION - 1 frames mutated field by field and, last, one
   * mutated byte by byte (it may swallow what follows it: nothing does); then EOF. The session
   * must close in bounded time. How many frames the vault took is its own count, in each
   * session's audit line (`frames`, the one that ended the session included), less the valid
   * starts. No round trip per frame and no timeout: the vault is kept busy, not the clock.
   */
  const session = async (client: import('ssh2').Client, rng: Prng, role: keyof typeof FIELD_KINDS) => {
    const ch = await channel(client);
    const parser = new FrameParser(64 << 20);
    let error: string | null = null;
    const closing = new Promise<void>((resolve) => {
      ch.on('data', (d: Buffer) => {
        for (const f of parser.push(d)) if (f.type === Frame.ERROR) error = (JSON.parse(f.payload.toString()) as { code: string }).code;
      });
      ch.on('close', () => resolve());
    });
    ch.on('error', () => {});
    const bytes: Buffer[] = [];
    if (rng.next() % 20 === 0) {
      bytes.push(byteMutation(corpus.frames[0]!, corpus, rng));
      fedKinds.byte++;
    } else {
      bytes.push(hellos[rng.next() % 2]!);
      if (rng.next() % 10 === 0) bytes.push(encodeFrame(Frame.WANT, corpus.want));
      else if (rng.next() % 10 === 0) bytes.push(...sentBlobs.slice(0, 2).map((b) => encodeFrame(Frame.PUT, Buffer.concat([b.id, blake3(b.blob), b.blob]))));
      validStarts += bytes.length;
      const fields = 1 + (rng.next() % (PER_SESSION - 1));
      for (let i = 0; i < fields; i++) bytes.push(fieldMutation(corpus, rng, role));
      bytes.push(byteMutation(corpus.frames[rng.next() % corpus.frames.length]!, corpus, rng));
      fedKinds.field += fields;
      fedKinds.byte++;
    }
    ch.end(Buffer.concat(bytes));
    const bound = setTimeout(() => {
      hangs.push(`a session still open ${SESSION_BOUND_MS} ms after its last frame (${error ?? 'no answer'})`);
      ch.close();
    }, SESSION_BOUND_MS);
    await closing;
    clearTimeout(bound);
    const code = error ?? 'none';
    codes.set(code, (codes.get(code) ?? 0) + 1);
    sessions++;
    if (sessions % 200 === 0) taken = takenSoFar();
  };
  const clients = await Promise.all([
    ...Array.from({ length: CONNECTIONS }, () => connect(vault.port, admin.private)),
    connect(vault.port, backup.private),
    connect(vault.port, restore.private),
  ]);
  t.after(() => clients.forEach((c) => c.end()));
  await Promise.all(
    clients.flatMap((client, i) =>
      // the backup and restore keys (the last two): one session at a time each
      Array.from({ length: i < CONNECTIONS ? IN_FLIGHT : 1 }, async () => {
        const rng = new Prng(r.next());
        const role = i < CONNECTIONS ? 'admin' : i === CONNECTIONS ? 'backup' : 'restore';
        while (taken < FRAMES_WANTED && Date.now() - t0 < TIME_LIMIT_MS && hangs.length === 0) await session(client, rng, role);
      }),
    ),
  );
  const seconds = (Date.now() - t0) / 1000;
  taken = takenSoFar();
  t.diagnostic(`${taken} mutated frames taken by the vault of ${fedKinds.byte + fedKinds.field} sent (${fedKinds.byte} mutated byte by byte, ${fedKinds.field} field by field) in ${sessions} sessions, ${seconds.toFixed(1)} s (${Math.round(taken / seconds)}/s); sessions ended by: ${[...codes].sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(', ')}`);

  assert.deepEqual(hangs, [], 'every session answered or closed in bounded time');
  assert.equal(codes.get('E_INTERNAL') ?? 0, 0, 'no answer is E_INTERNAL');
  assert.ok(taken >= FRAMES_WANTED, `${taken} mutated frames in ${seconds.toFixed(1)} s (at least ${FRAMES_WANTED} within ${TIME_LIMIT_MS / 1000} s)`);
  assert.equal(vault.child.exitCode, null, 'the vault is alive');
  const audit = readFileSync(path.join(vault.root, 'audit.jsonl'), 'utf8');
  assert.equal(audit.match(/"code":"E_INTERNAL"/g)?.length ?? 0, 0, 'no audit line says E_INTERNAL');
  assert.ok((audit.match(/"outcome":"refused"/g)?.length ?? 0) >= sessions / 2, 'the refusals are audited');

  // and a legitimate night afterwards: backup, relay, restore, byte-identical
  const night = new Prng(83).bytes(3 << 20);
  writeFileSync(path.join(dir, 'night.bin'), night);
  const b = kuraJson<{ id: string }>(['backup', '--name', 'db', '--file', path.join(dir, 'night.bin'), '--route', 'peer-dc'], { env });
  const relayed = await kuraAsync(['relay', 'once'], { env });
  assert.equal(relayed.status, 0, relayed.stderr);
  const back = await kuraAsync(['restore', '--from', 'peer-dc', b.id], { env });
  assert.equal(back.status, 0, back.stderr);
  assert.ok(back.stdout.equals(night), 'restored byte-identical from the vault');
});
