import { randomBytes } from 'node:crypto';
import { KuraError, isKuraError } from '../../errors.js';
import { leaseName, memberName, parseLease, parseMember, type LeaseStore } from './lease-store.js';
import { judgeLease, leaseTrusted, nodeLive, placementOrder, renewEvery, shouldTake, takeoverNeedsRebuild, type LeaseRecord, type NodeRecord } from './policy.js';

/** The monotonic clock: SIGSTOP does not stop it, a wall-clock jump does not move it. */
const mono = () => performance.now();

export interface NodeHooks {
  /** The lease is ours (term `term`): open the tenant, rebuilding its catalogue from the store first when `rebuild`. */
  takeOver(tenant: string, rebuild: boolean, term: number): Promise<void>;
  /** The lease is no longer ours (or no longer trusted): end the tenant's sessions and close it. */
  lost(tenant: string, reason: string): void;
  /** sessions open now (the node's load, in its record) */
  sessions(): number;
  log: { info(o: object, m: string): void; warn(o: object, m: string): void };
  /** after stop() released the leases (the audit lines of the releases ship then) */
  stopped?: () => Promise<void>;
}

interface Held {
  etag: string;
  counter: number;
  /** monotonic time the last successful write of the lease was sent */
  sentMono: number;
  term: number;
  /** settles once the tenant is open (its catalogue rebuilt if needed) */
  ready: Promise<void>;
}

/**
 * One vault node among several sharing a store (vault.node): holds tenant leases in the store,
 * renews them, takes over tenants whose holder died (once the store's clock says the lease
 * expired), and tells sessions for a tenant held elsewhere where it is (E_TENANT_ELSEWHERE).
 */
export class VaultNode {
  private readonly held = new Map<string, Held>();
  private readonly locks = new Map<string, Promise<unknown>>();
  /** ETag of each lease as first seen, and when (the fallback when the store sends no Date) */
  private readonly seen = new Map<string, { etag: string; sinceMono: number }>();
  private terms = 0;
  private livePeers: string[] = [];
  private memberEtag: string | null = null;
  private memberCounter = 0;
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<void> | null = null;
  private stopped = false;
  private readonly startedMono = mono();
  private readonly startedAt = new Date().toISOString();
  readonly instance = randomBytes(6).toString('hex');

  constructor(
    readonly id: string,
    readonly ttlMs: number,
    private readonly store: LeaseStore,
    private readonly tenants: () => string[],
    private readonly listen: string,
    private readonly hooks: NodeHooks,
  ) {}

  async start(): Promise<void> {
    await this.writeMember();
    await this.readPeers();
    this.timer = setInterval(() => {
      if (!this.ticking) this.ticking = this.tick().finally(() => (this.ticking = null));
    }, renewEvery(this.ttlMs));
  }

  /** Tenants this node holds now. */
  holding(): string[] {
    return [...this.held.keys()].sort();
  }

  /** One tenant at a time: acquiring, renewing and releasing one lease never interleave. */
  private serial<T>(tenant: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(tenant) ?? Promise.resolve();
    const next = prev.catch(() => {}).then(fn);
    this.locks.set(tenant, next.catch(() => {}));
    return next;
  }

  private record(tenant: string, counter: number, node: string | null): Buffer {
    const r: LeaseRecord = { tenant, node, counter, ttlMs: this.ttlMs, lastHolder: this.id, writtenAt: new Date().toISOString() };
    return Buffer.from(JSON.stringify(r) + '\n');
  }

  private elsewhere(tenant: string, holder: string, why: string): KuraError {
    return new KuraError('E_TENANT_ELSEWHERE', `tenant ${tenant} is ${why} ${holder}, not this vault node (${this.id}); the relay tries the route's next endpoint (a route's endpoints must be nodes sharing one store)`, { holder, node: this.id });
  }

  /**
   * A session for `tenant` is starting: resolves once this node holds the tenant and has it
   * open; throws E_TENANT_ELSEWHERE when another live node holds it (or should take it).
   */
  async claim(tenant: string): Promise<number> {
    const h = this.held.get(tenant) ?? (await this.acquire(tenant, true));
    if (!h) throw this.elsewhere(tenant, placementOrder(tenant, [...this.livePeers, this.id])[0]!, 'about to be taken by');
    await h.ready;
    if (this.held.get(tenant) !== h) throw new KuraError('E_LEASE_LOST', `this vault node (${this.id}) lost tenant ${tenant}'s lease while opening it; the relay tries again`);
    return h.term;
  }

