import { KuraError } from '../../errors.js';
import { parseDuration } from '../../config/duration.js';
import type { VaultConfig } from '../../config/schema.js';
import { Repository } from '../../repository/repository.js';
import { tenantLocation } from '../vault.js';
import { withLeaseFence } from './fence.js';
import { leaseName, openLeaseStore, parseLease } from './lease-store.js';
import { STORE_CLOCK_RESOLUTION_MS } from './policy.js';

/**
 * `kura vault prune|gc` on a vault node's host: a tenant's repository opened only while the
 * node of this config (`kura vault serve`, renewing) holds the tenant's lease, its writes and
 * deletes fenced like the node's own: each delete re-reads the lease, which must name this node
 * and have been renewed within half its TTL (plus the store clock's second) by the store's clock, well before anyone may take it; writes need such a check less
 * than half a TTL ago. The command may be paused or the node may die: it then deletes nothing.
 */
export async function openHeldTenant(cfg: VaultConfig, tenant: string): Promise<Repository> {
  const self = cfg.node!.id;
  const ttlMs = parseDuration(cfg.node!.leaseTtl)!;
  const store = openLeaseStore(cfg.storage);
  let lastOk = -Infinity;
  const check = async (): Promise<void> => {
    const raw = await store.read(leaseName(tenant));
    const o = raw ? parseLease(leaseName(tenant), raw) : null;
    if (!o || o.record.node !== self) throw new KuraError('E_TENANT_ELSEWHERE', `tenant ${tenant} is held by ${o?.record.node ?? 'no node'}, not by this node (${self}); run it on the node that holds it (kura vault nodes)`, { holder: o?.record.node ?? null });
    const age = o.storeNowMs === null ? null : o.storeNowMs - o.lastModifiedMs;
    if (age === null || age > o.record.ttlMs / 2 + STORE_CLOCK_RESOLUTION_MS) throw new KuraError('E_LEASE_LOST', `tenant ${tenant}'s lease was not renewed for ${age === null ? 'an unknown time' : `${(age / 1000).toFixed(1)} s`} (store clock): is "kura vault serve" of node ${self} running? Nothing is written or deleted`);
    lastOk = performance.now();
  };
  await check().catch((e: unknown) => {
    store.close();
    throw e;
  });
  const keep = setInterval(() => void check().catch(() => (lastOk = -Infinity)), Math.max(200, ttlMs / 4));
  keep.unref();
  const where = tenantLocation(cfg, tenant);
  if (typeof where === 'string') throw new KuraError('E_CONFIG', 'vault.node needs an s3 vault.storage');
  const fenced = {
    ...where,
    wrap: (s: Parameters<typeof withLeaseFence>[0]) => {
      const f = withLeaseFence(s, {
        mayWrite: () => {
          if (performance.now() - lastOk > ttlMs / 2) throw new KuraError('E_LEASE_LOST', `tenant ${tenant}'s lease could not be confirmed for half its TTL: nothing more is written`);
        },
        mayDelete: check,
      });
      // the lease store and its check go with the repository
      return { ...f, close: () => (clearInterval(keep), store.close(), s.close?.()) };
    },
  };
  try {
    return await Repository.open(fenced, null);
  } catch (e) {
    clearInterval(keep);
    store.close();
    throw e;
  }
}
