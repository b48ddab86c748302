import { existsSync } from 'node:fs';
import path from 'node:path';
import { KuraError } from '../../errors.js';
import { parseDuration } from '../../config/duration.js';
import type { VaultConfig } from '../../config/schema.js';
import { Repository } from '../../repository/repository.js';
import { tenantLocation, type Vault } from '../vault.js';
import { withLeaseFence } from './fence.js';
import { openLeaseStore } from './lease-store.js';
import { VaultNode } from './node.js';
import { startAuditShipping } from './audit-store.js';
import { StoreUsage } from './store-usage.js';
import { servingNodeUsage } from './usage.js';
import type { UsageSources } from '../maintenance.js';
import type { QuotaBase } from '../session.js';

/** What the node needs from the server: its sessions of a tenant (to end them when the lease goes). */
export interface NodeServer {
  listen: string;
  sessionsOf(tenant: string): Array<{ fail(e: unknown): void; done: Promise<void> }>;
  sessionCount(): number;
  log: { info(o: object, m: string): void; warn(o: object, m: string): void };
}

/** How long a lost tenant's sessions may take to end before its catalogue is closed under them. */
const LOST_GRACE_MS = 10_000;

/**
 * `kura vault serve` with vault.node: the node joins the others on the shared store, and a
 * tenant is opened only under its lease — its catalogue rebuilt from the store when another node
 * may have written since — with every write and delete of its store fenced by that lease.
 */
export async function startNode(vault: Vault, cfg: VaultConfig, server: NodeServer): Promise<VaultNode> {
  const nodeCfg = cfg.node!;
  const ttlMs = parseDuration(nodeCfg.leaseTtl)!;
  const store = openLeaseStore(cfg.storage);
  let node: VaultNode;
  const takeOver = async (tenant: string, rebuild: boolean, term: number): Promise<void> => {
    await closeWhenIdle(vault.forget(tenant), []);
    const where = tenantLocation(cfg, tenant);
    if (typeof where === 'string') throw new KuraError('E_CONFIG', 'vault.node needs an s3 vault.storage');
    const hadCatalogue = existsSync(path.join(where.dir, 'catalogue.sqlite'));
    const loc = { ...where, wrap: (s: Parameters<typeof withLeaseFence>[0]) => withLeaseFence(s, { mayWrite: () => node.mayWrite(tenant, term), mayDelete: () => node.mayDelete(tenant, term) }) };
    const t0 = performance.now();
    const opening = Repository.initKeyless(loc).then(async (repo) => {
      // a catalogue missing here is rebuilt by the open itself; one left from an earlier lease is stale
      if (rebuild && hadCatalogue) {
        try {
          await (await import('../../checker/check.js')).rebuildIndex(repo);
        } catch (e) {
          repo.close();
          throw e;
        }
      }
      return repo;
    });
    vault.adopt(tenant, opening);
    const repo = await opening;
    const c = repo.catalogue.counts();
    vault.audit.write({ event: 'tenant-taken', outcome: 'ok', tenant, node: nodeCfg.id, rebuilt: rebuild || !hadCatalogue, chunks: c.chunks, snapshots: c.snapshots, seconds: Math.round(performance.now() - t0) / 1000 });
  };
  const lost = (tenant: string, reason: string): void => {
    const sessions = server.sessionsOf(tenant);
    const err = new KuraError('E_LEASE_LOST', `vault node ${nodeCfg.id} no longer holds tenant ${tenant} (${reason}); the relay tries again and reaches the node that does`);
    for (const s of sessions) s.fail(err);
    vault.audit.write({ event: 'tenant-lost', outcome: reason === 'released' ? 'ok' : 'error', tenant, node: nodeCfg.id, reason, sessions: sessions.length });
    void closeWhenIdle(vault.forget(tenant), sessions.map((s) => s.done));
  };
  // this node's audit lines go to the bucket too (the file in vault.root is written first): from
  // before the node takes anything, so its takeovers are there; the last lines go at its stop
  const shipping = startAuditShipping(cfg, vault.audit, { info: (o, m) => server.log.info(o, m), error: (o, m) => server.log.warn(o, m) });
  node = new VaultNode(nodeCfg.id, ttlMs, store, () => Object.keys(cfg.tenants).sort(), server.listen, { takeOver, lost, sessions: () => server.sessionCount(), log: server.log, stopped: () => shipping.stop() });
  try {
    await node.start();
  } catch (e) {
    await shipping.stop();
    throw e;
  }
  return node;
}

/**
 * A serving node's usage and quota figures: a tenant's stored bytes from the store's listing
 * (every node gives the same figure, the holder or not; after a takeover, what the bucket
 * holds), listed at most every FOOTPRINT_MAX_AGE_MS, plus what sessions here stored since.
 */
export async function nodeUsageOf(vault: Vault, cfg: VaultConfig): Promise<{ sources: UsageSources; quotaBase(tenant: string): QuotaBase }> {
  const usage = new StoreUsage(cfg);
  return {
    sources: servingNodeUsage(cfg, usage, (t) => (vault.serves(t) ? vault.repoOf(t) : null)),
    quotaBase: (tenant) => ({
      stored: async () => {
        const f = await usage.stored(tenant);
        return { bytes: f.bytes, from: f.from };
      },
      added: (bytes) => usage.added(tenant, bytes),
    }),
  };
}

/** Close a tenant's repository once its sessions have ended (at most LOST_GRACE_MS). */
async function closeWhenIdle(opening: Promise<Repository> | undefined, done: Array<Promise<void>>): Promise<void> {
  if (!opening) return;
  const repo = await opening.catch(() => null);
  await Promise.race([Promise.allSettled(done), new Promise((r) => setTimeout(r, LOST_GRACE_MS).unref())]);
  repo?.close();
}
