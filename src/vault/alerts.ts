import { parseDuration } from '../config/duration.js';
import type { VaultConfig } from '../config/schema.js';
import { log } from '../log.js';
import { maintenanceFailed } from '../notify/jobs.js';
import type { Notifier } from '../notify/notifier.js';
import { burstStep, quotaStep, type BurstState, type QuotaLevel } from '../notify/watch.js';
import type { AuditEvent } from './audit.js';
import { quotaOf } from './maintenance.js';
import type { Vault } from './vault.js';

/**
 * The vault's notifications, read from its audit events (one stream for what happened and
 * what to say): a burst of refused logins, a tenant's quota at its warning level or exceeded,
 * a scheduled prune/gc that failed. States live in the notification queue's database, so the
 * short-lived `vault stdio` processes of OpenSSH's command= mode count together.
 */
export function watchVault(vault: Vault, cfg: VaultConfig, notifier: Notifier, storedOf?: (tenant: string) => Promise<number>): void {
  if (!notifier.enabled) return;
  const n = notifier.cfg;
  const burst = { count: n.refusedLogins.count, within: parseDuration(n.refusedLogins.within)! };
  const quotaCheck = async (tenant: string, exceeded: boolean) => {
    const quota = quotaOf(cfg, tenant);
    if (quota === undefined) return;
    // vault nodes: the figure the quota check counts (the store's listing)
    const stored = storedOf ? await storedOf(tenant) : (await vault.repoOf(tenant)).catalogue.counts().storedBytes;
    notifier.transition<QuotaLevel>(`quota:${tenant}`, (prev) => quotaStep(prev, tenant, stored, quota, exceeded, n.quotaWarnPercent, Date.now()));
  };
  vault.audit.subscribe((e: AuditEvent) => {
    if (e.event === 'auth' && e.outcome === 'refused') {
      notifier.transition<BurstState>('auth-burst', (prev) => burstStep(prev, { ip: e.ip, user: e.user, reason: e.reason }, Date.now(), burst.count, burst.within));
    } else if (e.tenant && ((e.outcome === 'refused' && e.code === 'E_QUOTA') || e.event === 'commit')) {
      quotaCheck(e.tenant, e.code === 'E_QUOTA').catch((err: Error) => log().warn({ tenant: e.tenant, err: err.message }, 'quota check for notifications failed'));
    } else if (e.event === 'maintenance' && e.outcome === 'error') {
      notifier.emit(maintenanceFailed('vault prune and gc', { code: e.code, message: e.reason ?? 'unknown error' }, { tenant: e.tenant }));
    }
  });
}
