import { configSchema, type KuraConfig, type VaultConfig } from '../config/schema.js';
import { parseDuration } from '../config/duration.js';
import { moduleOf } from '../modules/registry.js';
import type { StaticRoute } from '../modules/routing/static.js';
import { Relay } from '../relay/relay.js';
import { signMoved, type MovedAnswer } from '../relay/moved.js';
import { clockSkewed, routeCarries } from '../relay/route-policy.js';
import { routingRecords } from '../relay/transfer-log.js';
import type { Repository } from '../repository/repository.js';
import type { Notifier } from '../notify/notifier.js';
import { clockSkewEvent } from '../notify/routing.js';
import { log } from '../log.js';
import type { VaultSession } from './session.js';
import type { Vault } from './vault.js';
import type { Announced } from './frames/snapshots.js';

/** What a vault session asks of the vault's routing (HELLO, COMMIT, ROUTE_STATUS). */
export interface SessionRouting {
  /** A tenant's HELLO: keep the client's clock offset; the signed MOVED answer when the tenant moved. */
  hello(s: VaultSession, clientTime: number | undefined): MovedAnswer | null;
  /** A snapshot committed: one receive line, and the queue entries of the tenant's forwarding routes. */
  received(s: VaultSession, a: Announced): void;
  /** The tenant's hops beyond this vault (ROUTE_STATUS). */
  routeStatus(tenant: string, repo: Repository): RouteStatusReply;
}

export interface RouteStatusReply {
  tenant: string;
  /** this vault's clock (the asker corrects it with its own offset) */
  time: string;
  /** per source, the newest snapshot this vault holds */
  newest: Array<{ source: string; endTime: string }>;
  /** per forwarding route: its state and, per source, the newest end time it delivered and what waits */
  routes: Array<{ route: string; state: string; lastError: string | null; nextAttempt: string | null; clockOffsetMs: number | null; sources: Array<{ source: string; newestSent: string | null; pending: number }> }>;
}

/** The session's peer clock offset (client minus vault, one way: HELLO carries no round trip). */
const peerOffsets = new WeakMap<VaultSession, number>();

/**
 * Store-and-forward and the routing table on a vault: vault.routes (the same routing module and
 * route options as modules.routing) and, per tenant, the routes its committed snapshots go on
 * by (`forward`) or the route it moved to (`movedTo`). Forwarding is the relay itself — a Relay
 * over the tenant's keyless repository, whose catalogue holds the same durable queue — so the
 * middle vault has the relay's back-off, bandwidth windows, frequency, resumption and logs.
 */
export class VaultRouting implements SessionRouting {
  private readonly routes: Readonly<Record<string, StaticRoute>>;
  private readonly relays = new Map<string, { relay: Relay; running: Promise<void> }>();
  private readonly skewMs: number;

  constructor(
    private readonly vault: Vault,
    private readonly cfg: VaultConfig,
    /** the SSH host key MOVED answers are signed with (null under OpenSSH: sshd holds the host key the relay pins, so no MOVED is answered) */
    private readonly hostKeyPem: Buffer | string | null,
    private readonly outer: { config?: KuraConfig | undefined; notifier?: Notifier | null | undefined } = {},
  ) {
    this.routes = moduleOf({ modules: { routing: cfg.routes } }, 'routing').routes;
    this.skewMs = parseDuration(cfg.maxClockSkew) ?? 2000;
  }

  /** The vault.routes a tenant forwards on. */
  forwardRoutes(tenant: string): string[] {
    return (this.cfg.tenants[tenant]?.forward ?? []).filter((r) => this.routes[r]);
  }

