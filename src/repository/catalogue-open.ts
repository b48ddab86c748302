import type Database from 'better-sqlite3';
import { KuraError } from '../errors.js';
import { BASES_SCHEMA, CHUNK_VIEW, CHUNKS_SCHEMA } from './catalogue-schema.js';

/**
 * 4: each blob's digest (migrateDigests). 5: GC deletes packs in two phases (condemned_packs),
 * which every writer must honour: a kura of schema 4 refuses the catalogue rather than write a
 * pack that a GC is deleting. 6: a vault session's leases are sets of chunks (lease_sets,
 * migrateLeases), which a GC of schema 5 would not see: it refuses the catalogue.
 */
export const SCHEMA_VERSION = 6;

/**
 * The catalogue's tables, made or brought to SCHEMA_VERSION on open: each migration runs in one
 * transaction, checks again inside it (another process may have migrated), and an open of a
 * current catalogue writes nothing. A catalogue of a newer schema is refused.
 */
export function prepareSchema(db: Database.Database, path: string): void {
  db.exec(`
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS snapshots (
      id TEXT PRIMARY KEY, tenant TEXT NOT NULL, source TEXT NOT NULL, host TEXT NOT NULL,
      end_time TEXT NOT NULL, header TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS snapshots_by_source ON snapshots (source, end_time);
    CREATE TABLE IF NOT EXISTS received (snapshot TEXT PRIMARY KEY, at TEXT NOT NULL, seq INTEGER NOT NULL);
    -- vault: chunks a live session was told are present or uploaded; GC must keep them. One row
    -- per answer or pack, its chunk IDs side by side (a row per chunk cost a catch-up in 4 KiB
    -- chunks a sixth of its time in B-tree writes)
    CREATE TABLE IF NOT EXISTS lease_sets (n INTEGER PRIMARY KEY, session TEXT NOT NULL, expires INTEGER NOT NULL, ids BLOB NOT NULL);
    CREATE INDEX IF NOT EXISTS lease_sets_by_session ON lease_sets (session);
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
  const v = db.prepare<[], { value: string }>(`SELECT value FROM meta WHERE key = 'schema'`).get();
  if (v && Number(v.value) > SCHEMA_VERSION) {
    throw new KuraError('E_REPO_FORMAT', `catalogue ${path} was written by a newer kura (schema ${v.value}); upgrade kura`);
  }
  migrateChunks(db);
  migrateDigests(db);
  if (!db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'pack_bases'`).get()) {
    db.transaction(() => {
      db.exec(BASES_SCHEMA);
      db.prepare(`UPDATE meta SET value = ? WHERE key = 'schema' AND CAST(value AS INTEGER) < ?`).run(String(SCHEMA_VERSION), SCHEMA_VERSION);
    }).immediate();
  }
  db.prepare(`INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)`).run(String(SCHEMA_VERSION));
  migrateCondemned(db);
  migrateLeases(db);
  // columns added after the first release of a table
  const cols = new Set(db.prepare<[], { name: string }>(`PRAGMA table_info(route_state)`).all().map((c) => c.name));
  if (!cols.has('paused')) db.exec('ALTER TABLE route_state ADD COLUMN paused INTEGER NOT NULL DEFAULT 0');
  if (!cols.has('retry')) db.exec('ALTER TABLE route_state ADD COLUMN retry INTEGER NOT NULL DEFAULT 0');
  const queueCols = new Set(db.prepare<[], { name: string }>(`PRAGMA table_info(queue)`).all().map((c) => c.name));
  // an entry set aside (damaged snapshot, or by hand): not sent, no longer blocking the route
  if (!queueCols.has('aside')) db.exec('ALTER TABLE queue ADD COLUMN aside TEXT; ALTER TABLE queue ADD COLUMN aside_reason TEXT;');
  const jobCols = new Set(db.prepare<[], { name: string }>(`PRAGMA table_info(jobs)`).all().map((c) => c.name));
  if (!jobCols.has('coordination')) db.exec('ALTER TABLE jobs ADD COLUMN coordination TEXT');
}

/**
 * Schema 1 kept the pack name in every chunk row: move the rows to `chunk_rows` once, in one
 * transaction (a crash leaves the old table as it was; the next open migrates again).
 */
