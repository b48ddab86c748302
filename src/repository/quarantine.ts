import type Database from 'better-sqlite3';
import { KuraError } from '../errors.js';
import { BASE_PREFIX, packDeltas } from './catalogue.js';
import { idsOf } from './chunklist.js';
import { listFetcher } from './reader.js';
import type { Repository } from './repository.js';
import { snapshotChunkIds } from './snapshot.js';

/**
 * Quarantine: a stored blob whose bytes no longer match what was written (its digest, or with
 * the key its tag and ID) is taken out of the catalogue's index, so nothing deduplicates against
 * it, sends it or restores from it, and the next backup that meets the same data stores it anew.
 * Where it lay (pack, offset) and who found it are kept; so are the snapshots it damages. A
 * snapshot is damaged while one of its damaged chunks is not stored again: once a later backup
 * has stored it anew, the snapshot restores again (nothing to do: the chunk's ID is its content).
 * The bytes stay in their pack until GC rewrites it.
 */
export interface DamagedBlob {
  chunk: Buffer;
  pack: string;
  offset: number;
  length: number;
  /** the digest recorded when it was written (null: a blob of pack format 1) */
  digest: Buffer | null;
  reason: string;
}

export interface QuarantineRow {
  chunk: string;
  pack: string;
  offset: number;
  length: number;
  digest: string | null;
  found: string;
  foundBy: string;
  reason: string;
  /** the snapshot being read when it was found, if any */
  snapshot: string | null;
  /** stored again since (by a later backup, or a relay's copy at a vault) */
  healed: boolean;
}

export interface SnapshotDamage {
  snapshot: string;
  /** its damaged chunks not stored again yet (hex) */
  chunks: string[];
  found: string;
}

export class QuarantineState {
  constructor(private readonly db: Database.Database) {
    db.exec(`
      CREATE TABLE IF NOT EXISTS quarantine (
        chunk BLOB NOT NULL, pack TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL, digest BLOB,
        found TEXT NOT NULL, found_by TEXT NOT NULL, reason TEXT NOT NULL, snapshot TEXT,
        PRIMARY KEY (chunk, pack, offset)) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS snapshot_damage (
        snapshot TEXT NOT NULL, chunk BLOB NOT NULL, found TEXT NOT NULL, PRIMARY KEY (snapshot, chunk)) WITHOUT ROWID;
    `);
  }

