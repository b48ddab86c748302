import { hostname } from 'node:os';
import type Database from 'better-sqlite3';

/** Whether a process of this host is still running. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * GC's two-phase deletes (catalogue table condemned_packs): the transaction that proves a pack
 * unused condemns it; the delete is claimed, done and forgotten outside it, so an object store's
 * DELETE never runs inside a catalogue transaction and a crash in between leaves condemned packs
 * that the next GC deletes. `catalogue.condemned`.
 */
export class CondemnedPacks {
  constructor(private readonly db: Database.Database) {}

  /** Whether a GC holds this repository's gc lock (one of another host counts as running). */
  gcRunning(): boolean {
    const host = hostname();
    return this.db
      .prepare<[], { pid: number; host: string }>(`SELECT pid, host FROM locks WHERE kind = 'gc'`)
      .all()
      .some((r) => r.host !== host || processAlive(r.pid));
  }

  /**
   * GC, inside the transaction that proved `pack` unused (no chunk row, no live pack lease):
   * record it for deletion. From here no session can find its chunks present, and one about
   * to write the same pack takes it back (leasePack) before the delete is claimed.
   */
  condemn(pack: string): void {
    this.db.prepare('INSERT OR IGNORE INTO condemned_packs (pack, since, claimed) VALUES (?, ?, NULL)').run(pack, Date.now());
  }

  list(): string[] {
    return this.db.prepare<[], string>('SELECT pack FROM condemned_packs ORDER BY pack').pluck().all();
  }

  /**
   * GC: claim a condemned pack for deletion (false: taken back by a session, or in use again).
   * GCs of one repository exclude each other (the gc lock), so a claim found here was left by a
   * killed GC and is taken over.
   */
  claim(pack: string): boolean {
    return this.db
      .transaction(() => {
        const now = Date.now();
        const c = this.db.prepare<[string], { claimed: number | null }>('SELECT claimed FROM condemned_packs WHERE pack = ?').get(pack);
        if (!c) return false;
        if (this.db.prepare<[string, number], { x: number }>('SELECT 1 AS x FROM pack_leases WHERE pack = ? AND expires > ?').get(pack, now)) return false;
        if (this.db.prepare<[string], { x: number }>('SELECT 1 AS x FROM chunks WHERE pack = ? LIMIT 1').get(pack)) {
          this.db.prepare('DELETE FROM condemned_packs WHERE pack = ?').run(pack); // in use again: never delete
          return false;
        }
        this.db.prepare('UPDATE condemned_packs SET claimed = ? WHERE pack = ?').run(now, pack);
        return true;
      })
      .immediate();
  }

  /** GC: a delete that failed; the pack stays condemned for the next GC, and may be taken back meanwhile. */
  release(pack: string): void {
    this.db.prepare('UPDATE condemned_packs SET claimed = NULL WHERE pack = ?').run(pack);
  }

  /** GC: the condemned pack's object is gone. */
  forget(pack: string): void {
    this.db.prepare('DELETE FROM condemned_packs WHERE pack = ?').run(pack);
  }
}