  /**
   * Take the tenant's lease if nobody live holds it. `onDemand` (a session asked): a live holder
   * is an E_TENANT_ELSEWHERE. Null when it is not ours to take now.
   */
  private acquire(tenant: string, onDemand: boolean): Promise<Held | null> {
    return this.serial(tenant, async () => {
      const already = this.held.get(tenant);
      if (already) return already;
      if (this.stopped) throw new KuraError('E_LINK_DOWN', `vault node ${this.id} is stopping`);
      const name = leaseName(tenant);
      const raw = await this.store.read(name);
      const obs = raw ? parseLease(name, raw) : null;
      const now = mono();
      const s = this.seen.get(tenant);
      if (obs && s?.etag !== obs.etag) this.seen.set(tenant, { etag: obs.etag, sinceMono: now });
      const v = judgeLease(obs, this.id, this.seen.get(tenant), now);
      if (v.kind === 'live') {
        if (onDemand) throw this.elsewhere(tenant, v.holder, 'held by');
        return null;
      }
      // free (absent, released, expired): the first live node in the tenant's order takes it
      if (v.kind !== 'mine' && !shouldTake(tenant, this.id, this.livePeers)) return null;
      const counter = (obs?.record.counter ?? 0) + 1;
      const sent = mono();
      const etag = await this.store.write(name, this.record(tenant, counter, this.id), obs ? obs.etag : null);
      if (etag === null) {
        // another node wrote it first
        if (onDemand) throw this.elsewhere(tenant, 'another node', 'just taken by');
        return null;
      }
      const rebuild = takeoverNeedsRebuild(v, this.id);
      const term = ++this.terms;
      let open: () => void = () => {};
      let fail: (e: unknown) => void = () => {};
      const h: Held = { etag, counter, sentMono: sent, term, ready: new Promise<void>((res, rej) => ((open = res), (fail = rej))) };
      h.ready.catch(() => {});
      this.held.set(tenant, h);
      this.hooks.log.info({ tenant, node: this.id, previous: v.kind === 'expired' ? v.holder : v.kind === 'released' ? v.lastHolder : null, verdict: v.kind, rebuild, counter }, 'tenant lease taken');
      // the catalogue is rebuilt outside the lock: renewals go on meanwhile
      void this.hooks.takeOver(tenant, rebuild, term).then(open, (e: unknown) => {
        this.hooks.log.warn({ tenant, node: this.id }, `taking over tenant ${tenant} failed: ${(e as Error).message}; the lease is released`);
        fail(e);
        void this.release(tenant);
      });
      return h;
    });
  }

  /** Renew one held lease (If-Match); one that was not renewed in time, or was taken, is lost. */
  private renew(tenant: string): Promise<void> {
    return this.serial(tenant, async () => {
      const h = this.held.get(tenant);
      if (!h) return;
      const sent = mono();
      // a renewal that comes after the lease stopped being trusted (paused, a store that did not
      // answer) does not extend it: what ran under it stops, and the tenant is taken anew
      if (!leaseTrusted(h.sentMono, this.ttlMs, sent, 0)) return this.lose(tenant, `its lease was not renewed within ${this.ttlMs} ms (paused, or the store did not answer)`);
      let etag: string | null;
      try {
        etag = await this.store.write(leaseName(tenant), this.record(tenant, h.counter + 1, this.id), h.etag);
      } catch (e) {
        this.hooks.log.warn({ tenant, node: this.id }, `tenant lease not renewed: ${(e as Error).message}`);
        return;
      }
      if (etag === null) {
        // our own write may have landed with its answer lost: the record says
        const raw = await this.store.read(leaseName(tenant)).catch(() => null);
        const o = raw ? parseLease(leaseName(tenant), raw) : null;
        if (o && o.record.node === this.id && o.record.counter === h.counter + 1) etag = o.etag;
        else return this.lose(tenant, `its lease was taken by ${o?.record.node ?? 'nobody (released)'}`);
      }
      h.etag = etag;
      h.counter++;
      h.sentMono = sent;
    });
  }

  private lose(tenant: string, reason: string): void {
    if (!this.held.delete(tenant)) return;
    this.seen.delete(tenant);
    this.hooks.log.warn({ tenant, node: this.id }, `tenant ${tenant} is no longer held by this node: ${reason}`);
    this.hooks.lost(tenant, reason);
  }

