import type { VaultConfig } from '../../config/schema.js';
import { leaseName, openLeaseStore, parseLease, parseMember } from './lease-store.js';
import { judgeLease, nodeLive, placementOrder } from './policy.js';

export interface TenantPlacement {
  tenant: string;
  /** the node holding the lease (null: nobody, or released) */
  holder: string | null;
  state: 'held' | 'expired' | 'released' | 'none';
  /** store time since the lease was last written (renewed), in ms; null when the store sent no Date */
  leaseAgeMs: number | null;
  counter: number | null;
  ttlMs: number | null;
  /** the tenant's rendezvous order over the nodes known to the store (its first is where it goes when free) */
  preference: string[];
}

export interface NodeLoad {
  node: string;
  listen: string;
  live: boolean;
  /** store time since the node last wrote its record, in ms */
  ageMs: number | null;
  /** tenants whose live lease names this node */
  tenants: string[];
  sessions: number;
  startedAt: string;
}

export interface NodesView {
  store: string;
  nodes: NodeLoad[];
  tenants: TenantPlacement[];
}

/** `kura vault nodes`: read the leases and node records from the shared store (no node needs to run here). */
export async function nodesView(cfg: VaultConfig): Promise<NodesView> {
  const store = openLeaseStore(cfg.storage);
  try {
    const nodes: NodeLoad[] = [];
    for (const name of await store.list('members/')) {
      const o = await store.read(name);
      const r = o ? parseMember(o) : null;
      if (!o || !r) continue;
      nodes.push({ node: r.node, listen: r.listen, live: nodeLive(r, o.lastModifiedMs, o.storeNowMs), ageMs: o.storeNowMs === null ? null : Math.max(0, o.storeNowMs - o.lastModifiedMs), tenants: [], sessions: r.sessions, startedAt: r.startedAt });
    }
    const leased = (await store.list('leases/')).map((n) => n.slice('leases/'.length));
    const tenants: TenantPlacement[] = [];
    for (const tenant of [...new Set([...Object.keys(cfg.tenants), ...leased])].sort()) {
      const raw = await store.read(leaseName(tenant));
      const obs = raw ? parseLease(leaseName(tenant), raw) : null;
      const v = judgeLease(obs, '', null);
      const state = v.kind === 'live' ? 'held' : v.kind === 'expired' ? 'expired' : v.kind === 'released' ? 'released' : 'none';
      const holder = v.kind === 'live' || v.kind === 'expired' ? v.holder : null;
      if (v.kind === 'live') nodes.find((n) => n.node === v.holder)?.tenants.push(tenant);
      tenants.push({
        tenant,
        holder,
        state,
        leaseAgeMs: obs && obs.storeNowMs !== null ? Math.max(0, obs.storeNowMs - obs.lastModifiedMs) : null,
        counter: obs?.record.counter ?? null,
        ttlMs: obs?.record.ttlMs ?? null,
        preference: placementOrder(tenant, nodes.filter((n) => n.live).map((n) => n.node)),
      });
    }
    return { store: store.location, nodes, tenants };
  } finally {
    store.close();
  }
}
