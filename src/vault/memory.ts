import { KuraError } from '../errors.js';

/** vault.limits: how many bytes sessions may keep in memory. */
export interface MemoryLimits {
  /** PUT data one session may hold before it FLUSHes */
  sessionBytes: number;
  /** bytes all sessions together may hold: frames received and not yet handled, PUT data not yet flushed, packs being written */
  totalBytes: number;
}

/** What one session holds in memory now. */
export interface Holding {
  /** frames received and not yet handled, the one being received included */
  input: number;
  /** PUT data not yet FLUSHed */
  pending: number;
  /** batches being written as packs (released when written; cannot be given back before) */
  writing: number;
}

const held = (h: Holding) => h.input + h.pending + h.writing;

/**
 * Which session gives way when all of them together hold `totalBytes` or more: the one that
 * could give back the most (input and unflushed PUT data), provided that is at least an equal
 * share of the total. A session that keeps below its share is never refused: a relay flushing
 * every few MiB goes on while a session sitting on tens of MiB without FLUSH is sent away. When
 * nobody holds its share the vault only stops reading (the SSH windows close) until packs being
 * written are written, so sessions waiting for room never wait for each other forever. Returns
 * the index of the session, or -1.
 */
export function whoGivesWay(holdings: ReadonlyArray<Holding>, totalBytes: number): number {
  let total = 0;
  for (const h of holdings) total += held(h);
  if (total < totalBytes || holdings.length === 0) return -1;
  const share = totalBytes / holdings.length;
  let victim = -1;
  let most = 0;
  holdings.forEach((h, i) => {
    const releasable = h.input + h.pending;
    if (releasable >= share && releasable > most) {
      most = releasable;
      victim = i;
    }
  });
  return victim;
}

/** A session as the budget sees it. */
export interface BudgetMember {
  holding(): Holding;
  /** End the session with `err` and let go of what it holds (input and unflushed PUT data). */
  refuse(err: KuraError): void;
  /** Memory was released: a session that stopped reading may read again. */
  roomAgain(): void;
}

/**
 * The vault's memory for sessions (one per process: `kura vault serve` or a `vault stdio`
 * session). Sessions report what they hold as it changes; past `totalBytes` the session holding
 * the most beyond its share is refused (E_BUSY), and sessions stop reading until there is room.
 */
export class MemoryBudget {
  private readonly members = new Set<BudgetMember>();
  private wasFull = false;
  /** the most all sessions held at once, as last computed (kura_vault_session_memory_peak_bytes) */
  peak = 0;

  constructor(readonly limits: MemoryLimits) {}

  join(m: BudgetMember): () => void {
    this.members.add(m);
    return () => {
      this.members.delete(m);
      this.released();
    };
  }

  /** An equal share of `totalBytes` among the sessions there are now. */
  share(): number {
    return this.limits.totalBytes / Math.max(1, this.members.size);
  }

  total(): number {
    let t = 0;
    for (const m of this.members) t += held(m.holding());
    if (t > this.peak) this.peak = t;
    return t;
  }

  /** Sessions open now. */
  get sessions(): number {
    return this.members.size;
  }

  /** Whether sessions should stop reading: together they hold `totalBytes` or more. */
  full(): boolean {
    return (this.wasFull = this.total() >= this.limits.totalBytes);
  }

  /** After a session took in more: refuse sessions, the one holding most beyond its share first, until the total fits. */
  enforce(): void {
    const refused = new Set<BudgetMember>();
    for (;;) {
      const members = [...this.members];
      // a refused session has let go of its input and PUT data; what it is writing still counts
      const holdings = members.map((m) => (refused.has(m) ? { input: 0, pending: 0, writing: held(m.holding()) } : m.holding()));
      if (refused.size === 0) this.peak = Math.max(this.peak, holdings.reduce((t, h) => t + held(h), 0));
      const i = whoGivesWay(holdings, this.limits.totalBytes);
      if (i < 0) {
        if (refused.size > 0) this.released();
        return;
      }
      const h = holdings[i]!;
      refused.add(members[i]!);
      members[i]!.refuse(
        new KuraError(
          'E_BUSY',
          `the vault is short of memory for sessions (together they hold more than vault.limits.totalBytes, ${this.limits.totalBytes} bytes) and this session held the most (${h.input + h.pending} bytes received and not yet flushed); try again later and FLUSH more often (a kura relay retries by itself)`,
          { totalBytes: this.limits.totalBytes, held: h.input + h.pending },
        ),
      );
    }
  }

  /** After a session let go of memory: sessions that stopped reading may go on once there is room. */
  released(): void {
    if (!this.wasFull || this.full()) return;
    for (const m of this.members) m.roomAgain();
  }
}
