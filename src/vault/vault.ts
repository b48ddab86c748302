import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { KuraError } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import type { VaultConfig } from '../config/schema.js';
import { Repository } from '../repository/repository.js';
import { AuditLog } from './audit.js';
import { parseSize } from '../config/size.js';
import { MemoryBudget, type MemoryLimits } from './memory.js';
import { SlotTable } from './slots.js';

/** The vault's directory: one keyless repository per tenant, the audit log and the host key. */
export class Vault {
  private readonly repos = new Map<string, Promise<Repository>>();
  readonly audit: AuditLog;
  readonly leaseTtlMs: number;
  /** memory for this process's sessions (vault.limits) */
  readonly memory: MemoryBudget;

  constructor(readonly cfg: VaultConfig) {
    mkdirSync(path.join(cfg.root, 'tenants'), { recursive: true, mode: 0o750 });
    this.audit = new AuditLog(cfg.auditLog ?? path.join(cfg.root, 'audit.jsonl'));
    this.leaseTtlMs = parseDuration(cfg.leaseTtl)!;
    this.memory = new MemoryBudget(limitsOf(cfg));
  }

  /** The tenant's repository; tenant names are validated by the config schema (no path tricks). */
  repoOf(tenant: string): Promise<Repository> {
    if (!/^[a-z0-9][a-z0-9_.-]*$/i.test(tenant)) throw new KuraError('E_FORBIDDEN', `"${tenant}" is not a tenant name`);
    let r = this.repos.get(tenant);
    if (!r) {
      r = Repository.initKeyless(path.join(this.cfg.root, 'tenants', tenant));
      this.repos.set(tenant, r);
    }
    return r;
  }

  private slotTable: SlotTable | null = null;

  /** The backup-window slots this vault leases to agents (opened on first use). */
  get slots(): SlotTable {
    return (this.slotTable ??= new SlotTable(this.cfg.root));
  }

  async close(): Promise<void> {
    this.slotTable?.close();
    for (const r of this.repos.values()) (await r.catch(() => null))?.close();
    this.audit.close();
  }
}

/** vault.limits in bytes. */
export function limitsOf(cfg: VaultConfig): MemoryLimits {
  return { sessionBytes: parseSize(cfg.limits.sessionBytes)!, totalBytes: parseSize(cfg.limits.totalBytes)! };
}
