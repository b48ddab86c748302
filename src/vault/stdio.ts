import type { VaultConfig } from '../config/schema.js';
import { log } from '../log.js';
import type { Role } from './access.js';
import { VaultSession } from './session.js';
import { prepareVaultStorage, Vault } from './vault.js';
import { quotaOf } from './maintenance.js';
import { Notifier, type NotificationsConfig } from '../notify/notifier.js';
import { watchVault } from './alerts.js';
import { VaultRouting } from './forward.js';

/**
 * `kura vault stdio --tenant X`: the vault protocol on stdin/stdout, run by OpenSSH as the
 * forced command of a key in authorized_keys (command="kura vault stdio --tenant X",restrict).
 * sshd has authenticated the key and applied its from= networks; this process is pinned to
 * the one tenant the operator wrote into that line. Each session is a process of its own, so
 * each proves the store's conditional creates before it serves (prepareVaultStorage).
 */
export async function serveStdio(cfg: VaultConfig, tenant: string, role: Role, notifications?: NotificationsConfig, host?: string, timeZone?: string): Promise<void> {
  // as `vault serve` does at start: a store that overwrites on a conditional create is refused
  // before a session can write to it (a few requests per session on an object store; none on fs)
  await prepareVaultStorage(cfg);
  const vault = new Vault(cfg);
  const notifier = notifications ? new Notifier(notifications, 'vault', cfg.root, host) : null;
  if (notifier) watchVault(vault, cfg, notifier);
  const [ip] = (process.env.SSH_CLIENT ?? '').split(' ');
  try {
    const repo = await vault.repoOf(tenant);
    await new VaultSession(
      {
        tenant,
        role,
        repo,
        audit: vault.audit,
        peer: { ...(ip ? { ip } : {}), user: process.env.USER ?? 'stdio' },
        maxFrame: cfg.maxFrame,
        leaseTtlMs: vault.leaseTtlMs,
        quota: quotaOf(cfg, tenant),
        slots: vault.slots,
        log: log().child({ mode: 'vault-stdio' }),
        budget: vault.memory,
        routing: new VaultRouting(vault, cfg, null, { notifier }),
        vault: { cfg, timeZone: timeZone ?? Intl.DateTimeFormat().resolvedOptions().timeZone ?? 'UTC', operators: vault.operators },
      },
      process.stdin,
      process.stdout,
    ).run();
  } finally {
    if (notifier) {
      await notifier.flush();
      await notifier.close();
    }
    await vault.close();
  }
}