  hello(s: VaultSession, clientTime: number | undefined): MovedAnswer | null {
    const tenant = s.ctx.tenant;
    if (typeof clientTime === 'number' && Number.isFinite(clientTime)) {
      const offset = Math.round(clientTime - Date.now());
      peerOffsets.set(s, offset);
      const peer = `${s.ctx.peer.user ?? tenant}@${s.ctx.peer.ip ?? 'local'}`;
      routingRecords(s.ctx.repo.catalogue).setClock({ hop: `from ${peer}`, peer, offsetMs: offset, rttMs: 0, at: new Date().toISOString() });
      if (clockSkewed(offset, 0, this.skewMs)) {
        log().warn({ tenant, peer, offsetMs: offset }, `the clock of ${peer} is ${(offset / 1000).toFixed(1)} s off this vault's (vault.maxClockSkew ${this.cfg.maxClockSkew})`);
        if (this.outer.notifier?.enabled) this.outer.notifier.emit(clockSkewEvent(`from ${peer}`, peer, offset, this.skewMs, tenant));
      }
    }
    const to = this.cfg.tenants[tenant]?.movedTo;
    const route = to ? this.routes[to] : undefined;
    if (!to || !route) return null;
    if (this.hostKeyPem === null) {
      log().warn({ tenant, movedTo: to }, 'tenant marked moved, but a MOVED answer is signed by the host key the relay pinned, which sshd holds: serve the tenant with kura vault serve to announce the move');
      return null;
    }
    const answer = signMoved({ tenant, route: to, endpoints: route.endpoints.map((e) => ({ host: e.host, port: e.port, user: e.user, hostKeySha256: e.hostKeySha256 })), issued: new Date().toISOString() }, this.hostKeyPem);
    s.ctx.audit.write({ event: 'moved', outcome: 'ok', tenant, session: s.id, route: to, endpoints: route.endpoints.map((e) => `${e.host}:${e.port}`), ...s.ctx.peer });
    return answer;
  }

  received(s: VaultSession, a: Announced): void {
    const { repo, tenant } = s.ctx;
    const h = a.snap.header;
    const since = a.since ?? { at: Date.now(), put: s.ops.put, putBytes: s.ops.putBytes };
    const peer = `${s.ctx.peer.user ?? tenant}@${s.ctx.peer.ip ?? 'local'}`;
    const cat = repo.catalogue;
    const routes = this.forwardRoutes(tenant).filter((r) => routeCarries(this.routes[r]!, h.source));
    cat.db.transaction(() => {
      routingRecords(cat).log({ direction: 'receive', snapshot: a.id, tenant, source: h.source, hop: peer, session: s.id, bytes: s.ops.putBytes - since.putBytes, chunks: s.ops.put - since.put, start: new Date(since.at).toISOString(), end: new Date().toISOString(), peerOffsetMs: peerOffsets.get(s) ?? null });
      // enqueued at commit: the middle vault's own durable queue (start() catches up anything a crash left out)
      for (const r of routes) cat.ops.enqueue(a.id, r, h.source, h.endTime);
    })();
    // a route without its own frequency starts at once
    for (const r of routes) if (!this.routes[r]!.every && !this.routes[r]!.schedule) cat.ops.setRouteControl(r, { retry: true });
  }

  routeStatus(tenant: string, repo: Repository): RouteStatusReply {
    return routeStatusOf(tenant, repo, this.forwardRoutes(tenant));
  }

  /** Queue every snapshot of the tenant a forwarding route carries and has no entry for (after a crash, or a route just added). */
  static catchUp(repo: Repository, routes: Readonly<Record<string, StaticRoute>>, names: readonly string[]): number {
    const cat = repo.catalogue;
    let added = 0;
    cat.db.transaction(() => {
      for (const r of names) {
        if (!routes[r]) continue;
        const has = new Set(cat.db.prepare<[string], { snapshot: string }>('SELECT snapshot FROM queue WHERE route = ?').all(r).map((x) => x.snapshot));
        for (const s of cat.snapshots()) {
          if (has.has(s.id) || !routeCarries(routes[r]!, s.header.source)) continue;
          cat.ops.enqueue(s.id, r, s.header.source, s.header.endTime);
          added++;
        }
      }
    })();
    return added;
  }

