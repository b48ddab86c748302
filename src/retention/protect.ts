import { KuraError } from '../errors.js';
import type { Repository } from '../repository/repository.js';
import { snapshotName } from '../store/backend.js';

/**
 * Long-term holds. A protected snapshot has a marker object `protected/<snapshot id>` in the
 * store (not only in the catalogue), so the hold survives a rebuilt catalogue and the keyless
 * vault can honour it. Prune never removes a protected snapshot.
 */
export const protectedName = (id: string) => `protected/${id}`;

/** Set or lift the hold; returns whether anything changed. */
export async function setProtected(repo: Repository, id: string, on: boolean): Promise<boolean> {
  if (!(await repo.store.stat(snapshotName(id)))) {
    throw new KuraError('E_SNAPSHOT_NOT_FOUND', `snapshot ${id} is not in ${repo.location}; list them with "kura snapshots"`);
  }
  const marker = protectedName(id);
  const present = (await repo.store.stat(marker)) !== null;
  if (present === on) return false;
  if (on) {
    await repo.store.putIfAbsent(marker, Buffer.from(JSON.stringify({ snapshot: id, since: new Date().toISOString() }) + '\n'));
  } else {
    await repo.store.delete(marker);
  }
  await repo.store.sync();
  return true;
}

export async function protectedSnapshots(repo: Repository): Promise<Set<string>> {
  const out = new Set<string>();
  for await (const name of repo.store.list('protected/')) out.add(name.slice('protected/'.length));
  return out;
}
