import { KuraError } from '../../errors.js';
import { Frame } from '../../protocol/frames.js';
import { snapshotName } from '../../store/backend.js';
import type { VaultSession } from '../session.js';

/** LIST: the tenant's snapshots (of one source), with when they arrived. */
export function list(s: VaultSession, b: { source?: string | undefined }): Promise<void> {
  const { catalogue } = s.ctx.repo;
  const rows = catalogue.snapshots(b.source ? { source: b.source } : {}).map((r) => {
    const received = catalogue.vault.receivedAt(r.id);
    return { id: r.id, ...r.header, receivedAt: received?.at ?? null, receivedSeq: received?.seq ?? null };
  });
  return s.send(Frame.LIST_REPLY, rows);
}

/** GET_SNAPSHOT: a snapshot file. */
export async function getSnapshot(s: VaultSession, b: { id: string }): Promise<void> {
  const bytes = await s.ctx.repo.store.get(snapshotName(b.id));
  if (!bytes) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `snapshot ${b.id} is not in tenant ${s.ctx.tenant}'s vault repository`);
  s.audit({ event: 'get-snapshot', snapshot: b.id });
  return s.send(Frame.SNAPSHOT, bytes);
}

/** STATS: what the tenant holds. */
export function stats(s: VaultSession): Promise<void> {
  return s.send(Frame.STATS_REPLY, { tenant: s.ctx.tenant, ...s.ctx.repo.catalogue.counts() });
}
