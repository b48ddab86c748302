import Database from 'better-sqlite3';
import { hostname } from 'node:os';
import path from 'node:path';
import { KuraError } from '../errors.js';
import { prepareSchema } from './catalogue-open.js';
import { CondemnedPacks, processAlive } from './condemned.js';
import { hexArray, inBatches, inHexRuns } from './id-batches.js';
import { OpsState } from './ops-state.js';
import { PackBases } from './pack-bases.js';
import { QuarantineState } from './quarantine.js';
import type { SnapshotHeader } from './snapshot.js';
import { VaultLedger } from './vault-ledger.js';
export type { JobRow, RouteStateRow } from './ops-state.js';

export interface SnapshotRow {
  id: string;
  header: SnapshotHeader;
}

/** a lookup's row: the ID's place in the array asked, its pack, offset, stored size and digest (nulls: not held) */
type LocManyRow = [number, string | null, number | null, number | null, Buffer | null];
type LocManyStatement = Database.Statement<[string], LocManyRow>;

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

export { SCHEMA_VERSION } from './catalogue-open.js';
export { BASE_PREFIX, packDeltas } from './catalogue-schema.js';
export type { TransferBytes } from './vault-ledger.js';

/**
 * The SQLite catalogue (WAL): which chunks and snapshots the store holds. It is a cache of the
 * store, never the only copy of a fact: `kura repo rebuild-index` recreates it from the store.
 * Rows are added only after the store write they describe is durable.
 * Its tables and migrations are in catalogue-open.ts; beside the chunk and snapshot rows here,
 * the sub-objects below keep one concern each.
 */
export class Catalogue {
  readonly db: Database.Database;
  /** the relay queue, route states and controls, job records and heartbeats */
  readonly ops: OpsState;
  /** damaged blobs taken out of the index, and the snapshots they damage */
  readonly quarantine: QuarantineState;
  /** packs GC proved unused and deletes outside its transaction */
  readonly condemned: CondemnedPacks;
  /** the base chunks each pack's deltas need */
  readonly bases: PackBases;
  /** vault: session leases, arrival order, bytes taken in and moved per day */
  readonly vault: VaultLedger;
  private readonly hasStmt: Database.Statement<[Buffer], { x: number }>;
  private readonly presentStmt: Database.Statement<[string], number>;
  private readonly locStmt: Database.Statement<[Buffer], ChunkLocation>;
  private readonly addSnapStmt: Database.Statement<[string, string, string, string, string, string]>;
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
    prepareSchema(this.db, path);
    this.hasStmt = this.db.prepare<[Buffer], { x: number }>('SELECT 1 AS x FROM chunk_rows WHERE id = ?');
    this.presentStmt = this.db.prepare<[string], number>('SELECT j.key FROM json_each(?) j JOIN chunk_rows c ON c.id = unhex(j.value)').pluck();
    this.locStmt = this.db.prepare<[Buffer], ChunkLocation>('SELECT pack, offset, stored_size AS length, digest FROM chunks WHERE id = ?');
    // a row for every ID (the LEFT JOINs), with its place in the array (the key): placed by it, not by the row order
    const locMany = (digest: string): LocManyStatement =>
      this.db.prepare<[string], LocManyRow>(`SELECT j.key, p.name, c.offset, c.stored_size, ${digest} FROM json_each(?) j LEFT JOIN chunk_rows c ON c.id = unhex(j.value) LEFT JOIN packs p ON p.n = c.pack`).raw();
    this.locManyStmt = locMany('c.digest');
    this.locManyBareStmt = locMany('NULL');
    this.rowStmt = this.db.prepare<[Buffer], [number, number, number, number]>('SELECT pack, offset, stored_size, plain_size FROM chunk_rows WHERE id = ?').raw();
    this.packNameStmt = this.db.prepare<[number], string>('SELECT name FROM packs WHERE n = ?').pluck();
    this.addPackStmt = this.db.prepare<[string]>('INSERT OR IGNORE INTO packs (name) VALUES (?)');
    this.packNumberStmt = this.db.prepare<[string], number>('SELECT n FROM packs WHERE name = ?').pluck();
    this.addRowStmt = this.db.prepare('INSERT OR IGNORE INTO chunk_rows (id, pack, offset, stored_size, plain_size, digest) VALUES (?, ?, ?, ?, ?, ?)');
    this.replaceRowStmt = this.db.prepare('INSERT OR REPLACE INTO chunk_rows (id, pack, offset, stored_size, plain_size, digest) VALUES (?, ?, ?, ?, ?, ?)');
    this.ops = new OpsState(this.db);
    this.quarantine = new QuarantineState(this.db);
    this.condemned = new CondemnedPacks(this.db);
    this.bases = new PackBases(this.db);
    this.vault = new VaultLedger(this);
    this.addSnapStmt = this.db.prepare('INSERT OR IGNORE INTO snapshots (id, tenant, source, host, end_time, header) VALUES (?, ?, ?, ?, ?, ?)');
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

