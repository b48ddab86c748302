import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { KuraError } from '../errors.js';
import type { VaultConfig } from '../config/schema.js';
import { parseSize } from '../config/size.js';
import { collectGarbage, type GcReport } from '../gc/gc.js';
import { Repository } from '../repository/repository.js';
import type { RetentionPolicy } from '../retention/plan.js';
import { prune, type PruneReport } from '../retention/prune.js';
import { tenantLocation } from './vault.js';

/** Tenants of the vault: configured ones and any with a repository under <root>/tenants. */
export function vaultTenants(cfg: VaultConfig): string[] {
  const dir = path.join(cfg.root, 'tenants');
  // a tenant's directory holds its objects (fs) or its catalogue (other stores)
  const onDisk = existsSync(dir) ? readdirSync(dir).filter((t) => existsSync(path.join(dir, t, 'config')) || existsSync(path.join(dir, t, 'catalogue.sqlite'))) : [];
  return [...new Set([...Object.keys(cfg.tenants), ...onDisk])].sort();
}

export async function openTenantRepo(cfg: VaultConfig, tenant: string): Promise<Repository> {
  if (!vaultTenants(cfg).includes(tenant)) throw new KuraError('E_USAGE', `tenant "${tenant}" is not registered under vault.tenants and has no repository under ${cfg.root}/tenants`);
  try {
    return await Repository.open(tenantLocation(cfg, tenant), null);
  } catch (e) {
    if (e instanceof KuraError && e.code === 'E_REPO_NOT_FOUND') throw new KuraError('E_REPO_NOT_FOUND', `tenant "${tenant}" has no repository yet (nothing was ever sent to it)`);
    throw e;
  }
}

export function vaultPolicy(cfg: VaultConfig): (tenant: string, source: string) => RetentionPolicy | undefined {
  return (tenant, source) => cfg.tenants[tenant]?.sources[source]?.retention ?? cfg.tenants[tenant]?.retention;
}

export function quotaOf(cfg: VaultConfig, tenant: string): number | undefined {
  const q = cfg.tenants[tenant]?.quota;
  return q === undefined ? undefined : (parseSize(q) ?? undefined);
}

export interface TenantMaintenance {
  tenant: string;
  prune?: PruneReport;
  gc?: GcReport;
}

/** Vault prune (then gc) of one tenant's repository, without keys. */
export async function maintainTenant(repo: Repository, cfg: VaultConfig, tenant: string, o: { prune: boolean; gc: boolean; dryRun: boolean; timeZone: string; now?: Date; sources?: readonly string[] }): Promise<TenantMaintenance> {
  const out: TenantMaintenance = { tenant };
  // a forwarding tenant: whatever a next hop has not received yet is queued first, then kept
  const forward = cfg.tenants[tenant]?.forward ?? [];
  if (forward.length > 0 && !o.dryRun) {
    const { VaultRouting } = await import('./forward.js');
    const { moduleOf } = await import('../modules/registry.js');
    VaultRouting.catchUp(repo, moduleOf({ modules: { routing: cfg.routes } }, 'routing').routes, forward);
  }
  if (o.prune) out.prune = await prune(repo, { policyFor: vaultPolicy(cfg), now: o.now ?? new Date(), timeZone: o.timeZone, dryRun: o.dryRun, keepUnsent: true, sources: o.sources });
  if (o.gc) out.gc = await collectGarbage(repo, { mode: 'vault', dryRun: o.dryRun });
  return out;
}

export interface TenantUsage {
  tenant: string;
  /** bytes of files in the tenant's repository: packs and snapshot files */
  storedBytes: number;
  /** stored bytes of the chunks the catalogue lists (storedBytes less pack indexes and garbage not yet collected) */
  chunkBytes: number;
  /** sum of the snapshots' export sizes (what a copy without dedup would take) */
  logicalBytes: number;
  snapshots: number;
  chunks: number;
  /** new chunk bytes stored during the period (UTC days) */
  receivedBytes: number;
  quota: number | null;
  /** share of the vault's stored bytes, in percent with one decimal; the shares add up to 100.0 */
  sharePercent: number;
  /** protocol bytes the vault read from the tenant's clients during the period (UTC days), every frame */
  wireInBytes: number;
  /** protocol bytes the vault wrote to the tenant's clients during the period, every frame */
  wireOutBytes: number;
  /** of wireOutBytes, the snapshot files and chunks sent in answer to restore reads (whole frames) */
  restoreBytes: number;
  /** share of all tenants' wire bytes (in + out) in the period, as sharePercent; all 0 when nothing moved */
  transferSharePercent: number;
  /** vault nodes: where storedBytes and snapshots came from (the store's listing, when) */
  storedFrom?: string;
  /** vault nodes: where chunks, logical, received and wire bytes came from (the holder's catalogue), or why they are 0 */
  catalogueFrom?: string;
}

/**
 * Where usage comes from when the tenants' catalogues are not the truth (vault nodes: a tenant's
 * catalogue is current only on the node holding it): stored bytes and snapshots from the store,
 * the rest from the catalogue when this node holds the tenant.
 */
export interface UsageSources {
  stored(tenant: string): Promise<{ bytes: number; snapshots: number; from: string }>;
  /** the tenant's catalogue here, current (null: not held here, with why) */
  catalogue(tenant: string): Promise<{ repo: Repository; from: string; close(): void } | { repo: null; from: string }>;
}

export interface VaultUsage {
  period: string;
  tenants: TenantUsage[];
  totalStoredBytes: number;
  /** wire bytes in + out of every tenant in the period */
  totalWireBytes: number;
}

