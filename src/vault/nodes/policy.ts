import { createHash } from 'node:crypto';

/**
 * Vault nodes sharing one store: the decisions about tenant leases and placement, as pure
 * functions of what was read from the store (no I/O, no clock read here).
 *
 * The invariant: a lease is judged expired only from the store's own clocks — the lease
 * object's Last-Modified against the Date of the response that read it, both stamped by the
 * store — never from the node that reads it, whose clock may jump (faketime, a broken NTP). The
 * holder, for its part, trusts its lease only until its last successful renewal was *sent* plus
 * the TTL on its own monotonic clock: the store stamped that renewal later than it was sent, so
 * nobody can judge the lease expired before the holder has stopped trusting it.
 */

/** The lease object's content (JSON in the bucket). `node` null: released by `lastHolder`. */
export interface LeaseRecord {
  tenant: string;
  node: string | null;
  /** renewals and takeovers so far: every write adds one */
  counter: number;
  ttlMs: number;
  /** who held it last (a released lease names the node that let it go) */
  lastHolder: string | null;
  /** the holder's wall clock at the write: for people only, never for decisions */
  writtenAt: string;
}

/** A lease as read: its record, its ETag and the store's two timestamps. */
export interface LeaseObservation {
  record: LeaseRecord;
  etag: string;
  /** the store's Last-Modified of the object (second resolution on S3) */
  lastModifiedMs: number;
  /** the store's Date header on the response that read it (null: the store sent none) */
  storeNowMs: number | null;
}

/** The store's timestamps have a second's resolution: a lease counts as expired one second late. */
export const STORE_CLOCK_RESOLUTION_MS = 1000;

export type LeaseVerdict =
  | { kind: 'absent' }
  | { kind: 'mine'; ageMs: number | null }
  | { kind: 'released'; lastHolder: string | null }
  | { kind: 'live'; holder: string; ageMs: number | null }
  | { kind: 'expired'; holder: string; ageMs: number };

/**
 * What a lease read from the store means to node `self`. `seen` is what this observer read
 * before (ETag, and its own monotonic time of that first read): without a Date from the store,
 * a lease whose ETag stayed the same for a full TTL plus the resolution on the observer's
 * monotonic clock is expired; with one, the store's clocks alone decide.
 */
export function judgeLease(obs: LeaseObservation | null, self: string, seen?: { etag: string; sinceMono: number } | null, nowMono?: number): LeaseVerdict {
  if (!obs) return { kind: 'absent' };
  const r = obs.record;
  const storeAge = obs.storeNowMs === null ? null : Math.max(0, obs.storeNowMs - obs.lastModifiedMs);
  if (r.node === null) return { kind: 'released', lastHolder: r.lastHolder };
  if (r.node === self) return { kind: 'mine', ageMs: storeAge };
  const limit = r.ttlMs + STORE_CLOCK_RESOLUTION_MS;
  if (storeAge !== null) return storeAge >= limit ? { kind: 'expired', holder: r.node, ageMs: storeAge } : { kind: 'live', holder: r.node, ageMs: storeAge };
  // no Date from the store: the same ETag observed unchanged for the whole TTL
  if (seen && nowMono !== undefined && seen.etag === obs.etag && nowMono - seen.sinceMono >= limit) return { kind: 'expired', holder: r.node, ageMs: nowMono - seen.sinceMono };
  return { kind: 'live', holder: r.node, ageMs: null };
}

/** How often a holder renews: three tries inside a TTL. */
export function renewEvery(ttlMs: number): number {
  return Math.max(200, Math.floor(ttlMs / 3));
}

/**
 * Whether the holder may still act on its lease at monotonic time `nowMono`: its last renewal
 * that succeeded was sent at `sentMono`; `marginMs` is kept in hand for the act itself
 * (deletes keep a quarter of the TTL).
 */
export function leaseTrusted(sentMono: number | null, ttlMs: number, nowMono: number, marginMs: number): boolean {
  return sentMono !== null && nowMono < sentMono + ttlMs - marginMs;
}

/** Whether taking the lease must rebuild the tenant's catalogue first: someone else may have written since this node last did. */
export function takeoverNeedsRebuild(v: LeaseVerdict, self: string): boolean {
  if (v.kind === 'absent' || v.kind === 'mine') return false;
  if (v.kind === 'released') return v.lastHolder !== self;
  return true;
}

/**
 * Rendezvous (highest random weight) order of `nodes` for `tenant`: each (tenant, node) pair
 * gets a score from SHA-256, highest first (ties: the node id). Deterministic on every node and
 * relay; removing a node moves only its own tenants.
 */
export function placementOrder(tenant: string, nodes: readonly string[]): string[] {
  const score = (n: string) => createHash('sha256').update(tenant).update('\0').update(n).digest().readBigUInt64BE(0);
  return [...new Set(nodes)].map((n) => ({ n, s: score(n) })).sort((a, b) => (a.s === b.s ? (a.n < b.n ? -1 : 1) : a.s > b.s ? -1 : 1)).map((x) => x.n);
}

/**
 * The order a relay tries a route's endpoints in for `tenant`: when every endpoint names its
 * vault node, the tenant's placement order (its likely holder first, so a session is usually
 * not refused); otherwise the route's own order (failover as configured).
 */
export function endpointOrder<E extends { node?: string | undefined }>(tenant: string, endpoints: readonly E[]): E[] {
  if (endpoints.length < 2 || !endpoints.every((e) => e.node)) return [...endpoints];
  const rank = new Map(placementOrder(tenant, endpoints.map((e) => e.node!)).map((n, i) => [n, i]));
  return [...endpoints].sort((a, b) => rank.get(a.node!)! - rank.get(b.node!)!);
}

/**
 * Whether node `self` should take a tenant that no live node holds, now: only the first of the
 * live nodes in the tenant's placement order does (a node that came back takes nothing live,
 * and two nodes never race for a free tenant on purpose; the conditional write settles it when
 * they do).
 */
export function shouldTake(tenant: string, self: string, liveNodes: readonly string[]): boolean {
  return placementOrder(tenant, [...liveNodes, self])[0] === self;
}

/** A node's record in the store (nodes/members/<id>): renewed like a lease; its age says whether it is alive. */
export interface NodeRecord {
  node: string;
  listen: string;
  ttlMs: number;
  tenants: string[];
  sessions: number;
  startedAt: string;
  writtenAt: string;
  counter: number;
}

/** A node record is live when the store last saw it written less than its TTL (plus the resolution) ago. */
export function nodeLive(rec: { ttlMs: number }, lastModifiedMs: number, storeNowMs: number | null): boolean {
  if (storeNowMs === null) return true;
  return storeNowMs - lastModifiedMs < rec.ttlMs + STORE_CLOCK_RESOLUTION_MS;
}