  /**
   * Which of `ids` are held, in the order asked, a few statements for all (id-batches.ts): the
   * vault asks this of every chunk of every snapshot a relay sends (HAS, WANT, the batches it
   * stores, the check before a commit).
   */
  present(ids: readonly Buffer[]): boolean[] {
    const out = new Array<boolean>(ids.length).fill(false);
    inBatches(ids, (part, at) => {
      for (const key of this.presentStmt.all(hexArray(part))) out[at + key] = true;
    });
    return out;
  }

  /** `present` of IDs side by side in one buffer (`bytes` each, as a HAS asks them): hex-encoded at once, no Buffer per ID. */
  presentIn(ids: Buffer, bytes: number): boolean[] {
    const out = new Array<boolean>(Math.floor(ids.length / bytes)).fill(false);
    inHexRuns(ids, bytes, (json, at) => {
      for (const key of this.presentStmt.all(json)) out[at + key] = true;
    });
    return out;
  }

  addChunks(rows: ReadonlyArray<ChunkRow>): void {
    const tx = this.db.transaction(() => {
      this.insertRows(rows);
      this.bases.addRows(rows);
    });
    tx();
  }

  /**
   * Rows straight into chunk_rows with their pack's number, looked up once a pack (through the
   * `chunks` view's trigger it was looked up again for every row: 13 us a row, now 4 us). Call
   * inside a transaction.
   */
  insertRows(rows: ReadonlyArray<ChunkRow>): void {
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

  location(id: Buffer): ChunkLocation | undefined {
    return this.locStmt.get(id);
  }

  /**
   * The locations of many chunks, in the order asked (undefined for one not held), by one
   * statement: the IDs go in as one JSON array of hex strings and each row comes back with its
   * place in it, so no ID is bound or returned one by one. A restore looks up every chunk and every
   * delta's base: 132 000 lookups of a 4 KiB-chunk night took 1.3 s of its main thread with up
   * to 500 IDs bound a statement (small batches, a segment's bases, fell to statements of 64, 16,
   * 4 and 1), each row returning its ID to be matched by a map. Without `digests` (a reader that
   * opens the blobs, whose tags and IDs verify them) the recorded digests are not read: each cost a
   * Buffer, a fifth of a lookup.
   */
  locations(ids: readonly Buffer[], digests = true): Array<ChunkLocation | undefined> {
    const out = new Array<ChunkLocation | undefined>(ids.length).fill(undefined);
    const stmt = digests ? this.locManyStmt : this.locManyBareStmt;
    inBatches(ids, (part, at) => {
      for (const [key, pack, offset, length, digest] of stmt.all(hexArray(part))) if (pack !== null) out[at + key] = { pack, offset: offset!, length: length!, digest };
    });
    return out;
  }

  private readonly locManyStmt: LocManyStatement;
  private readonly locManyBareStmt: LocManyStatement;

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