function migrateChunks(db: Database.Database): void {
  const chunksType = () => db.prepare<[], { type: string }>(`SELECT type FROM sqlite_master WHERE name = 'chunks'`).get()?.type;
  if (chunksType() === 'view') return; // current: no write transaction for a mere open
  db
    .transaction(() => {
      const type = chunksType(); // again, inside the transaction: another process may have migrated
      if (type === 'table') {
        db.exec(`ALTER TABLE chunks RENAME TO chunks_v1; DROP INDEX IF EXISTS chunks_by_pack;`);
        db.exec(CHUNKS_SCHEMA);
        db.exec(`
          INSERT OR IGNORE INTO packs (name) SELECT DISTINCT pack FROM chunks_v1 ORDER BY pack;
          INSERT INTO chunk_rows (id, pack, offset, stored_size, plain_size)
            SELECT c.id, p.n, c.offset, c.stored_size, c.plain_size FROM chunks_v1 c JOIN packs p ON p.name = c.pack;
          DROP TABLE chunks_v1;
          UPDATE meta SET value = '${SCHEMA_VERSION}' WHERE key = 'schema' AND CAST(value AS INTEGER) < ${SCHEMA_VERSION};
        `);
      } else if (!type) db.exec(CHUNKS_SCHEMA);
    })
    .immediate();
}

/**
 * Schema 5: condemned_packs (made with the other tables above; a catalogue of schema 4 may
 * already have it, empty or not, from a kura that added it without a new version) is part of
 * the schema; only the version moves, once.
 */
function migrateCondemned(db: Database.Database): void {
  const version = () => Number(db.prepare<[], string>(`SELECT value FROM meta WHERE key = 'schema'`).pluck().get());
  if (version() >= SCHEMA_VERSION) return; // current: no write transaction for a mere open
  db
    .transaction(() => {
      db.exec('CREATE TABLE IF NOT EXISTS condemned_packs (pack TEXT PRIMARY KEY, since INTEGER NOT NULL, claimed INTEGER)');
      db.prepare(`UPDATE meta SET value = ? WHERE key = 'schema' AND CAST(value AS INTEGER) < ?`).run(String(SCHEMA_VERSION), SCHEMA_VERSION);
    })
    .immediate();
}

/**
 * Schema 6 keeps leases as sets (lease_sets): the rows of a schema-5 catalogue's leases table
 * become one set per session and expiry, and the table goes, in one transaction. A kura of
 * schema 5 opening the catalogue afterwards refuses it (migrateCondemned raised the version);
 * one that had it open already finds no leases table, so its sessions fail (their relays retry)
 * rather than hold leases a GC would not see.
 */
function migrateLeases(db: Database.Database): void {
  const old = () => db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'leases'`).get() !== undefined;
  if (!old()) return;
  db
    .transaction(() => {
      if (!old()) return;
      const sets = new Map<string, { session: string; expires: number; ids: Buffer[] }>();
      for (const r of db.prepare<[], { session: string; chunk: Buffer; expires: number }>('SELECT session, chunk, expires FROM leases').all()) {
        const k = `${r.expires} ${r.session}`;
        let set = sets.get(k);
        if (!set) sets.set(k, (set = { session: r.session, expires: r.expires, ids: [] }));
        set.ids.push(r.chunk);
      }
      const add = db.prepare('INSERT INTO lease_sets (session, expires, ids) VALUES (?, ?, ?)');
      for (const s of sets.values()) add.run(s.session, s.expires, Buffer.concat(s.ids));
      db.exec('DROP INDEX IF EXISTS leases_by_chunk; DROP TABLE leases;');
    })
    .immediate();
}

/**
 * Schema 4 records each blob's digest: the column is added (null for the blobs already
 * recorded: they were written without one) and the view that reads and writes by pack name is
 * made again with it, in one transaction.
 */
function migrateDigests(db: Database.Database): void {
  const has = () => db.prepare<[], { name: string }>(`PRAGMA table_info(chunk_rows)`).all().some((c) => c.name === 'digest');
  if (has()) return;
  db
    .transaction(() => {
      if (has()) return;
      db.exec(`
        ALTER TABLE chunk_rows ADD COLUMN digest BLOB;
        DROP VIEW IF EXISTS chunks;
        DROP TRIGGER IF EXISTS chunks_insert; DROP TRIGGER IF EXISTS chunks_update; DROP TRIGGER IF EXISTS chunks_delete;
        ${CHUNK_VIEW}
        UPDATE meta SET value = '${SCHEMA_VERSION}' WHERE key = 'schema' AND CAST(value AS INTEGER) < ${SCHEMA_VERSION};
      `);
    })
    .immediate();
}

