import Database from 'better-sqlite3';
import type { SnapshotHeader } from './snapshot.js';
import { hostname } from 'node:os';
import path from 'node:path';
import { KuraError } from '../errors.js';
import { OpsState } from './ops-state.js';
import { QuarantineState } from './quarantine.js';
export type { JobRow, RouteStateRow } from './ops-state.js';

import { CondemnedPacks, processAlive } from './condemned.js';

/**
 * The SQLite catalogue (WAL): which chunks and snapshots the store holds. It is a cache of the
 * store, never the only copy of a fact: `kura repo rebuild-index` recreates it from the store.
 * Rows are added only after the store write they describe is durable.
 */
export interface SnapshotRow {
  id: string;
  header: SnapshotHeader;
}

const LOCATE_BATCH = 500; // chunk IDs looked up by one statement

export interface ChunkLocation {
  pack: string;
  offset: number;
  length: number;
  /** the stored blob's digest, recorded when it was written; null for blobs written before pack format 2 */
  digest?: Buffer | null;
}

export interface ChunkRow {
  id: Buffer;
  pack: string;
  offset: number;
  storedSize: number;
  plainSize: number;
  /** the base chunks of a delta blob */
  bases?: readonly Buffer[] | undefined;
  /** the stored blob's digest (pack format 2); null or absent for an older blob */
  digest?: Buffer | null | undefined;
  /** replace the chunk's row if it has one (a chunk stored anew because its copy cannot be used) */
  replace?: boolean;
}

/** Vault: protocol bytes of a tenant's sessions (every byte read and written on the channel; of those written, the restore reads' answers). */
export interface TransferBytes {
  wireIn: number;
  wireOut: number;
  restoreOut: number;
}

/**
 * 4: each blob's digest (migrateDigests). 5: GC deletes packs in two phases (condemned_packs),
 * which every writer must honour: a kura of schema 4 refuses the catalogue rather than write a
 * pack that a GC is deleting.
 */
export const SCHEMA_VERSION = 5;

/**
 * How long a GC's claim on a condemned pack keeps sessions from writing a pack of that name:
 * far longer than one DELETE with its retries takes. A claim older than this was left by a
 * killed GC; the pack may be taken back (its object is either gone or holds the same bytes).
 */
export const CONDEMNED_CLAIM_MS = 10 * 60_000;

import { BASES_SCHEMA, BASE_PREFIX, CHUNK_VIEW, CHUNKS_SCHEMA, packDeltas } from './catalogue-schema.js';
export { BASE_PREFIX, packDeltas } from './catalogue-schema.js';

