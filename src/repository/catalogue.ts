import Database from 'better-sqlite3';
import type { SnapshotHeader } from './snapshot.js';
import { KuraError } from '../errors.js';

/**
 * The SQLite catalogue (WAL): which chunks and snapshots the store holds. It is a cache of the
 * store, never the only copy of a fact: `kura repo rebuild-index` recreates it from the store.
 * Rows are added only after the store write they describe is durable.
 */
export interface SnapshotRow {
  id: string;
  header: SnapshotHeader;
}

export interface ChunkLocation {
  pack: string;
  offset: number;
  length: number;
}

export interface ChunkRow {
  id: Buffer;
  pack: string;
  offset: number;
  storedSize: number;
  plainSize: number;
}

const SCHEMA_VERSION = 1;

export class Catalogue {
  readonly db: Database.Database;
  private readonly hasStmt: Database.Statement<[Buffer], { x: number }>;
  private readonly addChunkStmt: Database.Statement<[Buffer, string, number, number, number]>;
  private readonly locStmt: Database.Statement<[Buffer], ChunkLocation>;
  private readonly addSnapStmt: Database.Statement<[string, string, string, string, string, string]>;

  constructor(readonly path: string) {
    try {
      this.db = new Database(path);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('busy_timeout = 10000');
    } catch (e) {
      throw new KuraError('E_IO', `cannot open the catalogue ${path}: ${(e as Error).message} (check permissions and disk space)`, undefined, { cause: e });
    }
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS chunks (
        id BLOB PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL, stored_size INTEGER NOT NULL,
        plain_size INTEGER NOT NULL) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks (pack);
      CREATE TABLE IF NOT EXISTS snapshots (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, source TEXT NOT NULL, host TEXT NOT NULL,
        end_time TEXT NOT NULL, header TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS snapshots_by_source ON snapshots (source, end_time);
    `);
    const v = this.db.prepare<[], { value: string }>(`SELECT value FROM meta WHERE key = 'schema'`).get();
    if (!v) this.db.prepare(`INSERT INTO meta (key, value) VALUES ('schema', ?)`).run(String(SCHEMA_VERSION));
    else if (Number(v.value) > SCHEMA_VERSION) {
      throw new KuraError('E_REPO_FORMAT', `catalogue ${path} was written by a newer kura (schema ${v.value}); upgrade kura`);
    }
    this.hasStmt = this.db.prepare<[Buffer], { x: number }>('SELECT 1 AS x FROM chunks WHERE id = ?');
    this.addChunkStmt = this.db.prepare('INSERT OR IGNORE INTO chunks (id, pack, offset, stored_size, plain_size) VALUES (?, ?, ?, ?, ?)');
    this.locStmt = this.db.prepare<[Buffer], ChunkLocation>('SELECT pack, offset, stored_size AS length FROM chunks WHERE id = ?');
    this.addSnapStmt = this.db.prepare('INSERT OR IGNORE INTO snapshots (id, tenant, source, host, end_time, header) VALUES (?, ?, ?, ?, ?, ?)');
  }

  hasChunk(id: Buffer): boolean {
    return this.hasStmt.get(id) !== undefined;
  }

  addChunks(rows: ReadonlyArray<ChunkRow>): void {
    const tx = this.db.transaction(() => {
      for (const r of rows) this.addChunkStmt.run(r.id, r.pack, r.offset, r.storedSize, r.plainSize);
    });
    tx();
  }

  location(id: Buffer): ChunkLocation | undefined {
    return this.locStmt.get(id);
  }

  addSnapshot(id: string, h: SnapshotHeader): void {
    this.addSnapStmt.run(id, h.tenant, h.source, h.host, h.endTime, JSON.stringify(h));
  }

  removeSnapshot(id: string): void {
    this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(id);
  }

  snapshots(filter: { source?: string } = {}): SnapshotRow[] {
    const rows = filter.source
      ? this.db.prepare<[string], { id: string; header: string }>('SELECT id, header FROM snapshots WHERE source = ? ORDER BY end_time, id').all(filter.source)
      : this.db.prepare<[], { id: string; header: string }>('SELECT id, header FROM snapshots ORDER BY end_time, id').all();
    return rows.map((r) => ({ id: r.id, header: JSON.parse(r.header) as SnapshotHeader }));
  }

  snapshotIds(): Set<string> {
    return new Set(this.db.prepare<[], { id: string }>('SELECT id FROM snapshots').all().map((r) => r.id));
  }

  counts(): { chunks: number; storedBytes: number; snapshots: number } {
    const c = this.db.prepare<[], { n: number; s: number | null }>('SELECT count(*) AS n, sum(stored_size) AS s FROM chunks').get()!;
    const s = this.db.prepare<[], { n: number }>('SELECT count(*) AS n FROM snapshots').get()!;
    return { chunks: c.n, storedBytes: c.s ?? 0, snapshots: s.n };
  }

  *chunkRows(): Generator<{ id: Buffer; pack: string; stored_size: number }> {
    yield* this.db.prepare<[], { id: Buffer; pack: string; stored_size: number }>('SELECT id, pack, stored_size FROM chunks').iterate();
  }

  clear(): void {
    this.db.exec('DELETE FROM chunks; DELETE FROM snapshots;');
  }

  close(): void {
    this.db.close();
  }
}
