import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { kura, kuraJson, kuraOk, tempDir } from './support/cli.js';
import { collect, Prng, sqlDump } from './support/generate.js';
import { parsePackIndex } from '../src/repository/pack.js';
import { SCHEMA_VERSION } from '../src/repository/catalogue-open.js';

interface BackupJson {
  id: string;
  logicalBytes: number;
  newBytes: number;
  chunks: number;
  newChunks: number;
  seconds: number;
}

function newRepo(t: Parameters<typeof tempDir>[0]): { dir: string; repo: string } {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  return { dir, repo };
}

function backupBytes(repo: string, dir: string, data: Buffer, name = 'db'): BackupJson {
  const f = path.join(dir, `in-${Math.random().toString(36).slice(2)}`);
  writeFileSync(f, data);
  return kuraJson<BackupJson>(['backup', '--repo', repo, '--name', name, '--file', f]);
}

function packFiles(repo: string): string[] {
  const out: string[] = [];
  for (const d of readdirSync(path.join(repo, 'packs'))) for (const f of readdirSync(path.join(repo, 'packs', d))) out.push(path.join(repo, 'packs', d, f));
  return out;
}

function packEntries(file: string) {
  const bytes = readFileSync(file);
  const entries = parsePackIndex(bytes, bytes.length);
  assert.ok(entries, `${file} is a readable pack`);
  return entries;
}

test('round trips are byte-identical at empty, 1 byte, and exactly min/avg/max chunk sizes', (t) => {
  const { dir, repo } = newRepo(t);
  const r = new Prng(1);
  for (const size of [0, 1, 16 << 10, (16 << 10) + 1, 64 << 10, 256 << 10, (256 << 10) + 1, 3 << 20]) {
    const data = r.bytes(size);
    const b = backupBytes(repo, dir, data, `s${size}`);
    assert.equal(b.logicalBytes, size);
    assert.equal(b.chunks, size === 0 ? 0 : Math.max(1, b.chunks));
    const viaStdout = kuraOk(['restore', '--repo', repo, b.id]).stdout;
    assert.ok(viaStdout.equals(data), `stdout restore of ${size} bytes`);
    const out = path.join(dir, `out-${size}`);
    kuraOk(['restore', '--repo', repo, `latest:s${size}`, '--to', out]);
    assert.ok(readFileSync(out).equals(data), `file restore of ${size} bytes`);
  }
});

test('backup reads standard input and prints the snapshot ID', (t) => {
  const { repo } = newRepo(t);
  const data = Buffer.from('COPY t FROM stdin;\n1\tx\n\\.\n');
  const r = kuraOk(['backup', '--repo', repo, '--name', 'piped', '--stdin'], { input: data });
  const id = r.out.trim();
  assert.match(id, /^[0-9a-f]{64}$/);
  assert.ok(kuraOk(['restore', '--repo', repo, id.slice(0, 8)]).stdout.equals(data));
});

test('identical input stores nothing new; a prefix insert re-uses all but the first chunks', async (t) => {
  const { dir, repo } = newRepo(t);
  const dump = await collect(sqlDump(3, 8 << 20));
  const first = backupBytes(repo, dir, dump);
  assert.equal(first.newChunks, first.chunks);
  const files = packFiles(repo).length;

  const same = backupBytes(repo, dir, dump);
  assert.equal(same.newChunks, 0);
  assert.equal(same.newBytes, 0);
  assert.equal(packFiles(repo).length, files);

  const inserted = Buffer.concat([Buffer.from('-- inserted comment line at the very top of the dump\n'), dump]);
  const after = backupBytes(repo, dir, inserted);
  assert.ok(after.newChunks <= 2, `prefix insert stored ${after.newChunks} new chunks of ${after.chunks}`);
  assert.ok(after.chunks >= first.chunks - 1);
  assert.ok(kuraOk(['restore', '--repo', repo, after.id]).stdout.equals(inserted));
});