export class Catalogue {
  readonly db: Database.Database;
  /** the relay queue, route states and controls, job records and heartbeats */
  readonly ops: OpsState;
  /** damaged blobs taken out of the index, and the snapshots they damage */
  readonly quarantine: QuarantineState;
  /** packs GC proved unused and deletes outside its transaction */
  readonly condemned: CondemnedPacks;
  private readonly hasStmt: Database.Statement<[Buffer], { x: number }>;
  private readonly locStmt: Database.Statement<[Buffer], ChunkLocation>;
  private readonly addSnapStmt: Database.Statement<[string, string, string, string, string, string]>;
  private readonly prefixStmt: Database.Statement<[Buffer, Buffer], Buffer>;
  private readonly rowStmt: Database.Statement<[Buffer], [number, number, number, number]>;
  private readonly packNameStmt: Database.Statement<[number], string>;
  private readonly addPackStmt: Database.Statement<[string]>;
  private readonly packNumberStmt: Database.Statement<[string], number>;
  private readonly addRowStmt: Database.Statement<[Buffer, number, number, number, number, Buffer | null]>;
  private readonly replaceRowStmt: Database.Statement<[Buffer, number, number, number, number, Buffer | null]>;

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
      CREATE TABLE IF NOT EXISTS snapshots (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, source TEXT NOT NULL, host TEXT NOT NULL,
        end_time TEXT NOT NULL, header TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS snapshots_by_source ON snapshots (source, end_time);
      CREATE TABLE IF NOT EXISTS received (snapshot TEXT PRIMARY KEY, at TEXT NOT NULL, seq INTEGER NOT NULL);
      -- vault: chunks a live session was told are present or uploaded; GC must keep them
      CREATE TABLE IF NOT EXISTS leases (session TEXT NOT NULL, chunk BLOB NOT NULL, expires INTEGER NOT NULL, PRIMARY KEY (session, chunk)) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS leases_by_chunk ON leases (chunk, expires);
      -- relay: one entry per snapshot per route, durable before the backup reports success
      CREATE TABLE IF NOT EXISTS queue (
        snapshot TEXT NOT NULL, route TEXT NOT NULL, source TEXT NOT NULL, end_time TEXT NOT NULL,
        enqueued TEXT NOT NULL, sent TEXT, bytes_sent INTEGER, PRIMARY KEY (snapshot, route));
      CREATE INDEX IF NOT EXISTS queue_pending ON queue (route, sent, end_time);
      -- backup jobs, successful or not: the input of kura status / kura top
      CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY, source TEXT NOT NULL, started TEXT NOT NULL, finished TEXT,
        result TEXT NOT NULL, snapshot TEXT, new_bytes INTEGER, error_code TEXT, error TEXT);
      CREATE INDEX IF NOT EXISTS jobs_by_source ON jobs (source, id);
      -- vault: packs a session is writing (created before the file, dropped with its chunk rows)
      CREATE TABLE IF NOT EXISTS pack_leases (pack TEXT PRIMARY KEY, session TEXT NOT NULL, expires INTEGER NOT NULL);
      -- GC: packs that lost chunks and still have to be rewritten or deleted (survives a crash)
      CREATE TABLE IF NOT EXISTS gc_pending (pack TEXT PRIMARY KEY);
      -- GC: packs proved unused, to be deleted from the store outside any transaction; claimed
      -- (a time) while a GC's delete is in flight. Survives a crash: the next GC deletes them.
      CREATE TABLE IF NOT EXISTS condemned_packs (pack TEXT PRIMARY KEY, since INTEGER NOT NULL, claimed INTEGER);
      -- who works on the repository: backups (shared) and GC (exclusive) on a local repository
      CREATE TABLE IF NOT EXISTS locks (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL, started TEXT NOT NULL);
      -- vault: new chunk bytes stored per UTC day (kura vault usage)
      CREATE TABLE IF NOT EXISTS intake (day TEXT PRIMARY KEY, bytes INTEGER NOT NULL, chunks INTEGER NOT NULL);
      -- vault: protocol bytes per UTC day, read from and written to the tenant's clients (kura vault usage)
      CREATE TABLE IF NOT EXISTS transfer_bytes (
        day TEXT PRIMARY KEY, wire_in INTEGER NOT NULL, wire_out INTEGER NOT NULL, restore_out INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS route_state (
        route TEXT PRIMARY KEY, state TEXT NOT NULL, last_error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER, last_success TEXT, bytes_sent INTEGER NOT NULL DEFAULT 0, updated TEXT NOT NULL);
    `);
    const v = this.db.prepare<[], { value: string }>(`SELECT value FROM meta WHERE key = 'schema'`).get();
    if (v && Number(v.value) > SCHEMA_VERSION) {
      throw new KuraError('E_REPO_FORMAT', `catalogue ${path} was written by a newer kura (schema ${v.value}); upgrade kura`);
    }
    this.migrateChunks();
    this.migrateDigests();
    if (!this.db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'pack_bases'`).get()) {
      this.db.transaction(() => {
        this.db.exec(BASES_SCHEMA);
        this.db.prepare(`UPDATE meta SET value = ? WHERE key = 'schema' AND CAST(value AS INTEGER) < ?`).run(String(SCHEMA_VERSION), SCHEMA_VERSION);
      }).immediate();
    }
    this.db.prepare(`INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)`).run(String(SCHEMA_VERSION));
    this.migrateCondemned();
    // columns added after the first release of a table
    const cols = new Set(this.db.prepare<[], { name: string }>(`PRAGMA table_info(route_state)`).all().map((c) => c.name));
    if (!cols.has('paused')) this.db.exec('ALTER TABLE route_state ADD COLUMN paused INTEGER NOT NULL DEFAULT 0');
    if (!cols.has('retry')) this.db.exec('ALTER TABLE route_state ADD COLUMN retry INTEGER NOT NULL DEFAULT 0');
    const queueCols = new Set(this.db.prepare<[], { name: string }>(`PRAGMA table_info(queue)`).all().map((c) => c.name));
    // an entry set aside (damaged snapshot, or by hand): not sent, no longer blocking the route
    if (!queueCols.has('aside')) this.db.exec('ALTER TABLE queue ADD COLUMN aside TEXT; ALTER TABLE queue ADD COLUMN aside_reason TEXT;');
    const jobCols = new Set(this.db.prepare<[], { name: string }>(`PRAGMA table_info(jobs)`).all().map((c) => c.name));
    if (!jobCols.has('coordination')) this.db.exec('ALTER TABLE jobs ADD COLUMN coordination TEXT');
    this.hasStmt = this.db.prepare<[Buffer], { x: number }>('SELECT 1 AS x FROM chunk_rows WHERE id = ?');
    this.locStmt = this.db.prepare<[Buffer], ChunkLocation>('SELECT pack, offset, stored_size AS length, digest FROM chunks WHERE id = ?');
    this.prefixStmt = this.db.prepare<[Buffer, Buffer], Buffer>('SELECT id FROM chunk_rows WHERE id >= ? AND id <= ?').pluck();
    this.rowStmt = this.db.prepare<[Buffer], [number, number, number, number]>('SELECT pack, offset, stored_size, plain_size FROM chunk_rows WHERE id = ?').raw();
    this.packNameStmt = this.db.prepare<[number], string>('SELECT name FROM packs WHERE n = ?').pluck();
    this.addPackStmt = this.db.prepare<[string]>('INSERT OR IGNORE INTO packs (name) VALUES (?)');
    this.packNumberStmt = this.db.prepare<[string], number>('SELECT n FROM packs WHERE name = ?').pluck();
    this.addRowStmt = this.db.prepare('INSERT OR IGNORE INTO chunk_rows (id, pack, offset, stored_size, plain_size, digest) VALUES (?, ?, ?, ?, ?, ?)');
    this.replaceRowStmt = this.db.prepare('INSERT OR REPLACE INTO chunk_rows (id, pack, offset, stored_size, plain_size, digest) VALUES (?, ?, ?, ?, ?, ?)');
    this.ops = new OpsState(this.db);
    this.quarantine = new QuarantineState(this.db);
    this.condemned = new CondemnedPacks(this.db);
    this.addSnapStmt = this.db.prepare('INSERT OR IGNORE INTO snapshots (id, tenant, source, host, end_time, header) VALUES (?, ?, ?, ?, ?, ?)');
  }

  /**
   * Schema 1 kept the pack name in every chunk row: move the rows to `chunk_rows` once, in one
   * transaction (a crash leaves the old table as it was; the next open migrates again).
   */
  private migrateChunks(): void {
    const chunksType = () => this.db.prepare<[], { type: string }>(`SELECT type FROM sqlite_master WHERE name = 'chunks'`).get()?.type;
    if (chunksType() === 'view') return; // current: no write transaction for a mere open
    this.db
      .transaction(() => {
        const type = chunksType(); // again, inside the transaction: another process may have migrated
        if (type === 'table') {
          this.db.exec(`ALTER TABLE chunks RENAME TO chunks_v1; DROP INDEX IF EXISTS chunks_by_pack;`);
          this.db.exec(CHUNKS_SCHEMA);
          this.db.exec(`
            INSERT OR IGNORE INTO packs (name) SELECT DISTINCT pack FROM chunks_v1 ORDER BY pack;
            INSERT INTO chunk_rows (id, pack, offset, stored_size, plain_size)
              SELECT c.id, p.n, c.offset, c.stored_size, c.plain_size FROM chunks_v1 c JOIN packs p ON p.name = c.pack;
            DROP TABLE chunks_v1;
            UPDATE meta SET value = '${SCHEMA_VERSION}' WHERE key = 'schema' AND CAST(value AS INTEGER) < ${SCHEMA_VERSION};
          `);
        } else if (!type) this.db.exec(CHUNKS_SCHEMA);
      })
      .immediate();
  }

  /**
   * Schema 5: condemned_packs (made with the other tables above; a catalogue of schema 4 may
   * already have it, empty or not, from a kura that added it without a new version) is part of
   * the schema; only the version moves, once.
   */
  private migrateCondemned(): void {
    const version = () => Number(this.db.prepare<[], string>(`SELECT value FROM meta WHERE key = 'schema'`).pluck().get());
    if (version() >= SCHEMA_VERSION) return; // current: no write transaction for a mere open
    this.db
      .transaction(() => {
        this.db.exec('CREATE TABLE IF NOT EXISTS condemned_packs (pack TEXT PRIMARY KEY, since INTEGER NOT NULL, claimed INTEGER)');
        this.db.prepare(`UPDATE meta SET value = ? WHERE key = 'schema' AND CAST(value AS INTEGER) < ?`).run(String(SCHEMA_VERSION), SCHEMA_VERSION);
      })
      .immediate();
  }

  /**
   * Schema 4 records each blob's digest: the column is added (null for the blobs already
   * recorded: they were written without one) and the view that reads and writes by pack name is
   * made again with it, in one transaction.
   */
  private migrateDigests(): void {
    const has = () => this.db.prepare<[], { name: string }>(`PRAGMA table_info(chunk_rows)`).all().some((c) => c.name === 'digest');
    if (has()) return;
    this.db
      .transaction(() => {
        if (has()) return;
        this.db.exec(`
          ALTER TABLE chunk_rows ADD COLUMN digest BLOB;
          DROP VIEW IF EXISTS chunks;
          DROP TRIGGER IF EXISTS chunks_insert; DROP TRIGGER IF EXISTS chunks_update; DROP TRIGGER IF EXISTS chunks_delete;
          ${CHUNK_VIEW}
          UPDATE meta SET value = '${SCHEMA_VERSION}' WHERE key = 'schema' AND CAST(value AS INTEGER) < ${SCHEMA_VERSION};
        `);
      })
      .immediate();
  }

  /** Pack numbers no chunk row refers to any more (GC deleted or rewrote the pack). */
  forgetEmptyPacks(): void {
    this.db.exec(`
      DELETE FROM packs WHERE NOT EXISTS (SELECT 1 FROM chunk_rows c WHERE c.pack = packs.n);
      DELETE FROM pack_bases WHERE NOT EXISTS (SELECT 1 FROM packs p WHERE p.n = pack_bases.pack);`);
  }

  hasChunk(id: Buffer): boolean {
    return this.hasStmt.get(id) !== undefined;
  }

  addChunks(rows: ReadonlyArray<ChunkRow>): void {
    const tx = this.db.transaction(() => {
      this.insertRows(rows);
      this.addBases(rows);
    });
    tx();
  }

  /**
   * Rows straight into chunk_rows with their pack's number, looked up once a pack (through the
   * `chunks` view's trigger it was looked up again for every row: 13 us a row, now 4 us).
   */
  private insertRows(rows: ReadonlyArray<ChunkRow>): void {
    let pack: string | null = null;
    let n = 0;
    for (const r of rows) {
      if (r.pack !== pack) {
        pack = r.pack;
        this.addPackStmt.run(pack);
        n = this.packNumberStmt.get(pack)!;
      }
      (r.replace ? this.replaceRowStmt : this.addRowStmt).run(r.id, n, r.offset, r.storedSize, r.plainSize, r.digest ?? null);
    }
  }

  /** Record the bases the deltas among `rows` need, per pack (call inside the rows' transaction). */
  private addBases(rows: ReadonlyArray<ChunkRow>): void {
    const byPack = new Map<string, Array<{ offset: number; bases: readonly Buffer[] }>>();
    for (const r of rows) {
      if (!r.bases?.length) continue;
      let list = byPack.get(r.pack);
      if (!list) byPack.set(r.pack, (list = []));
      list.push({ offset: r.offset, bases: r.bases });
    }
    for (const [pack, deltas] of byPack) this.addPackBases(pack, deltas);
  }

  /** Record deltas of `pack` (a pack already in the catalogue) with their bases (IDs or prefixes). */
  addPackBases(pack: string, deltas: ReadonlyArray<{ offset: number; bases: readonly Buffer[] }>): void {
    if (deltas.length === 0) return;
    const n = this.db.prepare<[string], { n: number }>('SELECT n FROM packs WHERE name = ?').get(pack)?.n;
    if (n === undefined) return;
    const old = this.db.prepare<[number], { bases: Buffer; deltas: Buffer }>('SELECT bases, deltas FROM pack_bases WHERE pack = ?').get(n);
    const all = old ? packDeltas(old) : new Map<number, Buffer[]>();
    for (const d of deltas) all.set(d.offset, [...d.bases]);
    const index = new Map<string, number>();
    const ids: Buffer[] = [];
    const records: Buffer[] = [];
    for (const [offset, bases] of all) {
      const rec = Buffer.allocUnsafe(5 + 2 * bases.length);
      rec.writeUInt32LE(offset, 0);
      rec[4] = bases.length;
      bases.forEach((b, i) => {
        const prefix = b.subarray(0, BASE_PREFIX);
        const k = prefix.toString('base64');
        let at = index.get(k);
        if (at === undefined) {
          index.set(k, (at = ids.length));
          ids.push(prefix);
        }
        rec.writeUInt16LE(at, 5 + 2 * i);
      });
      records.push(rec);
    }
    this.db.prepare('INSERT OR REPLACE INTO pack_bases (pack, bases, deltas) VALUES (?, ?, ?)').run(n, Buffer.concat(ids), Buffer.concat(records));
  }

  /** The deltas of a pack: offset → bases; null if it holds none. */
  packDeltas(pack: string): Map<number, Buffer[]> | null {
    const row = this.db
      .prepare<[string], { bases: Buffer; deltas: Buffer }>('SELECT b.bases, b.deltas FROM pack_bases b JOIN packs p ON p.n = b.pack WHERE p.name = ?')
      .get(pack);
    return row ? packDeltas(row) : null;
  }

  /** Every stored chunk whose ID starts with `prefix` (one, but for a 64-bit collision). */
  chunksWithPrefix(prefix: Buffer): Buffer[] {
    const lo = Buffer.alloc(32, 0);
    const hi = Buffer.alloc(32, 0xff);
    prefix.copy(lo);
    prefix.copy(hi);
    return this.prefixStmt.all(lo, hi);
  }

  /**
   * The base chunks the deltas among `ids` need, beyond `ids` themselves: `found` stored here,
   * `missing` the prefixes no stored chunk has.
   */
  basesNeeded(ids: Iterable<Buffer>): { found: Buffer[]; missing: Buffer[] } {
    const found = new Map<string, Buffer>();
    const missing = new Map<string, Buffer>();
    if (!this.db.prepare('SELECT 1 FROM pack_bases LIMIT 1').get()) return { found: [], missing: [] };
    const rowOf = this.db.prepare<[Buffer], { pack: number; offset: number }>('SELECT pack, offset FROM chunk_rows WHERE id = ?');
    const deltasOf = this.db.prepare<[number], { bases: Buffer; deltas: Buffer }>('SELECT bases, deltas FROM pack_bases WHERE pack = ?');
    const inList = new Set<string>();
    const offsets = new Map<number, number[]>();
    for (const id of ids) {
      inList.add(id.subarray(0, BASE_PREFIX).toString('base64'));
      const r = rowOf.get(id);
      if (!r) continue;
      let list = offsets.get(r.pack);
      if (!list) offsets.set(r.pack, (list = []));
      list.push(r.offset);
    }
    const seen = new Set<string>();
    for (const [pack, offs] of offsets) {
      const row = deltasOf.get(pack);
      if (!row) continue;
      const deltas = packDeltas(row);
      for (const o of offs) {
        for (const prefix of deltas.get(o) ?? []) {
          const k = prefix.toString('base64');
          if (inList.has(k) || seen.has(k)) continue;
          seen.add(k);
          const ids = this.chunksWithPrefix(prefix);
          if (ids.length === 0) missing.set(k, Buffer.from(prefix));
          for (const id of ids) found.set(id.toString('base64'), id);
        }
      }
    }
    return { found: [...found.values()], missing: [...missing.values()] };
  }

  location(id: Buffer): ChunkLocation | undefined {
    return this.locStmt.get(id);
  }

  /**
   * The locations of many chunks (undefined for one not held), LOCATE_BATCH IDs a statement: a
   * restore looks up every chunk, and one lookup a call cost twice the CPU time.
   */
  locations(ids: readonly Buffer[]): Array<ChunkLocation | undefined> {
    const out = new Array<ChunkLocation | undefined>(ids.length);
    const args = new Array<Buffer>(LOCATE_BATCH);
    for (let at = 0; at < ids.length; at += LOCATE_BATCH) {
      const n = Math.min(LOCATE_BATCH, ids.length - at);
      for (let i = 0; i < LOCATE_BATCH; i++) args[i] = ids[at + (i < n ? i : 0)]!; // a short batch repeats its first ID
      const found = new Map<string, ChunkLocation>();
      for (const [id, pack, offset, length, digest] of (this.locManyStmt ??= this.prepareLocMany()).all(...args)) found.set(id.toString('latin1'), { pack, offset, length, digest });
      for (let i = 0; i < n; i++) out[at + i] = found.get(ids[at + i]!.toString('latin1'));
    }
    return out;
  }

  private locManyStmt: Database.Statement<Buffer[], [Buffer, string, number, number, Buffer | null]> | undefined;
  private prepareLocMany() {
    return this.db
      .prepare<Buffer[], [Buffer, string, number, number, Buffer | null]>(`SELECT c.id, p.name, c.offset, c.stored_size, c.digest FROM chunk_rows c JOIN packs p ON p.n = c.pack WHERE c.id IN (${new Array(LOCATE_BATCH).fill('?').join(',')})`)
      .raw();
  }

  /**
   * A chunk's row with its pack by number: [pack number, offset, stored size, plain size]. The
   * number names a pack only while no GC runs (GC can free a number for reuse): callers that
   * keep numbers hold a lock that excludes GC, and name them with packNameOf.
   */
  chunkRow(id: Buffer): [number, number, number, number] | undefined {
    return this.rowStmt.get(id);
  }

  packNameOf(n: number): string | undefined {
    return this.packNameStmt.get(n);
  }

  addSnapshot(id: string, h: SnapshotHeader): void {
    this.addSnapStmt.run(id, h.tenant, h.source, h.host, h.endTime, JSON.stringify(h));
  }

  /** Vault: remember the order snapshots arrived in. */
  markReceived(id: string): void {
    this.db.prepare(`INSERT OR IGNORE INTO received (snapshot, at, seq) VALUES (?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM received))`).run(id, new Date().toISOString());
  }

  receivedAt(id: string): { at: string; seq: number } | undefined {
    return this.db.prepare<[string], { at: string; seq: number }>('SELECT at, seq FROM received WHERE snapshot = ?').get(id);
  }

  /**
   * Vault HAS: which of `ids` are present, and lease those, in one write transaction, so a GC
   * sweep (also one transaction) either removed a chunk before (answer: missing) or sees the lease.
   */
  hasAndLease(session: string, ids: Buffer, idBytes: number, expires: number): Buffer {
    const n = ids.length / idBytes;
    const bitmap = Buffer.alloc(Math.ceil(n / 8));
    const st = this.db.prepare('INSERT OR REPLACE INTO leases (session, chunk, expires) VALUES (?, ?, ?)');
    this.db
      .transaction(() => {
        for (let i = 0; i < n; i++) {
          const id = ids.subarray(i * idBytes, (i + 1) * idBytes);
          if (this.hasStmt.get(id) !== undefined) {
            bitmap[i >> 3]! |= 1 << (i & 7);
            st.run(session, id, expires);
          }
        }
      })
      .immediate();
    return bitmap;
  }

  /** Vault: a committed snapshot is recorded and its session's leases end, atomically. */
  commitSnapshot(session: string, id: string, h: SnapshotHeader): void {
    this.db
      .transaction(() => {
        this.addSnapshot(id, h);
        this.markReceived(id);
        this.dropLeases(session);
      })
      .immediate();
  }

  /**
   * Vault: a session is about to write this pack; GC leaves the object alone while the lease
   * lives. A pack of the same name (same bytes: names are content hashes) that a GC condemned
   * but has not started deleting is taken back, and so is one claimed by a GC that is no longer
   * running; false while a running GC's delete of it may be in flight (a create now could be
   * found present and then deleted): try again shortly.
   */
  leasePack(pack: string, session: string, expires: number): boolean {
    return this.db
      .transaction(() => {
        const c = this.db.prepare<[string], { claimed: number | null }>('SELECT claimed FROM condemned_packs WHERE pack = ?').get(pack);
        if (c && c.claimed !== null && c.claimed > Date.now() - CONDEMNED_CLAIM_MS && this.condemned.gcRunning()) return false;
        if (c) this.db.prepare('DELETE FROM condemned_packs WHERE pack = ?').run(pack);
        this.db.prepare('INSERT OR REPLACE INTO pack_leases (pack, session, expires) VALUES (?, ?, ?)').run(pack, session, expires);
        return true;
      })
      .immediate();
  }

  /** Vault: record a written pack's chunks, lease them to the session, end the pack's lease; one transaction. */
  addSessionPack(session: string, pack: string, rows: ReadonlyArray<ChunkRow>, expires: number, bytes: number): void {
    const lease = this.db.prepare('INSERT OR REPLACE INTO leases (session, chunk, expires) VALUES (?, ?, ?)');
    const day = new Date().toISOString().slice(0, 10);
    this.db
      .transaction(() => {
        this.insertRows(rows);
        for (const r of rows) lease.run(session, r.id, expires);
        this.addBases(rows);
        this.db.prepare('DELETE FROM pack_leases WHERE pack = ?').run(pack);
        this.db
          .prepare('INSERT INTO intake (day, bytes, chunks) VALUES (?, ?, ?) ON CONFLICT (day) DO UPDATE SET bytes = bytes + excluded.bytes, chunks = chunks + excluded.chunks')
          .run(day, bytes, rows.length);
      })
      .immediate();
  }

  dropPackLeases(session: string): void {
    this.db.prepare('DELETE FROM pack_leases WHERE session = ?').run(session);
  }

  /** New chunk bytes the vault stored on days starting with `prefix` ("2026-11"). */
  intake(prefix: string): { bytes: number; chunks: number } {
    const r = this.db.prepare<[string], { b: number | null; c: number | null }>('SELECT sum(bytes) AS b, sum(chunks) AS c FROM intake WHERE day LIKE ?').get(`${prefix}%`)!;
    return { bytes: r.b ?? 0, chunks: r.c ?? 0 };
  }

  /** Vault: add a session's protocol bytes not yet recorded to the day's (one statement, safe for concurrent sessions). */
  addTransferBytes(day: string, b: TransferBytes): void {
    this.db
      .prepare(
        `INSERT INTO transfer_bytes (day, wire_in, wire_out, restore_out) VALUES (?, ?, ?, ?)
         ON CONFLICT (day) DO UPDATE SET wire_in = wire_in + excluded.wire_in, wire_out = wire_out + excluded.wire_out, restore_out = restore_out + excluded.restore_out`,
      )
      .run(day, b.wireIn, b.wireOut, b.restoreOut);
  }

  /** Protocol bytes the vault exchanged with the tenant's clients on days starting with `prefix` ("2026-11"). */
  transferBytes(prefix: string): TransferBytes {
    const r = this.db
      .prepare<[string], { i: number | null; o: number | null; r: number | null }>('SELECT sum(wire_in) AS i, sum(wire_out) AS o, sum(restore_out) AS r FROM transfer_bytes WHERE day LIKE ?')
      .get(`${prefix}%`)!;
    return { wireIn: r.i ?? 0, wireOut: r.o ?? 0, restoreOut: r.r ?? 0 };
  }

  /**
   * Take a lock row; `conflicts` are the kinds that must not be held at the same time. Rows of
   * processes on this host that no longer exist (killed) are removed first.
   */
  acquireLock(kind: string, conflicts: readonly string[]): { release: () => void } {
    const host = hostname();
    const id = `${kind}-${host}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
    this.db
      .transaction(() => {
        for (const r of this.db.prepare<[], { id: string; pid: number; host: string }>('SELECT id, pid, host FROM locks').all()) {
          if (r.host === host && !processAlive(r.pid)) this.db.prepare('DELETE FROM locks WHERE id = ?').run(r.id);
        }
        const holders = this.db.prepare<[], { kind: string; pid: number; host: string; started: string }>('SELECT kind, pid, host, started FROM locks').all();
        const clash = holders.find((h) => conflicts.includes(h.kind));
        if (clash) {
          throw new KuraError('E_LOCKED', `the repository ${path.dirname(this.path)} is busy: ${clash.kind} (pid ${clash.pid} on ${clash.host}, since ${clash.started}) is running; try again when it has finished`, { holder: clash });
        }
        this.db.prepare('INSERT INTO locks (id, kind, pid, host, started) VALUES (?, ?, ?, ?, ?)').run(id, kind, process.pid, host, new Date().toISOString());
      })
      .immediate();
    return {
      release: () => {
        try {
          this.db.prepare('DELETE FROM locks WHERE id = ?').run(id);
        } catch {
          // the process is ending anyway; a stale row is removed by the next taker
        }
      },
    };
  }

  dropLeases(session: string): void {
    this.db.prepare('DELETE FROM leases WHERE session = ?').run(session);
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

  snapshotHeader(id: string): SnapshotHeader | undefined {
    const r = this.db.prepare<[string], { header: string }>('SELECT header FROM snapshots WHERE id = ?').get(id);
    return r ? (JSON.parse(r.header) as SnapshotHeader) : undefined;
  }

  snapshotIds(): Set<string> {
    return new Set(this.db.prepare<[], { id: string }>('SELECT id FROM snapshots').all().map((r) => r.id));
  }

  counts(): { chunks: number; storedBytes: number; snapshots: number } {
    const c = this.db.prepare<[], { n: number; s: number | null }>('SELECT count(*) AS n, sum(stored_size) AS s FROM chunks').get()!;
    const s = this.db.prepare<[], { n: number }>('SELECT count(*) AS n FROM snapshots').get()!;
    return { chunks: c.n, storedBytes: c.s ?? 0, snapshots: s.n };
  }

  *chunkRows(): Generator<{ id: Buffer; pack: string; offset: number; stored_size: number; digest: Buffer | null }> {
    yield* this.db.prepare<[], { id: Buffer; pack: string; offset: number; stored_size: number; digest: Buffer | null }>('SELECT id, pack, offset, stored_size, digest FROM chunks').iterate();
  }

  clear(): void {
    this.db.exec('DELETE FROM chunk_rows; DELETE FROM pack_bases; DELETE FROM packs; DELETE FROM snapshots;');
  }

  close(): void {
    this.db.close();
  }
}
