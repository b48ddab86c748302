import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { KuraError } from '../errors.js';

export interface SlotHolder {
  member: string;
  tenant: string;
  since: string;
  expires: number;
}

export interface SlotAnswer {
  granted: boolean;
  token?: string;
  /** who holds the group's slots now */
  holders: SlotHolder[];
  /** when a slot frees at the latest (a holder's lease runs out), in seconds */
  retryAfterSeconds?: number;
}

/**
 * The backup-window coordinator's slots (a vault or on-site backup server every member can
 * reach): at most `maxConcurrent` exports of a group at once, each a lease with a TTL that its
 * agent renews while the export runs and releases at its end; an agent that dies leaves a
 * lease that simply expires. Kept in SQLite beside the tenants (`slots.db` in vault.root), so
 * `vault serve` and OpenSSH's `vault stdio` sessions share it; expiry is judged by this host's
 * clock alone, so agents' clocks do not matter.
 */
export class SlotTable {
  private readonly db: Database.Database;

  constructor(root: string) {
    try {
      this.db = new Database(path.join(root, 'slots.db'));
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('busy_timeout = 10000');
      this.db.exec(`CREATE TABLE IF NOT EXISTS slots (token TEXT PRIMARY KEY, grp TEXT NOT NULL, member TEXT NOT NULL, tenant TEXT NOT NULL, since TEXT NOT NULL, expires INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS slots_by_group ON slots (grp, expires);`);
    } catch (e) {
      throw new KuraError('E_IO', `cannot open the slot table in ${root}: ${(e as Error).message}`, undefined, { cause: e });
    }
  }

  private holders(group: string, now: number): SlotHolder[] {
    return this.db.prepare<[string, number], SlotHolder>('SELECT member, tenant, since, expires FROM slots WHERE grp = ? AND expires > ? ORDER BY since').all(group, now);
  }

  /** A slot for `member` if fewer than `max` live leases of the group exist (a member that holds one gets it again). */
  acquire(group: string, member: string, tenant: string, max: number, ttlMs: number, now = Date.now()): SlotAnswer {
    return this.db
      .transaction((): SlotAnswer => {
        this.db.prepare('DELETE FROM slots WHERE grp = ? AND expires <= ?').run(group, now);
        const mine = this.db.prepare<[string, string], { token: string }>('SELECT token FROM slots WHERE grp = ? AND member = ?').get(group, member);
        if (mine) {
          this.db.prepare('UPDATE slots SET expires = ? WHERE token = ?').run(now + ttlMs, mine.token);
          return { granted: true, token: mine.token, holders: this.holders(group, now) };
        }
        const live = this.holders(group, now);
        if (live.length >= max) {
          const soonest = Math.min(...live.map((h) => h.expires));
          return { granted: false, holders: live, retryAfterSeconds: Math.max(1, Math.ceil((soonest - now) / 1000)) };
        }
        const token = randomBytes(12).toString('hex');
        this.db.prepare('INSERT INTO slots (token, grp, member, tenant, since, expires) VALUES (?, ?, ?, ?, ?, ?)').run(token, group, member, tenant, new Date(now).toISOString(), now + ttlMs);
        return { granted: true, token, holders: this.holders(group, now) };
      })
      .immediate();
  }

  /** Extend a live lease; false when it has expired (another member may have its slot by now). */
  renew(token: string, tenant: string, ttlMs: number, now = Date.now()): boolean {
    return this.db.prepare('UPDATE slots SET expires = ? WHERE token = ? AND tenant = ? AND expires > ?').run(now + ttlMs, token, tenant, now).changes === 1;
  }

  release(token: string, tenant: string): boolean {
    return this.db.prepare('DELETE FROM slots WHERE token = ? AND tenant = ?').run(token, tenant).changes === 1;
  }

  /** Every live lease, for status. */
  all(now = Date.now()): Array<SlotHolder & { group: string }> {
    return this.db.prepare<[number], SlotHolder & { group: string }>('SELECT grp AS "group", member, tenant, since, expires FROM slots WHERE expires > ? ORDER BY grp, since').all(now);
  }

  close(): void {
    this.db.close();
  }
}
