import { existsSync } from 'node:fs';
import path from 'node:path';
import type { VaultConfig } from '../../config/schema.js';
import { Repository } from '../../repository/repository.js';
import type { UsageSources } from '../maintenance.js';
import { tenantLocation } from '../vault.js';
import { leaseName, openLeaseStore, parseLease } from './lease-store.js';
import { judgeLease } from './policy.js';
import type { StoreUsage } from './store-usage.js';

/** Who holds each tenant now by its lease in the store (null: nobody live), as `kura vault nodes` judges it. */
async function holderOf(cfg: VaultConfig, tenant: string): Promise<string | null> {
  const store = openLeaseStore(cfg.storage);
  try {
    const raw = await store.read(leaseName(tenant));
    const v = judgeLease(raw ? parseLease(leaseName(tenant), raw) : null, '', null);
    return v.kind === 'live' ? v.holder : null;
  } finally {
    store.close();
  }
}

function notHere(self: string, holder: string | null): string {
  return holder ? `not held by this node (${self}): chunks, logical, received and wire bytes are in the catalogue of ${holder} (ask it, or kura vault usage --from a route to it)` : `no node holds the tenant now (${self} does not): chunks, logical, received and wire bytes come with the next node that takes it`;
}

/**
 * Usage on a serving vault node (USAGE frames): stored bytes and snapshots from the store's
 * listing (cached: StoreUsage), the catalogue's figures from the tenant's open catalogue when
 * this node holds it.
 */
export function servingNodeUsage(cfg: VaultConfig, usage: StoreUsage, open: (tenant: string) => Promise<Repository> | null): UsageSources {
  const self = cfg.node!.id;
  return {
    stored: (t) => usage.stored(t),
    catalogue: async (t) => {
      const repo = open(t);
      if (repo) return { repo: await repo, from: `catalogue of ${self}, which holds the tenant`, close: () => {} };
      return { repo: null, from: notHere(self, await holderOf(cfg, t).catch(() => null)) };
    },
  };
}

/**
 * Usage by `kura vault usage` on a node's host (no serving process asked): every tenant listed
 * in the store now, the catalogue's figures from this host's catalogue when this host's node holds
 * the tenant.
 */
export function hostNodeUsage(cfg: VaultConfig, usage: StoreUsage): UsageSources {
  const self = cfg.node!.id;
  return {
    stored: (t) => usage.stored(t),
    catalogue: async (t) => {
      const holder = await holderOf(cfg, t);
      const where = tenantLocation(cfg, t);
      const dir = typeof where === 'string' ? where : where.dir;
      if (holder !== self || !existsSync(path.join(dir, 'catalogue.sqlite'))) return { repo: null, from: notHere(self, holder) };
      const repo = await Repository.open(where, null);
      return { repo, from: `catalogue of ${self} on this host, which holds the tenant`, close: () => repo.close() };
    },
  };
}
