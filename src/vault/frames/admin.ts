import { KuraError } from '../../errors.js';
import { Frame } from '../../protocol/frames.js';
import { protectedSnapshots, setProtected } from '../../retention/protect.js';
import { forwardHolds } from '../../relay/route-policy.js';
import { snapshotName } from '../../store/backend.js';
import { maintainTenant, vaultUsage } from '../maintenance.js';
import type { VaultServices, VaultSession } from '../session.js';

/** PROTECT: set or lift a snapshot's long-term hold. */
export async function protect(s: VaultSession, b: { id: string; protect: boolean }): Promise<void> {
  const changed = await setProtected(s.ctx.repo, b.id, b.protect);
  s.audit({ event: b.protect ? 'protect' : 'unprotect', snapshot: b.id, changed });
  return s.send(Frame.PROTECTED, { id: b.id, protected: b.protect, changed });
}

function services(s: VaultSession, name: string): VaultServices {
  const v = s.ctx.vault;
  if (!v) throw new KuraError('E_FORBIDDEN', `${name} is served by kura vault serve and kura vault stdio only`);
  return v;
}

/**
 * PRUNE: the tenant's retention as the vault's config sets it (vault.tenants.<t>.retention and
 * per-source overrides), as `kura vault prune` applies it: protected snapshots and ones a route
 * still has to send are kept. A dry run says what would go.
 */
export async function pruneTenant(s: VaultSession, b: { dryRun: boolean; source?: string | undefined }): Promise<void> {
  const v = services(s, 'PRUNE');
  const r = await maintainTenant(s.ctx.repo, v.cfg, s.ctx.tenant, { prune: true, gc: false, dryRun: b.dryRun, timeZone: v.timeZone, ...(b.source ? { sources: [b.source] } : {}) });
  const report = r.prune!;
  s.audit({ event: 'prune', dryRun: b.dryRun, source: b.source ?? null, kept: report.kept, removed: report.removed, snapshots: report.decisions.filter((d) => !d.keep).map((d) => d.id) });
  return s.send(Frame.PRUNED, report);
}

/** DELETE: one snapshot of the tenant (its chunks go at the next gc); never a protected one, nor one a route still has to send. */
export async function deleteSnapshot(s: VaultSession, b: { id: string }): Promise<void> {
  const { repo } = s.ctx;
  if (!(await repo.store.stat(snapshotName(b.id)))) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `snapshot ${b.id} is not in tenant ${s.ctx.tenant}'s vault repository`);
  if ((await protectedSnapshots(repo)).has(b.id)) {
    throw new KuraError('E_SNAPSHOT_PROTECTED', `snapshot ${b.id} of tenant ${s.ctx.tenant} is protected (long-term hold): lift the hold first (kura unprotect --from ROUTE ${b.id.slice(0, 12)}), then delete it`);
  }
  const routes = forwardHolds(repo.catalogue.ops.queued()).get(b.id);
  if (routes) throw new KuraError('E_SNAPSHOT_PROTECTED', `snapshot ${b.id} of tenant ${s.ctx.tenant} is still to be forwarded to ${routes.join(', ')}: delete it once it is sent`);
  await repo.store.delete(snapshotName(b.id));
  repo.catalogue.removeSnapshot(b.id);
  await repo.store.sync();
  s.audit({ event: 'delete', snapshot: b.id });
  return s.send(Frame.DELETED, { id: b.id, deleted: true });
}

/** USAGE (system session): every tenant's usage and quota, as `kura vault usage` prints it; no contents. */
export async function usage(s: VaultSession, b: { period?: string | undefined }): Promise<void> {
  const v = services(s, 'USAGE');
  const period = b.period ?? new Date().toISOString().slice(0, 7);
  const u = await vaultUsage(v.cfg, period, v.usage);
  s.audit({ event: 'usage', period });
  return s.send(Frame.USAGE_REPLY, u);
}