test('a flipped byte in any blob is found by check --read-data and by restore, which fails without output', (t) => {
  const { dir, repo } = newRepo(t);
  const data = new Prng(77).bytes(6 << 20);
  const b = backupBytes(repo, dir, data);
  kuraOk(['check', '--repo', repo, '--read-data']);
  const packs = packFiles(repo).sort();
  assert.ok(packs.length >= 2);
  const r = new Prng(123);
  for (let trial = 0; trial < 6; trial++) {
    const victim = packs[r.next() % packs.length]!;
    const entries = packEntries(victim);
    const entry = entries[r.next() % entries.length]!;
    const bytes = readFileSync(victim);
    // the blob's header, nonce, ciphertext and tag all get hit over the trials
    const within = [0, 1, 3, 10, entry.length - 1, r.next() % entry.length][trial]!;
    const pos = entry.offset + within;
    const orig = bytes[pos]!;
    bytes[pos] = orig ^ (1 << (r.next() % 8));
    writeFileSync(victim, bytes);

    const chk = kura(['check', '--repo', repo, '--read-data', '--json']);
    assert.equal(chk.status, 65, `check exit status (trial ${trial}): ${chk.stderr}`);
    const report = JSON.parse(chk.out) as { ok: boolean; problems: Array<{ kind: string; chunk?: string; pack?: string; snapshots?: string[] }> };
    assert.equal(report.ok, false);
    const p = report.problems.find((x) => x.kind === 'chunk-corrupt');
    assert.ok(p, JSON.stringify(report.problems));
    assert.equal(p.chunk, entry.id.toString('hex'));
    assert.deepEqual(p.snapshots, [b.id]);
    assert.ok(report.problems.some((x) => x.kind === 'pack-corrupt' && x.pack === path.basename(victim)));

    const out = path.join(dir, 'restored');
    const rs = kura(['restore', '--repo', repo, b.id, '--to', out]);
    assert.equal(rs.status, 65, rs.stderr);
    assert.match(rs.stderr, /E_CHUNK_CORRUPT/);
    assert.equal(existsSync(out), false, 'no output file after a failed restore');
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('kura-partial')), [], 'no partial file left behind');
    const rs2 = kura(['restore', '--repo', repo, b.id]);
    assert.notEqual(rs2.status, 0);

    bytes[pos] = orig;
    writeFileSync(victim, bytes);
  }
  kuraOk(['check', '--repo', repo, '--read-data']);

  // damage in a pack's index is found too, even without --read-data
  const victim = packs[0]!;
  const bytes = readFileSync(victim);
  const entries = packEntries(victim);
  const last = entries.at(-1)!;
  const idxPos = last.offset + last.length + 5; // inside the first index entry's chunk ID
  bytes[idxPos] ^= 0x40;
  writeFileSync(victim, bytes);
  const chk = kura(['check', '--repo', repo, '--json']);
  assert.equal(chk.status, 65);
  const kinds = (JSON.parse(chk.out) as { problems: Array<{ kind: string }> }).problems.map((p) => p.kind);
  assert.ok(kinds.includes('chunk-missing') && kinds.includes('catalogue-stale'), kinds.join(','));
  assert.ok(JSON.parse(kura(['check', '--repo', repo, '--json', '--read-data']).out).problems.some((p: { kind: string }) => p.kind === 'pack-corrupt'));
});

test('check finds a damaged snapshot file and a missing chunk, naming the snapshots', (t) => {
  const { dir, repo } = newRepo(t);
  const b1 = backupBytes(repo, dir, new Prng(5).bytes(600 << 10), 'a');
  const b2 = backupBytes(repo, dir, new Prng(6).bytes(600 << 10), 'b');
  const snapFile = path.join(repo, 'snapshots', b1.id);
  const s = readFileSync(snapFile);
  s[20] ^= 1;
  writeFileSync(snapFile, s);
  const victim = packFiles(repo)[0]!;
  const chk = kura(['check', '--repo', repo, '--json']);
  assert.equal(chk.status, 65);
  const report = JSON.parse(chk.out) as { problems: Array<{ kind: string; snapshot?: string; snapshots?: string[] }> };
  assert.ok(report.problems.some((p) => p.kind === 'snapshot-corrupt' && p.snapshot === b1.id));
  s[20] ^= 1;
  writeFileSync(snapFile, s);
  kuraOk(['check', '--repo', repo]);
  // remove one pack
  rmSync(victim);
  const chk2 = JSON.parse(kura(['check', '--repo', repo, '--json']).out) as { problems: Array<{ kind: string; snapshots?: string[] }> };
  const missing = chk2.problems.find((p) => p.kind === 'chunk-missing');
  assert.ok(missing);
  assert.ok(missing.snapshots!.length >= 1 && missing.snapshots!.every((id) => id === b1.id || id === b2.id));
  assert.ok(chk2.problems.some((p) => p.kind === 'catalogue-stale'));
});

