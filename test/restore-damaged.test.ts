import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { kuraAsync, kuraJson, kuraOk, tempDir } from './support/cli.js';
import { Prng } from './support/generate.js';
import { agentConfig, sshKey, startVault } from './support/vault.js';
import { parsePackIndex } from '../src/repository/pack.js';
import { Repository } from '../src/repository/repository.js';
import { decodeSnapshot, snapshotChunkIds } from '../src/repository/snapshot.js';
import { idsOf } from '../src/repository/chunklist.js';
import { listFetcher } from '../src/repository/reader.js';

/** Where each chunk of a repository lies: pack file, offset, length (read from the packs' indexes). */
function chunkPlaces(repoDir: string): Map<string, { file: string; offset: number; length: number }> {
  const places = new Map<string, { file: string; offset: number; length: number }>();
  const packs = path.join(repoDir, 'packs');
  for (const d of readdirSync(packs)) {
    for (const f of readdirSync(path.join(packs, d))) {
      const file = path.join(packs, d, f);
      const bytes = readFileSync(file);
      for (const e of parsePackIndex(bytes, bytes.length) ?? []) places.set(e.id.toString('hex'), { file, offset: e.offset, length: e.length });
    }
  }
  return places;
}

test('a restore to a file over a damaged chunk fails with E_CHUNK_CORRUPT (exit 65) in 10 of 10 runs, from the local repository and from the vault, and leaves no file behind', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private }) };
  // small chunks: most writes to the file return before the disk has them, so a damaged chunk
  // is usually found while the previous chunk's write is still under way
  kuraOk(['repo', 'init', '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384'], { env });
  const f = path.join(dir, 'data.bin');
  writeFileSync(f, new Prng(51).bytes(3 << 20));
  const { id } = kuraJson<{ id: string }>(['backup', '--name', 'db', '--file', f, '--route', 'peer-dc'], { env });
  kuraOk(['relay', 'once'], { env });

  const repoDir = path.join(dir, 'repo');
  const local = await Repository.open(repoDir, null);
  const dataIds = [...idsOf(await snapshotChunkIds(decodeSnapshot(readFileSync(path.join(repoDir, 'snapshots', id)), id), listFetcher(local)))].map((c) => c.toString('hex'));
  // where each chunk's bytes begin in the restored stream (the first occurrence)
  const offsetOf = new Map<string, number>();
  let offset = 0;
  for (const c of dataIds) {
    if (!offsetOf.has(c)) offsetOf.set(c, offset);
    offset += local.catalogue.chunkRow(Buffer.from(c, 'hex'))![3];
  }
  local.close();
  const places = { local: chunkPlaces(repoDir), vault: chunkPlaces(path.join(vault.root, 'tenants', 'city-a')) };
  const out = path.join(dir, 'restored', 'db.bin');
  mkdirSync(path.dirname(out));
  kuraOk(['restore', id, '--to', out], { env }); // undamaged, it restores
  assert.ok(readFileSync(out).equals(readFileSync(f)));
  rmSync(out);

  const r = new Prng(52);
  const outcomes: string[] = [];
  for (let run = 0; run < 10; run++) {
    const from = run % 2 === 0 ? 'local' : 'vault';
    // a data chunk past the first few, one bit of its ciphertext flipped
    const chunk = dataIds[16 + (r.next() % (dataIds.length - 16))]!;
    const at = places[from].get(chunk)!;
    const pack = readFileSync(at.file);
    const pos = at.offset + 20 + (r.next() % (at.length - 40));
    const orig = pack[pos]!;
    pack[pos] = orig ^ (1 << (r.next() % 8));
    writeFileSync(at.file, pack);
    const res = await kuraAsync(['restore', id, '--to', out, ...(from === 'vault' ? ['--from', 'peer-dc'] : [])], { env });
    pack[pos] = orig;
    writeFileSync(at.file, pack);
    const code = /kura: (E_[A-Z_]+)/.exec(res.stderr)?.[1] ?? /ERR_[A-Z_]+/.exec(res.stderr)?.[0] ?? 'none';
    outcomes.push(`${from}:${res.status}:${code}`);
    // the chunks are opened in pieces side by side: the error still names the first damaged chunk and where it lies
    if (code === 'E_CHUNK_CORRUPT') {
      assert.match(res.stderr, new RegExp(`chunk ${chunk}.*\\(snapshot ${id}, offset ${offsetOf.get(chunk)}\\)`), `run ${run} (${from}) names the chunk, the snapshot and the offset`);
    }
    assert.deepEqual(readdirSync(path.dirname(out)), [], `run ${run} (${from}): no restored or partial file is left (${res.stderr.slice(0, 300)})`);
  }
  t.diagnostic(outcomes.join(' '));
  assert.deepEqual(
    outcomes.filter((o) => !o.endsWith(':65:E_CHUNK_CORRUPT')),
    [],
    'every run is refused as a damaged chunk (exit 65), none crashes',
  );
});
