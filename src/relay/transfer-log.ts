import type Database from 'better-sqlite3';
import type { Catalogue } from '../repository/catalogue.js';
import type { Endpoint } from './connection.js';

/**
 * Routing records of a repository, beside its queue (same SQLite database, tables of their own):
 * the send and receive log (one line per snapshot sent by this side or received by it, with the
 * peer's clock offset measured at HELLO), the last clock offset of each peer, and the routing
 * table entries vaults answered with MOVED. Like the queue they cannot be rebuilt from the store.
 */
export interface TransferLine {
  direction: 'send' | 'receive';
  snapshot: string;
  tenant: string;
  source: string;
  /** the route (send), or the peer that sent it (receive: its SSH user and address) */
  hop: string;
  /** the vault's or the relay's session ID: a send and its receipt carry the same one */
  session: string;
  /** chunk bytes that crossed the line (what the far side lacked) */
  bytes: number;
  /** chunks that crossed the line */
  chunks: number;
  start: string;
  end: string;
  /** the peer's clock minus this side's, measured at HELLO (null: the peer did not say) */
  peerOffsetMs: number | null;
}

export interface PeerClock {
  hop: string;
  peer: string;
  offsetMs: number;
  rttMs: number;
  at: string;
}

export interface MovedEntry {
  route: string;
  tenant: string;
  endpoints: Endpoint[];
  /** the host key (SHA256 fingerprint) that signed the MOVED answer */
  signedBy: string;
  issued: string;
  at: string;
}

const made = new WeakMap<Database.Database, RoutingRecords>();

export function routingRecords(cat: Catalogue): RoutingRecords {
  let r = made.get(cat.db);
  if (!r) made.set(cat.db, (r = new RoutingRecords(cat.db)));
  return r;
}

export class RoutingRecords {
  constructor(private readonly db: Database.Database) {
    db.exec(`
      CREATE TABLE IF NOT EXISTS transfer_log (
        id INTEGER PRIMARY KEY, direction TEXT NOT NULL, snapshot TEXT NOT NULL, tenant TEXT NOT NULL,
        source TEXT NOT NULL, hop TEXT NOT NULL, session TEXT NOT NULL, bytes INTEGER NOT NULL,
        chunks INTEGER NOT NULL, start TEXT NOT NULL, "end" TEXT NOT NULL, peer_offset_ms INTEGER);
      CREATE INDEX IF NOT EXISTS transfer_log_by_end ON transfer_log ("end");
      CREATE TABLE IF NOT EXISTS peer_clock (hop TEXT PRIMARY KEY, peer TEXT NOT NULL, offset_ms INTEGER NOT NULL, rtt_ms INTEGER NOT NULL, at TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS moved_routes (
        route TEXT NOT NULL, tenant TEXT NOT NULL, endpoints TEXT NOT NULL, signed_by TEXT NOT NULL,
        issued TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (route, tenant));
    `);
  }

  log(l: TransferLine): void {
    this.db
      .prepare(`INSERT INTO transfer_log (direction, snapshot, tenant, source, hop, session, bytes, chunks, start, "end", peer_offset_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
      .run(l.direction, l.snapshot, l.tenant, l.source, l.hop, l.session, l.bytes, l.chunks, l.start, l.end, l.peerOffsetMs);
  }

  lines(f: { hop?: string | undefined; since?: string | undefined; direction?: 'send' | 'receive' } = {}): TransferLine[] {
    const where: string[] = [];
    const args: string[] = [];
    if (f.hop) (where.push('hop = ?'), args.push(f.hop));
    if (f.since) (where.push('"end" >= ?'), args.push(f.since));
    if (f.direction) (where.push('direction = ?'), args.push(f.direction));
    return this.db
      .prepare<string[], { direction: 'send' | 'receive'; snapshot: string; tenant: string; source: string; hop: string; session: string; bytes: number; chunks: number; start: string; end: string; peer_offset_ms: number | null }>(
        `SELECT * FROM transfer_log ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY "end", id`,
      )
      .all(...args)
      .map((r) => ({ direction: r.direction, snapshot: r.snapshot, tenant: r.tenant, source: r.source, hop: r.hop, session: r.session, bytes: r.bytes, chunks: r.chunks, start: r.start, end: r.end, peerOffsetMs: r.peer_offset_ms }));
  }

  setClock(c: PeerClock): void {
    this.db
      .prepare(`INSERT INTO peer_clock (hop, peer, offset_ms, rtt_ms, at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (hop) DO UPDATE SET peer = excluded.peer, offset_ms = excluded.offset_ms, rtt_ms = excluded.rtt_ms, at = excluded.at`)
      .run(c.hop, c.peer, c.offsetMs, c.rttMs, c.at);
  }

  clocks(): PeerClock[] {
    return this.db
      .prepare<[], { hop: string; peer: string; offset_ms: number; rtt_ms: number; at: string }>('SELECT * FROM peer_clock ORDER BY hop')
      .all()
      .map((r) => ({ hop: r.hop, peer: r.peer, offsetMs: r.offset_ms, rttMs: r.rtt_ms, at: r.at }));
  }

  setMoved(m: MovedEntry): void {
    this.db
      .prepare(`INSERT INTO moved_routes (route, tenant, endpoints, signed_by, issued, at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (route, tenant) DO UPDATE SET endpoints = excluded.endpoints, signed_by = excluded.signed_by, issued = excluded.issued, at = excluded.at`)
      .run(m.route, m.tenant, JSON.stringify(m.endpoints), m.signedBy, m.issued, m.at);
  }

  moved(route?: string, tenant?: string): MovedEntry[] {
    return this.db
      .prepare<[], { route: string; tenant: string; endpoints: string; signed_by: string; issued: string; at: string }>('SELECT * FROM moved_routes ORDER BY route, tenant')
      .all()
      .filter((r) => (route === undefined || r.route === route) && (tenant === undefined || r.tenant === tenant))
      .map((r) => ({ route: r.route, tenant: r.tenant, endpoints: JSON.parse(r.endpoints) as Endpoint[], signedBy: r.signed_by, issued: r.issued, at: r.at }));
  }
}