  /** Let a held lease go (node null): another node may take it at once. */
  private release(tenant: string): Promise<void> {
    return this.serial(tenant, async () => {
      const h = this.held.get(tenant);
      if (!h) return;
      this.held.delete(tenant);
      this.hooks.lost(tenant, 'released');
      await this.store.write(leaseName(tenant), this.record(tenant, h.counter + 1, null), h.etag).catch(() => null);
    });
  }

  /** The fence of a tenant opened under `term`: may it still write (locally trusted, same term)? */
  mayWrite(tenant: string, term: number, marginMs = 0): void {
    const h = this.held.get(tenant);
    if (!h || h.term !== term || !leaseTrusted(h.sentMono, this.ttlMs, mono(), marginMs)) {
      throw new KuraError('E_LEASE_LOST', `vault node ${this.id} no longer holds tenant ${tenant}'s lease (it ran out, or another node took the tenant): nothing more is written or deleted here; the tenant's clients go to the node that holds it`);
    }
  }

  /** Right before a delete: trusted for a quarter TTL more, and the lease in the store is still this node's. */
  async mayDelete(tenant: string, term: number): Promise<void> {
    this.mayWrite(tenant, term, this.ttlMs / 4);
    const raw = await this.store.read(leaseName(tenant));
    const o = raw ? parseLease(leaseName(tenant), raw) : null;
    if (!o || o.record.node !== this.id) this.lose(tenant, `its lease is held by ${o?.record.node ?? 'nobody'} in the store`);
    this.mayWrite(tenant, term, this.ttlMs / 4);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    await Promise.all([...this.held.keys()].map((t) => this.renew(t).catch((e: unknown) => this.hooks.log.warn({ tenant: t }, `tenant lease renewal failed: ${(e as Error).message}`))));
    await this.writeMember().catch((e: unknown) => this.hooks.log.warn({ node: this.id }, `node record not written: ${(e as Error).message}`));
    await this.readPeers().catch(() => {});
    // tenants nobody live holds go to the first live node of their order, once this node has seen
    // its peers: for a TTL after it starts, nodes started with it are still writing their records
    if (mono() - this.startedMono < this.ttlMs) return;
    for (const t of this.tenants()) {
      if (this.stopped || this.held.has(t)) continue;
      await this.acquire(t, false).catch((e: unknown) => {
        if (!isKuraError(e) || e.code !== 'E_TENANT_ELSEWHERE') this.hooks.log.warn({ tenant: t }, `tenant lease not taken: ${(e as Error).message}`);
      });
    }
  }

  private async writeMember(): Promise<void> {
    const rec: NodeRecord & { instance: string } = {
      node: this.id,
      listen: this.listen,
      ttlMs: this.ttlMs,
      tenants: this.holding(),
      sessions: this.hooks.sessions(),
      startedAt: this.startedAt,
      writtenAt: new Date().toISOString(),
      counter: ++this.memberCounter,
      instance: this.instance,
    };
    const body = Buffer.from(JSON.stringify(rec) + '\n');
    let etag = await this.store.write(memberName(this.id), body, this.memberEtag);
    if (etag === null) {
      const cur = await this.store.read(memberName(this.id));
      const other = cur ? (parseMember(cur) as (NodeRecord & { instance?: string }) | null) : null;
      if (other?.instance && other.instance !== this.instance && cur && nodeLive(other, cur.lastModifiedMs, cur.storeNowMs) && mono() - this.startedMono > this.ttlMs) {
        this.hooks.log.warn({ node: this.id }, `another process writes the record of node ${this.id}: two vault nodes must not share vault.node.id`);
      }
      etag = await this.store.write(memberName(this.id), body, cur ? cur.etag : null);
    }
    this.memberEtag = etag;
  }

  private async readPeers(): Promise<void> {
    const live: string[] = [];
    for (const name of await this.store.list('members/')) {
      const o = await this.store.read(name);
      const r = o ? parseMember(o) : null;
      if (o && r && r.node !== this.id && nodeLive(r, o.lastModifiedMs, o.storeNowMs)) live.push(r.node);
    }
    this.livePeers = live;
  }

  /** Stop renewing and release every lease held (a restart elsewhere takes them at once). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.ticking?.catch(() => {});
    await Promise.all([...this.held.keys()].map((t) => this.release(t)));
    this.memberCounter++;
    this.store.close();
    await this.hooks.stopped?.();
  }
}
