import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { KuraError } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import type { VaultConfig } from '../config/schema.js';
import { Repository, type RepoLocation } from '../repository/repository.js';
import { FS_SPEC, openStore, prepareStore } from '../store/index.js';

/**
 * Where a tenant's repository lives: <root>/tenants/<tenant> (fs: everything; other stores: its
 * catalogue), its objects under <prefix>tenants/<tenant>/ of vault.storage.
 */
export function tenantLocation(cfg: VaultConfig, tenant: string): RepoLocation {
  const dir = path.join(cfg.root, 'tenants', tenant);
  if (!cfg.storage || cfg.storage.type === 'fs') return dir;
  return { dir, storage: cfg.storage, scope: `tenants/${tenant}/` };
}

/**
 * Before a vault serves anything from its store: make the bucket if absent and prove that a
 * conditional create is refused over an existing object (E_STORE_UNSAFE otherwise).
 */
export async function prepareVaultStorage(cfg: VaultConfig): Promise<void> {
  const spec = cfg.storage ?? FS_SPEC;
  const where = { dir: path.join(cfg.root, 'tenants'), scope: '' };
  const store = openStore(spec, where);
  try {
    await prepareStore(spec, where, store);
  } finally {
    store.close?.();
  }
}
import { AuditLog } from './audit.js';
import { parseSize } from '../config/size.js';
import { MemoryBudget, type MemoryLimits } from './memory.js';
import { SlotTable } from './slots.js';
import { OperatorAuthority } from './operators.js';
import { SYSTEM_USER } from './access.js';

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
    // a vault node opens a tenant only when it takes its lease (nodes/serve.ts: adopt)
    if (!r && this.cfg.node) throw new KuraError('E_LEASE_LOST', `vault node ${this.cfg.node.id} does not hold tenant ${tenant}; its clients go to the node that does`);
    if (!r) {
      r = Repository.initKeyless(tenantLocation(this.cfg, tenant));
      this.repos.set(tenant, r);
    }
    return r;
  }

  /**
   * A system session's repository (<root>/system, on the local file system): it holds nothing
   * of any tenant, only what every session keeps (transfer bytes, peers' clocks).
   */
  systemRepo(): Promise<Repository> {
    let r = this.repos.get(SYSTEM_USER);
    if (!r) {
      r = Repository.initKeyless(path.join(this.cfg.root, 'system'));
      this.repos.set(SYSTEM_USER, r);
    }
    return r;
  }

  private authority: OperatorAuthority | null | undefined;

  /** vault.sso's ticket key and revocations, loaded once per vault process (null: no vault.sso). */
  get operators(): OperatorAuthority | null {
    if (this.authority === undefined) this.authority = OperatorAuthority.of(this.cfg);
    return this.authority;
  }

  /** Whether this process serves the tenant (always, but on a vault node only the tenants it holds). */
  serves(tenant: string): boolean {
    return !this.cfg.node || this.repos.has(tenant);
  }

  /** A vault node took the tenant's lease: `opening` is its repository for that lease's term. */
  adopt(tenant: string, opening: Promise<Repository>): void {
    opening.catch(() => {});
    this.repos.set(tenant, opening);
  }

  /** A vault node lost the tenant: the repository is no longer served (closed by the caller once its sessions ended). */
  forget(tenant: string): Promise<Repository> | undefined {
    const r = this.repos.get(tenant);
    this.repos.delete(tenant);
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
