import type { VaultConfig } from '../config/schema.js';
import type { UsageSources, VaultUsage } from '../vault/maintenance.js';

/** `kura vault usage` on a vault node's host: stored bytes listed from the store now (no cache), the rest from this host's catalogue of the tenants its node holds. */
export async function hostUsageSources(cfg: VaultConfig): Promise<UsageSources | undefined> {
  if (!cfg.node) return undefined;
  const { StoreUsage } = await import('../vault/nodes/store-usage.js');
  const { hostNodeUsage } = await import('../vault/nodes/usage.js');
  return hostNodeUsage(cfg, new StoreUsage(cfg, 0));
}

/** Below the usage table: where each tenant's figures came from (vault nodes). */
export function usageSourcesText(u: VaultUsage): string {
  const rows = u.tenants.filter((t) => t.storedFrom || t.catalogueFrom);
  if (rows.length === 0) return '';
  let out = 'where the figures come from (vault nodes): STORED and SNAPSHOTS from the store itself, the same on every node; the rest from the catalogue of the node holding the tenant\n';
  for (const t of rows) out += `  ${t.tenant}: stored: ${t.storedFrom ?? '-'}; catalogue: ${t.catalogueFrom ?? '-'}\n`;
  return out;
}