  /** Start a relay per forwarding tenant (kura vault serve). */
  async start(): Promise<void> {
    for (const [tenant, t] of Object.entries(this.cfg.tenants)) {
      const names = t.forward.filter((r) => this.routes[r]);
      if (names.length === 0) continue;
      const repo = await this.vault.repoOf(tenant);
      const added = VaultRouting.catchUp(repo, this.routes, names);
      const view = this.relayConfig(tenant);
      const relay = new Relay(repo, view, names, this.outer.notifier ?? undefined);
      log().info({ tenant, routes: names, queued: added }, 'forwarding the tenant\'s snapshots');
      const running = relay.run().catch((e: unknown) => log().error({ tenant, err: (e as Error).message }, 'forwarding stopped'));
      this.relays.set(tenant, { relay, running });
    }
  }

  /** The config a tenant's forwarding relay sees: vault.routes as its routing module, relay.* timings. */
  private relayConfig(tenant: string): KuraConfig {
    const full = this.outer.config ?? configSchema.parse({});
    return { ...full, tenant, sources: {}, modules: { ...full.modules, routing: this.cfg.routes } };
  }

  async stop(): Promise<void> {
    for (const { relay } of this.relays.values()) relay.stop();
    await Promise.allSettled([...this.relays.values()].map((r) => r.running));
  }
}

/** What a tenant's repository on this vault says of its hops beyond (ROUTE_STATUS, kura vault status). */
export function routeStatusOf(tenant: string, repo: Repository, forward: readonly string[]): RouteStatusReply {
  const cat = repo.catalogue;
  const newest = new Map<string, string>();
  for (const s of cat.snapshots()) if ((newest.get(s.header.source) ?? '') < s.header.endTime) newest.set(s.header.source, s.header.endTime);
  const states = cat.ops.routeStates();
  const deliveries = cat.ops.deliveries();
  const clocks = routingRecords(cat).clocks();
  return {
    tenant,
    time: new Date().toISOString(),
    newest: [...newest].map(([source, endTime]) => ({ source, endTime })),
    routes: forward.map((route) => {
      const st = states.find((r) => r.route === route);
      return {
        route,
        state: st?.paused ? 'paused' : (st?.state ?? 'idle'),
        lastError: st?.last_error ?? null,
        nextAttempt: st?.next_attempt ? new Date(st.next_attempt).toISOString() : null,
        clockOffsetMs: clocks.find((c) => c.hop === route)?.offsetMs ?? null,
        sources: deliveries.filter((d) => d.route === route).map((d) => ({ source: d.source, newestSent: d.newest_sent, pending: d.pending })),
      };
    }),
  };
}

/** The vault's /metrics lines of routing: every tenant's peers' clock offsets (relays in, next hops out). */
export async function vaultRoutingMetrics(vault: Vault, cfg: VaultConfig): Promise<string> {
  const rows: Array<{ tenant: string; hop: string; offsetMs: number }> = [];
  for (const tenant of Object.keys(cfg.tenants)) {
    if (!vault.serves(tenant)) continue; // a vault node: tenants held elsewhere
    for (const c of routingRecords((await vault.repoOf(tenant)).catalogue).clocks()) rows.push({ tenant, hop: c.hop, offsetMs: c.offsetMs });
  }
  return routingMetrics(rows);
}

/** Vault-side metrics of routing: peers' clock offsets per tenant. */
export function routingMetrics(rows: Array<{ tenant: string; hop: string; offsetMs: number }>): string {
  const lines = ['# HELP kura_peer_clock_offset_seconds Clock of the peer minus this host\'s, measured at HELLO', '# TYPE kura_peer_clock_offset_seconds gauge'];
  for (const r of rows) lines.push(`kura_peer_clock_offset_seconds{tenant="${r.tenant}",hop="${r.hop.replace(/["\\\n]/g, '_')}"} ${(r.offsetMs / 1000).toFixed(3)}`);
  return lines.join('\n') + '\n';
}
