import { closeSync, openSync, readSync } from 'node:fs';
import { Blake3Hasher } from '@napi-rs/blake-hash';
import path from 'node:path';
import type { Repository } from '../repository/repository.js';
import { packId, parsePackIndex } from '../repository/pack.js';
import { blobDigest } from '../repository/digest.js';
import type { DamagedBlob } from '../repository/quarantine.js';
import { packName } from '../store/backend.js';

/**
 * A keyless scrub of the packs the catalogue uses, by pack ID: each pack is read whole and
 * hashed (BLAKE3 over megabytes: GB/s, one read per pack, no lookup per chunk); only a pack that
 * no longer hashes to its name is looked into, blob by blob against the digests the catalogue
 * recorded, to find which blobs are damaged. A blob is reported only where the catalogue still
 * uses that copy (a dead or already quarantined copy is GC's business). A pack of format 1 has no
 * digests: its damage is reported, but it takes the key to say which blob ("kura check
 * --read-data --repair" does).
 *
 * `budgetBytes` bounds one run: the next run goes on after the last pack read (the cursor is
 * kept in the catalogue's meta table under `cursorKey`), so every pack is read in turn.
 */
export interface ScrubReport {
  packs: number;
  bytes: number;
  /** every pack the catalogue uses was read (within the budget) */
  complete: boolean;
  damaged: DamagedBlob[];
  /** damage that names no blob: a format 1 pack, damage outside the blobs the catalogue uses */
  problems: string[];
}

interface PackRow {
  n: number;
  name: string;
}

/**
 * A pack's ID as its bytes hash now (null: the pack is not there), and its size. On a local store
 * the file is read through one small buffer, reused (a new buffer of megabytes a pack cost more
 * than the hashing in a short-lived process, and would count against a backup's memory).
 */
function packHasher(repo: Repository): (pack: string) => Promise<{ id: string; size: number } | null> {
  const root = repo.store.local?.root ?? null;
  if (!root) {
    return async (pack) => {
      const bytes = await repo.store.get(packName(pack));
      return bytes ? { id: packId(bytes), size: bytes.length } : null;
    };
  }
  const buf = Buffer.allocUnsafe(1 << 20);
  return async (pack) => {
    let fd: number;
    try {
      fd = openSync(path.join(root, ...packName(pack).split('/')), 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
    try {
      const h = new Blake3Hasher();
      let size = 0;
      for (let n; (n = readSync(fd, buf, 0, buf.length, size)) > 0; size += n) h.update(buf.subarray(0, n));
      return { id: h.digest('hex'), size };
    } finally {
      closeSync(fd);
    }
  };
}

export async function scrubPacks(repo: Repository, opts: { budgetBytes: number; cursorKey: string }): Promise<ScrubReport> {
  const db = repo.catalogue.db;
  const report: ScrubReport = { packs: 0, bytes: 0, complete: true, damaged: [], problems: [] };
  const cursor = db.prepare<[string], string>('SELECT value FROM meta WHERE key = ?').pluck().get(opts.cursorKey) ?? '';
  const all = db.prepare<[], PackRow>('SELECT n, name FROM packs WHERE EXISTS (SELECT 1 FROM chunk_rows c WHERE c.pack = packs.n) ORDER BY name').all();
  // from the cursor on, then from the start
  const at = all.findIndex((p) => p.name > cursor);
  const order = at < 0 ? all : [...all.slice(at), ...all.slice(0, at)];
  const rowsOf = db.prepare<[number], { id: Buffer; offset: number; stored_size: number; digest: Buffer | null }>('SELECT id, offset, stored_size, digest FROM chunk_rows WHERE pack = ? ORDER BY offset');
  // packs holding a copy already quarantined no longer match their IDs: that damage is known
  const known = repo.catalogue.quarantine.locations();
  let last = cursor;
  const hashOf = packHasher(repo);
  // an object store answers each GET after a round trip: the next packs are fetched meanwhile
  const ahead = repo.store.local ? 1 : 4;
  const fetching = new Map<number, ReturnType<typeof hashOf>>();
  const hashAt = (k: number) => {
    let f = fetching.get(k);
    if (!f) {
      f = hashOf(order[k]!.name);
      f.catch(() => {}); // awaited in turn
      fetching.set(k, f);
    }
    return f;
  };
  for (let i = 0; i < order.length; i++) {
    if (report.bytes >= opts.budgetBytes) {
      report.complete = false;
      break;
    }
    const p = order[i]!;
    for (let k = i; k < Math.min(order.length, i + ahead); k++) void hashAt(k);
    const hashed = await hashAt(i);
    fetching.delete(i);
    report.packs++;
    last = p.name;
    if (hashed?.id === p.name) {
      report.bytes += hashed.size;
      continue;
    }
    // damaged (or gone): read it whole and look at each blob the catalogue uses in it
    const bytes = hashed ? await repo.store.get(packName(p.name)) : null;
    const rows = rowsOf.all(p.n);
    if (!bytes) {
      for (const r of rows) report.damaged.push({ chunk: r.id, pack: p.name, offset: r.offset, length: r.stored_size, digest: r.digest, reason: `pack ${p.name} is missing` });
      continue;
    }
    report.bytes += bytes.length;
    const index = parsePackIndex(bytes, bytes.length);
    if (rows.some((r) => !r.digest) && !known.has(p.name)) {
      report.problems.push(`pack ${p.name} does not match its ID and holds blobs written before pack format 2 (no digest): run "kura check --read-data --repair" with the key to find the damaged ones`);
    }
    let named = 0;
    for (const r of rows) {
      if (!r.digest) continue;
      const end = r.offset + r.stored_size;
      const blob = end <= bytes.length ? bytes.subarray(r.offset, end) : null;
      const actual = blob ? blobDigest(blob) : null;
      if (actual && actual.equals(r.digest)) continue;
      named++;
      report.damaged.push({ chunk: r.id, pack: p.name, offset: r.offset, length: r.stored_size, digest: r.digest, reason: blob ? 'stored bytes do not hash to the digest recorded when written' : `pack ${p.name} is cut short` });
    }
    if (named === 0 && rows.every((r) => r.digest)) {
      // the damage lies outside the blobs in use (a quarantined copy, a dead blob, the index): the next GC rewrites the pack
      db.prepare('INSERT OR IGNORE INTO gc_pending (pack) VALUES (?)').run(p.name);
      if (!known.has(p.name)) report.problems.push(`pack ${p.name} does not match its ID, but every blob the catalogue uses in it is whole${index ? '' : ' (its index is damaged)'}: the next gc rewrites it`);
    }
  }
  db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(opts.cursorKey, report.complete ? '' : last);
  return report;
}
