/** The catalogue's chunk tables (packs numbered once, a view by pack name) and the delta bases per pack. */
/**
 * Schema 3: for every pack holding deltas, the base chunks they need (read from the blobs'
 * plaintext headers when the pack is stored). One row per pack: `bases` the distinct bases'
 * 8-byte ID prefixes, `deltas` one record per delta (u32 offset of the delta in the pack, u8 k,
 * k × u16 index into `bases`): a night of deltas costs the catalogue ~10 bytes per delta and 8 per
 * base. A prefix stands for every chunk whose ID starts with it (a superset only if two IDs share
 * 64 bits): GC keeps them all, the relay offers them all. The blobs name their bases in full.
 */
export const BASES_SCHEMA = `
  CREATE TABLE IF NOT EXISTS pack_bases (pack INTEGER PRIMARY KEY, bases BLOB NOT NULL, deltas BLOB NOT NULL);
`;

export const BASE_PREFIX = 8;

/** The deltas of one pack: offset → the ID prefixes of its bases, from a pack_bases row. */
export function packDeltas(row: { bases: Buffer; deltas: Buffer }): Map<number, Buffer[]> {
  const prefixes: Buffer[] = [];
  for (let o = 0; o + BASE_PREFIX <= row.bases.length; o += BASE_PREFIX) prefixes.push(row.bases.subarray(o, o + BASE_PREFIX));
  const out = new Map<number, Buffer[]>();
  const d = row.deltas;
  for (let o = 0; o + 5 <= d.length; ) {
    const offset = d.readUInt32LE(o);
    const k = d[o + 4]!;
    const bases: Buffer[] = [];
    for (let i = 0; i < k; i++) bases.push(prefixes[d.readUInt16LE(o + 5 + 2 * i)]!);
    out.set(offset, bases);
    o += 5 + 2 * k;
  }
  return out;
}

/**
 * Chunk locations, one row per stored blob. Pack names (64 hex digits) are numbered once in
 * `packs` so that a row is ~50 bytes, not ~110: the catalogue of a 4 KiB-chunk database source
 * grows by that much per new chunk every night. `chunks` is the view everything reads and
 * writes by pack name; the triggers number new packs. Schema 4 adds `digest` (16 bytes, pack
 * format 2): what the stored blob hashed to when written; null for blobs written before.
 */
export const CHUNK_VIEW = `
  CREATE VIEW IF NOT EXISTS chunks AS
    SELECT c.id AS id, p.name AS pack, c.offset AS offset, c.stored_size AS stored_size, c.plain_size AS plain_size, c.digest AS digest
    FROM chunk_rows c JOIN packs p ON p.n = c.pack;
  CREATE TRIGGER IF NOT EXISTS chunks_insert INSTEAD OF INSERT ON chunks BEGIN
    INSERT OR IGNORE INTO packs (name) VALUES (NEW.pack);
    INSERT OR IGNORE INTO chunk_rows (id, pack, offset, stored_size, plain_size, digest)
      VALUES (NEW.id, (SELECT n FROM packs WHERE name = NEW.pack), NEW.offset, NEW.stored_size, NEW.plain_size, NEW.digest);
  END;
  CREATE TRIGGER IF NOT EXISTS chunks_update INSTEAD OF UPDATE ON chunks BEGIN
    INSERT OR IGNORE INTO packs (name) VALUES (NEW.pack);
    UPDATE chunk_rows SET id = NEW.id, pack = (SELECT n FROM packs WHERE name = NEW.pack), offset = NEW.offset,
      stored_size = NEW.stored_size, plain_size = NEW.plain_size, digest = NEW.digest WHERE id = OLD.id;
  END;
  CREATE TRIGGER IF NOT EXISTS chunks_delete INSTEAD OF DELETE ON chunks BEGIN
    DELETE FROM chunk_rows WHERE id = OLD.id;
  END;
`;
export const CHUNKS_SCHEMA = `
  CREATE TABLE IF NOT EXISTS packs (n INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
  CREATE TABLE IF NOT EXISTS chunk_rows (
    id BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL, stored_size INTEGER NOT NULL,
    plain_size INTEGER NOT NULL, digest BLOB) WITHOUT ROWID;
  CREATE INDEX IF NOT EXISTS chunk_rows_by_pack ON chunk_rows (pack);
  ${CHUNK_VIEW}
`;