/**
 * Per-tenant usage, the input for apportioning shared costs. Bytes are exact integers. Shares
 * (of stored bytes, and of the period's wire bytes) are tenths of a percent, rounded by the
 * largest-remainder method so they always add up to exactly 100.0 (no tenant pays for rounding).
 */
export async function vaultUsage(cfg: VaultConfig, period: string, sources?: UsageSources): Promise<VaultUsage> {
  const rows: TenantUsage[] = [];
  for (const tenant of vaultTenants(cfg)) {
    if (sources) {
      rows.push(await usageFrom(sources, tenant, period, quotaOf(cfg, tenant) ?? null));
      continue;
    }
    const dir = path.join(cfg.root, 'tenants', tenant);
    const base: TenantUsage = {
      tenant,
      storedBytes: 0,
      chunkBytes: 0,
      logicalBytes: 0,
      snapshots: 0,
      chunks: 0,
      receivedBytes: 0,
      quota: quotaOf(cfg, tenant) ?? null,
      sharePercent: 0,
      wireInBytes: 0,
      wireOutBytes: 0,
      restoreBytes: 0,
      transferSharePercent: 0,
    };
    if (!existsSync(path.join(dir, 'config')) && !existsSync(path.join(dir, 'catalogue.sqlite'))) {
      rows.push(base);
      continue;
    }
    const repo = await Repository.open(tenantLocation(cfg, tenant), null);
    try {
      let stored = 0;
      for (const prefix of ['packs/', 'snapshots/']) {
        for await (const o of repo.store.listWithSizes(prefix)) stored += o.size;
      }
      const c = repo.catalogue.counts();
      let logical = 0;
      for (const s of repo.catalogue.snapshots()) logical += s.header.logicalBytes;
      const moved = repo.catalogue.vault.transferBytes(period);
      rows.push({
        ...base,
        storedBytes: stored,
        chunkBytes: c.storedBytes,
        logicalBytes: logical,
        snapshots: c.snapshots,
        chunks: c.chunks,
        receivedBytes: repo.catalogue.vault.intake(period).bytes,
        wireInBytes: moved.wireIn,
        wireOutBytes: moved.wireOut,
        restoreBytes: moved.restoreOut,
      });
    } finally {
      repo.close();
    }
  }
  const wire = rows.map((r) => r.wireInBytes + r.wireOutBytes);
  const stored = percentShares(rows.map((r) => r.storedBytes));
  const moved = percentShares(wire);
  rows.forEach((r, i) => {
    r.sharePercent = stored[i]!;
    r.transferSharePercent = moved[i]!;
  });
  return { period, tenants: rows, totalStoredBytes: rows.reduce((a, r) => a + r.storedBytes, 0), totalWireBytes: wire.reduce((a, b) => a + b, 0) };
}

/** One tenant's usage from `sources` (vault nodes). */
async function usageFrom(sources: UsageSources, tenant: string, period: string, quota: number | null): Promise<TenantUsage> {
  const stored = await sources.stored(tenant);
  const cat = await sources.catalogue(tenant);
  const row: TenantUsage = {
    tenant,
    storedBytes: stored.bytes,
    chunkBytes: 0,
    logicalBytes: 0,
    snapshots: stored.snapshots,
    chunks: 0,
    receivedBytes: 0,
    quota,
    sharePercent: 0,
    wireInBytes: 0,
    wireOutBytes: 0,
    restoreBytes: 0,
    transferSharePercent: 0,
    storedFrom: stored.from,
    catalogueFrom: cat.from,
  };
  if (!cat.repo) return row;
  try {
    const { repo } = cat;
    const c = repo.catalogue.counts();
    let logical = 0;
    for (const s of repo.catalogue.snapshots()) logical += s.header.logicalBytes;
    const moved = repo.catalogue.vault.transferBytes(period);
    Object.assign(row, { chunkBytes: c.storedBytes, logicalBytes: logical, chunks: c.chunks, receivedBytes: repo.catalogue.vault.intake(period).bytes, wireInBytes: moved.wireIn, wireOutBytes: moved.wireOut, restoreBytes: moved.restoreOut });
  } finally {
    cat.close();
  }
  return row;
}

/** Shares of `weights` in percent with one decimal, by largestRemainder over 1000 tenths: they add up to 100.0 (or are all 0). */
export function percentShares(weights: readonly number[]): number[] {
  return largestRemainder(weights, 1000).map((tenths) => tenths / 10);
}

/**
 * Split `units` in proportion to `weights` (non-negative integers: byte counts) into integers
 * summing to `units`, all zero when the weights are. Each gets the floor of its exact part; the
 * units left go one each to the largest remainders, equal remainders to the earlier weight (the
 * tenant listed first). Computed in integers (BigInt): floating-point remainders of equal parts
 * can differ in their last bits, and weight × units passes 2^53 beyond 9 TB.
 */
export function largestRemainder(weights: readonly number[], units: number): number[] {
  const w = weights.map((x) => {
    if (!Number.isSafeInteger(x) || x < 0) throw new KuraError('E_INTERNAL', `largestRemainder needs non-negative integer weights, got ${x}`);
    return BigInt(x);
  });
  const total = w.reduce((a, b) => a + b, 0n);
  if (total === 0n) return weights.map(() => 0);
  const u = BigInt(units);
  const out = w.map((x) => Number((x * u) / total));
  const order = w.map((x, i) => ({ i, r: (x * u) % total })).sort((a, b) => (a.r === b.r ? a.i - b.i : a.r > b.r ? -1 : 1));
  let left = units - out.reduce((a, b) => a + b, 0);
  for (const { i } of order) {
    if (left-- <= 0) break;
    out[i]!++;
  }
  return out;
}
