import type Database from 'better-sqlite3';
import { CHUNK_ID_BYTES } from '../crypto/blob.js';
import type { Catalogue, ChunkRow } from './catalogue.js';
import type { SnapshotHeader } from './snapshot.js';

/** Vault: protocol bytes of a tenant's sessions (every byte read and written on the channel; of those written, the restore reads' answers). */
export interface TransferBytes {
  wireIn: number;
  wireOut: number;
  restoreOut: number;
}

/**
 * How long a GC's claim on a condemned pack keeps sessions from writing a pack of that name:
 * far longer than one DELETE with its retries takes. A claim older than this was left by a
 * killed GC; the pack may be taken back (its object is either gone or holds the same bytes).
 */
export const CONDEMNED_CLAIM_MS = 10 * 60_000;

/**
 * What a vault's sessions record in a tenant's catalogue beside its chunks and snapshots: the
 * chunks and packs a live session holds (leases GC honours), the order snapshots arrived in, and
 * the bytes taken in and moved per day (kura vault usage).
 */
export class VaultLedger {
  private readonly db: Database.Database;

  constructor(private readonly owner: Catalogue) {
    this.db = owner.db;
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
    this.db
      .transaction(() => {
        const held = this.owner.presentIn(ids, idBytes);
        const present: Buffer[] = [];
        for (let i = 0; i < n; i++) {
          if (!held[i]) continue;
          bitmap[i >> 3]! |= 1 << (i & 7);
          present.push(ids.subarray(i * idBytes, (i + 1) * idBytes));
        }
        this.lease(session, present, expires);
      })
      .immediate();
    return bitmap;
  }

  /** Vault: a committed snapshot is recorded and its session's leases end, atomically. */
  commitSnapshot(session: string, id: string, h: SnapshotHeader): void {
    this.db
      .transaction(() => {
        this.owner.addSnapshot(id, h);
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
        if (c && c.claimed !== null && c.claimed > Date.now() - CONDEMNED_CLAIM_MS && this.owner.condemned.gcRunning()) return false;
        if (c) this.db.prepare('DELETE FROM condemned_packs WHERE pack = ?').run(pack);
        this.db.prepare('INSERT OR REPLACE INTO pack_leases (pack, session, expires) VALUES (?, ?, ?)').run(pack, session, expires);
        return true;
      })
      .immediate();
  }

  /** Vault: record a written pack's chunks, lease them to the session, end the pack's lease; one transaction. */
  addSessionPack(session: string, pack: string, rows: ReadonlyArray<ChunkRow>, expires: number, bytes: number): void {
    const day = new Date().toISOString().slice(0, 10);
    this.db
      .transaction(() => {
        this.owner.insertRows(rows);
        this.lease(
          session,
          rows.map((r) => r.id),
          expires,
        );
        this.owner.bases.addRows(rows);
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


  dropLeases(session: string): void {
    this.db.prepare('DELETE FROM lease_sets WHERE session = ?').run(session);
  }

  /** Lease `ids` to the session until `expires` (ms): one set, written inside the caller's transaction. */
  private lease(session: string, ids: readonly Buffer[], expires: number): void {
    if (ids.length > 0) this.db.prepare('INSERT INTO lease_sets (session, expires, ids) VALUES (?, ?, ?)').run(session, expires, Buffer.concat(ids));
  }

  /**
   * GC: every chunk a lease live at `now` holds, into `into` (a table with one column, id). Read
   * inside the GC's sweep transaction, so a session's HAS (one write transaction) either came
   * before and is seen here, or comes after and finds the chunks gone.
   */
  copyLeased(now: number, into: string): number {
    const add = this.db.prepare(`INSERT OR IGNORE INTO ${into} (id) VALUES (?)`);
    let n = 0;
    for (const ids of this.db.prepare<[number], Buffer>('SELECT ids FROM lease_sets WHERE expires > ?').pluck().all(now)) {
      for (let at = 0; at + CHUNK_ID_BYTES <= ids.length; at += CHUNK_ID_BYTES) n += add.run(ids.subarray(at, at + CHUNK_ID_BYTES)).changes;
    }
    return n;
  }

  /** GC: forget the leases that ended before `now`. */
  dropExpiredLeases(now: number): void {
    this.db.prepare('DELETE FROM lease_sets WHERE expires <= ?').run(now);
  }
}