test('a wrong or missing passphrase is refused with a coded error, never garbage', (t) => {
  const { dir, repo } = newRepo(t);
  const data = Buffer.from('secret rows\n');
  const b = backupBytes(repo, dir, data);
  const wrong = kura(['restore', '--repo', repo, b.id], { env: { KURA_PASSPHRASE: 'wrong' } });
  assert.equal(wrong.status, 77);
  assert.match(wrong.stderr, /E_KEY_WRONG/);
  assert.equal(wrong.stdout.length, 0);
  const none = kura(['backup', '--repo', repo, '--name', 'x', '--stdin'], { env: { KURA_PASSPHRASE: undefined }, input: 'x' });
  assert.equal(none.status, 77);
  assert.match(none.stderr, /E_KEY_MISSING.*KURA_PASSPHRASE/);
  // listing needs no key
  assert.equal(kuraJson<unknown[]>(['snapshots', '--repo', repo], { env: { KURA_PASSPHRASE: undefined } }).length, 1);
});

test('key slots: add a passphrase, export the key, open with a key file alone', (t) => {
  const { dir, repo } = newRepo(t);
  const data = new Prng(8).bytes(100 << 10);
  const b = backupBytes(repo, dir, data);
  const pf = path.join(dir, 'second.pass');
  writeFileSync(pf, 'second passphrase\n');
  kuraOk(['key', 'add', '--repo', repo, '--new-passphrase-file', pf, '--label', 'off-site copy']);
  const slots = kuraJson<Array<{ label: string | null }>>(['key', 'list', '--repo', repo]);
  assert.deepEqual(slots.map((s) => s.label).sort(), ['initial', 'off-site copy']);
  assert.ok(kuraOk(['restore', '--repo', repo, b.id, '--passphrase-file', pf], { env: { KURA_PASSPHRASE: undefined } }).stdout.equals(data));

  const raw = path.join(dir, 'raw.key');
  kuraOk(['key', 'export', '--repo', repo, '--to', raw, '--raw']);
  assert.ok(kuraOk(['restore', '--repo', repo, b.id, '--key-file', raw], { env: { KURA_PASSPHRASE: undefined } }).stdout.equals(data));
  const prot = path.join(dir, 'protected.key');
  kuraOk(['key', 'export', '--repo', repo, '--to', prot]);
  assert.doesNotMatch(readFileSync(prot, 'utf8'), /"master"/);
  assert.equal(kura(['restore', '--repo', repo, b.id, '--key-file', prot], { env: { KURA_PASSPHRASE: undefined } }).status, 77);
  assert.ok(kuraOk(['restore', '--repo', repo, b.id, '--key-file', prot]).stdout.equals(data));

  // a repository created with a key file only
  const repo2 = path.join(dir, 'repo2');
  const kf = path.join(dir, 'repo2.key');
  kuraOk(['repo', 'init', '--repo', repo2, '--key-file', kf], { env: { KURA_PASSPHRASE: undefined } });
  const id = kuraOk(['backup', '--repo', repo2, '--name', 'k', '--stdin', '--key-file', kf], { input: data, env: { KURA_PASSPHRASE: undefined } }).out.trim();
  assert.ok(kuraOk(['restore', '--repo', repo2, id, '--key-file', kf], { env: { KURA_PASSPHRASE: undefined } }).stdout.equals(data));
  const other = kura(['restore', '--repo', repo, b.id, '--key-file', kf], { env: { KURA_PASSPHRASE: undefined } });
  assert.equal(other.status, 77);
  assert.match(other.stderr, /belongs to repository/);
});

test('rebuild-index recreates the catalogue from the store alone', (t) => {
  const { dir, repo } = newRepo(t);
  const dump = new Prng(4).bytes(1 << 20);
  const b = backupBytes(repo, dir, dump);
  for (const f of readdirSync(repo).filter((f) => f.startsWith('catalogue.sqlite'))) rmSync(path.join(repo, f));
  const res = kuraJson<{ chunks: number; snapshots: number }>(['repo', 'rebuild-index', '--repo', repo], { env: { KURA_PASSPHRASE: undefined } });
  assert.equal(res.snapshots, 1);
  assert.equal(res.chunks, b.chunks);
  const again = backupBytes(repo, dir, dump);
  assert.equal(again.newChunks, 0, 'dedup works from the rebuilt catalogue');
  kuraOk(['check', '--repo', repo, '--read-data']);
});