  /**
   * Take damaged blobs out of the index and record them, in one transaction. A chunk row is
   * removed only while it still points at the damaged copy (another, whole copy stays in use).
   */
  add(blobs: readonly DamagedBlob[], foundBy: string, snapshot: string | null): void {
    const now = new Date().toISOString();
    const drop = this.db.prepare('DELETE FROM chunk_rows WHERE id = ? AND offset = ? AND pack = (SELECT n FROM packs WHERE name = ?)');
    const record = this.db.prepare(
      'INSERT OR IGNORE INTO quarantine (chunk, pack, offset, length, digest, found, found_by, reason, snapshot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    // the next GC rewrites the pack without the damaged copy (its whole blobs verified against their digests)
    const pending = this.db.prepare('INSERT OR IGNORE INTO gc_pending (pack) VALUES (?)');
    this.db
      .transaction(() => {
        for (const b of blobs) {
          drop.run(b.chunk, b.offset, b.pack);
          record.run(b.chunk, b.pack, b.offset, b.length, b.digest, now, foundBy, b.reason, snapshot);
          pending.run(b.pack);
        }
      })
      .immediate();
  }

  /** Record that `snapshot` references the damaged `chunks`. */
  addDamage(snapshot: string, chunks: readonly Buffer[]): void {
    const now = new Date().toISOString();
    const st = this.db.prepare('INSERT OR IGNORE INTO snapshot_damage (snapshot, chunk, found) VALUES (?, ?, ?)');
    this.db.transaction(() => {
      for (const c of chunks) st.run(snapshot, c, now);
    })();
  }

  /** Chunks ever quarantined (hex), whole again or not: a backup stores them anew whole, never as a delta. */
  chunkIds(): Set<string> {
    return new Set(this.db.prepare<[], Buffer>('SELECT DISTINCT chunk FROM quarantine').pluck().all().map((b) => b.toString('hex')));
  }

  /** Quarantined chunks not stored again since: nothing may take them as stored. */
  unhealed(): Buffer[] {
    return this.db.prepare<[], Buffer>('SELECT DISTINCT q.chunk FROM quarantine q WHERE NOT EXISTS (SELECT 1 FROM chunk_rows c WHERE c.id = q.chunk)').pluck().all();
  }

  /**
   * Deltas stored whole but whose base is quarantined and not stored again: they cannot be opened
   * until it is, so a backup that meets their data stores them anew rather than reuse them.
   */
  orphanedDeltas(): Buffer[] {
    return [...this.deltasOn(this.unhealed()).keys()].map((hex) => Buffer.from(hex, 'hex'));
  }

  /** The stored deltas that have one of `bases` as a base (by 8-byte prefix): delta ID (hex) → that base. */
  deltasOn(bases: readonly Buffer[]): Map<string, Buffer> {
    const out = new Map<string, Buffer>();
    if (bases.length === 0) return out;
    const byPrefix = new Map(bases.map((c) => [c.subarray(0, BASE_PREFIX).toString('hex'), c]));
    const rowAt = this.db.prepare<[number, number], Buffer>('SELECT id FROM chunk_rows WHERE pack = ? AND offset = ?').pluck();
    for (const row of this.db.prepare<[], { pack: number; bases: Buffer; deltas: Buffer }>('SELECT pack, bases, deltas FROM pack_bases').all()) {
      for (const [offset, prefixes] of packDeltas(row)) {
        const base = prefixes.map((p) => byPrefix.get(p.toString('hex'))).find((b) => b !== undefined);
        if (!base) continue;
        const id = rowAt.get(row.pack, offset);
        if (id) out.set(id.toString('hex'), base);
      }
    }
    return out;
  }

  /** The damaged copies, by pack: offsets a reader of pack indexes must not take for a chunk. */
  locations(): Map<string, Set<number>> {
    const out = new Map<string, Set<number>>();
    for (const r of this.db.prepare<[], { pack: string; offset: number }>('SELECT pack, offset FROM quarantine').all()) {
      let s = out.get(r.pack);
      if (!s) out.set(r.pack, (s = new Set()));
      s.add(r.offset);
    }
    return out;
  }

  list(): QuarantineRow[] {
    return this.db
      .prepare<[], { chunk: Buffer; pack: string; offset: number; length: number; digest: Buffer | null; found: string; found_by: string; reason: string; snapshot: string | null; healed: number }>(
        `SELECT q.*, EXISTS (SELECT 1 FROM chunk_rows c WHERE c.id = q.chunk) AS healed FROM quarantine q ORDER BY found, chunk`,
      )
      .all()
      .map((r) => ({
        chunk: r.chunk.toString('hex'),
        pack: r.pack,
        offset: r.offset,
        length: r.length,
        digest: r.digest?.toString('hex') ?? null,
        found: r.found,
        foundBy: r.found_by,
        reason: r.reason,
        snapshot: r.snapshot,
        healed: r.healed === 1,
      }));
  }

  /** Snapshots (still in the catalogue) with damaged chunks that are not stored again yet. */
  damaged(): SnapshotDamage[] {
    const rows = this.db
      .prepare<[], { snapshot: string; chunk: Buffer; found: string }>(
        `SELECT d.snapshot, d.chunk, d.found FROM snapshot_damage d JOIN snapshots s ON s.id = d.snapshot
         WHERE NOT EXISTS (SELECT 1 FROM chunk_rows c WHERE c.id = d.chunk) ORDER BY s.end_time, d.snapshot, d.found`,
      )
      .all();
    const out = new Map<string, SnapshotDamage>();
    for (const r of rows) {
      let d = out.get(r.snapshot);
      if (!d) out.set(r.snapshot, (d = { snapshot: r.snapshot, chunks: [], found: r.found }));
      d.chunks.push(r.chunk.toString('hex'));
    }
    return [...out.values()];
  }

  /** The damaged chunks of one snapshot not stored again yet (hex); empty when it is whole. */
  damageOf(snapshot: string): string[] {
    return this.db
      .prepare<[string], Buffer>('SELECT d.chunk FROM snapshot_damage d WHERE d.snapshot = ? AND NOT EXISTS (SELECT 1 FROM chunk_rows c WHERE c.id = d.chunk)')
      .pluck()
      .all(snapshot)
      .map((b) => b.toString('hex'));
  }
}

/**
 * Which snapshots reference any of `chunks`: as a list block, a data chunk, or a base of one of
 * their deltas (by 8-byte prefix). Walks every snapshot's chunk list: damage is rare, and a
 * damaged snapshot nobody knows of is what this is for. A snapshot whose list cannot be walked
 * because one of `chunks` is a list block it needs counts as referencing it.
 */
export async function snapshotsReferencing(repo: Repository, chunks: readonly Buffer[]): Promise<Map<string, Buffer[]>> {
  const want = new Map(chunks.map((c) => [c.toString('hex'), c]));
  // a snapshot that holds a delta on one of them needs it too (found once, not per snapshot)
  const onBase = repo.catalogue.quarantine.deltasOn(chunks);
  const out = new Map<string, Buffer[]>();
  const hit = (snapshot: string, c: Buffer) => {
    const list = out.get(snapshot) ?? [];
    if (!list.some((x) => x.equals(c))) list.push(c);
    out.set(snapshot, list);
  };
  for (const { id } of repo.catalogue.snapshots()) {
    let snap;
    try {
      snap = await repo.readSnapshot(id);
    } catch {
      continue; // check reports an unreadable snapshot file
    }
    const blocks: Buffer[] = [];
    let data: Buffer;
    try {
      data = await snapshotChunkIds(snap, listFetcher(repo), (b) => blocks.push(b));
    } catch (e) {
      if (!(e instanceof KuraError)) throw e;
      const c = want.get(String(e.details?.chunk ?? ''));
      if (c) hit(id, c);
      for (const b of blocks) if (want.has(b.toString('hex'))) hit(id, b);
      continue;
    }
    for (const b of blocks) if (want.has(b.toString('hex'))) hit(id, b);
    for (const c of idsOf(data)) {
      const hex = c.toString('hex');
      const w = want.get(hex) ?? onBase.get(hex);
      if (w) hit(id, w);
    }
  }
  return out;
}

/**
 * Quarantine `blobs` (found by `foundBy` while reading `snapshot`, if any) and record every
 * snapshot they damage; returns those snapshots. Safe to call again for the same blobs.
 */
export async function quarantineBlobs(repo: Repository, blobs: readonly DamagedBlob[], foundBy: string, snapshot: string | null): Promise<string[]> {
  if (blobs.length === 0) return [];
  const q = repo.catalogue.quarantine;
  q.add(blobs, foundBy, snapshot);
  if (snapshot) q.addDamage(snapshot, blobs.map((b) => b.chunk));
  const affected = await snapshotsReferencing(repo, blobs.map((b) => b.chunk));
  for (const [id, chunks] of affected) q.addDamage(id, chunks);
  const all = new Set(affected.keys());
  if (snapshot) all.add(snapshot);
  return [...all];
}