test('snapshot references: unique prefix, latest:SOURCE, ambiguity and unknown IDs are coded errors', (t) => {
  const { dir, repo } = newRepo(t);
  const a = backupBytes(repo, dir, Buffer.from('one'), 'alpha');
  backupBytes(repo, dir, Buffer.from('two'), 'beta');
  assert.equal(kuraOk(['restore', '--repo', repo, 'latest:alpha']).out, 'one');
  assert.equal(kuraOk(['restore', '--repo', repo, a.id.slice(0, 10)]).out, 'one');
  const unknown = kura(['restore', '--repo', repo, 'ffffffffffff']);
  assert.equal(unknown.status, 66);
  assert.match(unknown.stderr, /E_SNAPSHOT_NOT_FOUND/);
  const bad = kura(['restore', '--repo', repo, 'not-an-id']);
  assert.equal(bad.status, 64);
  const noRepo = kura(['snapshots', '--repo', path.join(dir, 'nope')]);
  assert.equal(noRepo.status, 66);
  assert.match(noRepo.stderr, /E_REPO_NOT_FOUND.*kura repo init/);
  const rows = kuraJson<Array<{ source: string }>>(['snapshots', '--repo', repo, '--name', 'beta']);
  assert.deepEqual(rows.map((r) => r.source), ['beta']);
});

test('a catalogue of schema 1 (pack name in every chunk row) is migrated on open: the same rows, restores and dedup work, a newer schema is refused', async (t) => {
  const { dir, repo } = newRepo(t);
  const data = await collect(sqlDump(21, 4 << 20));
  const first = backupBytes(repo, dir, data);
  const { default: Database } = await import('better-sqlite3');
  const file = path.join(repo, 'catalogue.sqlite');
  const want = (db: InstanceType<typeof Database>) => db.prepare('SELECT hex(id) AS id, pack, offset, stored_size, plain_size FROM chunks ORDER BY id').all();
  let before: unknown[];
  {
    // turn it back into what kura 0.1 wrote
    const db = new Database(file);
    before = want(db);
    assert.ok(before.length > 10);
    db.exec(`
      CREATE TABLE chunks_old (id BLOB PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL, stored_size INTEGER NOT NULL, plain_size INTEGER NOT NULL) WITHOUT ROWID;
      INSERT INTO chunks_old SELECT id, pack, offset, stored_size, plain_size FROM chunks;
      DROP VIEW chunks; DROP TABLE chunk_rows; DROP TABLE packs;
      ALTER TABLE chunks_old RENAME TO chunks;
      CREATE INDEX chunks_by_pack ON chunks (pack);
      UPDATE meta SET value = '1' WHERE key = 'schema';
    `);
    db.close();
  }
  // any command opens and migrates it; the data reads back and a new backup deduplicates
  assert.equal(kuraOk(['restore', '--repo', repo, first.id]).stdout.equals(data), true);
  const db = new Database(file, { readonly: true });
  t.after(() => db.close());
  assert.deepEqual(want(db), before);
  assert.equal(db.prepare(`SELECT value FROM meta WHERE key = 'schema'`).pluck().get(), String(SCHEMA_VERSION));
  assert.equal(db.prepare(`SELECT type FROM sqlite_master WHERE name = 'chunks'`).pluck().get(), 'view');
  const again = backupBytes(repo, dir, data);
  assert.equal(again.newChunks, 0, 'every chunk found in the migrated catalogue');
  kuraOk(['check', '--repo', repo, '--read-data']);
  // a catalogue from a newer kura is refused, not misread
  const rw = new Database(file);
  rw.prepare(`UPDATE meta SET value = '99' WHERE key = 'schema'`).run();
  rw.close();
  const r = kura(['snapshots', '--repo', repo]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /E_REPO_FORMAT.*newer kura/);
});

test('a catalogue of schema 4 moves to the current schema on open (5 brought GC\'s condemned packs), with or without the table, keeping what was condemned', async (t) => {
  const { dir, repo } = newRepo(t);
  const data = await collect(sqlDump(22, 1 << 20));
  const first = backupBytes(repo, dir, data);
  const { default: Database } = await import('better-sqlite3');
  const file = path.join(repo, 'catalogue.sqlite');
  const pending = 'ab'.repeat(32);
  for (const withTable of [false, true]) {
    // schema 4 as released (no condemned_packs), and as kura wrote it before the version moved (table, one pack condemned)
    const db = new Database(file);
    db.exec(withTable ? `INSERT OR IGNORE INTO condemned_packs (pack, since, claimed) VALUES ('${pending}', 1, NULL)` : 'DROP TABLE condemned_packs');
    db.prepare(`UPDATE meta SET value = '4' WHERE key = 'schema'`).run();
    db.close();
    assert.equal(kuraOk(['restore', '--repo', repo, first.id]).stdout.equals(data), true);
    const after = new Database(file, { readonly: true });
    assert.equal(after.prepare(`SELECT value FROM meta WHERE key = 'schema'`).pluck().get(), String(SCHEMA_VERSION));
    assert.deepEqual(after.prepare('SELECT pack FROM condemned_packs').pluck().all(), withTable ? [pending] : []);
    after.close();
  }
});

test('a pack written from its parts (writev, hashed piece by piece) is byte for byte the encoded pack', async (t) => {
  const { encodePack, packId, packParts, storePack } = await import('../src/repository/pack.js');
  const { FsBackend } = await import('../src/store/fs/index.js');
  const { packName } = await import('../src/store/backend.js');
  const dir = tempDir(t);
  const r = new Prng(77);
  // more blobs than one writev takes (1024), some empty-ish, sizes uneven
  const blobs = Array.from({ length: 2500 }, (_, i) => r.bytes(i % 97 === 0 ? 1 : 1 + (r.next() % 3000)));
  const ids = blobs.map(() => r.bytes(32));
  const whole = encodePack(blobs, ids);
  const parts = packParts(blobs, ids);
  assert.equal(parts.id, whole.id);
  // the ID hashed piece by piece is the one-shot hash of the file, and its index reads back
  assert.equal(packId(whole.bytes), whole.id);
  assert.deepEqual(parsePackIndex(whole.bytes, whole.bytes.length), whole.entries);
  assert.equal(parts.size, whole.bytes.length);
  assert.deepEqual(parts.entries, whole.entries);
  const store = new FsBackend(dir);
  const stored = await storePack(store, blobs.map((blob, i) => ({ id: ids[i]!, blob })));
  assert.equal(stored.id, whole.id);
  assert.ok(readFileSync(path.join(dir, ...packName(stored.id).split('/'))).equals(whole.bytes), 'the file holds exactly the encoded pack');
});

test('the cached chunk list of the last snapshot is used only when it rebuilds that snapshot\'s list tree: a planted list that claims unstored chunks changes nothing', async (t) => {
  const { dir, repo } = newRepo(t);
  const night1 = await collect(sqlDump(5, 6 << 20));
  const night2 = Buffer.from(night1.toString('latin1').replace(/\t(\d)(\d\d)\t/g, (m, a: string, b: string) => (Number(b) % 40 === 0 ? `\t${(Number(a) + 1) % 10}${b}\t` : m)), 'latin1');
  const first = backupBytes(repo, dir, night1);
  const cacheFile = path.join(repo, 'cache', 'lists', 'db');
  const valid = readFileSync(cacheFile);
  assert.equal(valid.length, 8 + 32 + first.chunks * 40, "the cache holds the flat list of the last snapshot, its chunks' sizes and end fingerprints");
  assert.equal(valid.subarray(8, 40).toString('hex'), first.id);
  // the same night 2 in a copy: the chunks it needs that night 1 does not have
  const copy = path.join(dir, 'copy');
  (await import('node:fs')).cpSync(repo, copy, { recursive: true });
  const inCopy = backupBytes(copy, dir, night2);
  assert.ok(inCopy.newChunks > 0);
  const night2List = readFileSync(path.join(copy, 'cache', 'lists', 'db')).subarray(40, 40 + inCopy.chunks * 32);
  // plant night 2's chunk IDs as if they were night 1's list (same length, night 1's sizes and ends):
  // trusted, they would all count as stored
  const planted = Buffer.concat([night2List, Buffer.alloc(first.chunks * 32)]).subarray(0, first.chunks * 32);
  writeFileSync(cacheFile, Buffer.concat([valid.subarray(0, 40), planted, valid.subarray(40 + first.chunks * 32)]));
  const second = backupBytes(repo, dir, night2);
  assert.equal(second.newChunks, inCopy.newChunks, 'the planted list was not believed');
  assert.ok(kuraOk(['restore', '--repo', repo, second.id]).stdout.equals(night2));
  kuraOk(['check', '--repo', repo]);
  // a missing or truncated cache: the list comes from the packs, with the same result
  for (const damage of [() => rmSync(cacheFile), () => writeFileSync(cacheFile, readFileSync(cacheFile).subarray(0, 100))]) {
    damage();
    const again = backupBytes(repo, dir, night1);
    assert.ok(again.newChunks <= 2, `night 1 again stores (almost) nothing new: ${again.newChunks}`);
  }
});
