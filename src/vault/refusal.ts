import { statfs } from 'node:fs/promises';
import { KuraError, isKuraError } from '../errors.js';
import { formatBytes } from '../format.js';
import type { Repository } from '../repository/repository.js';

/** Error codes (errno, SQLite) that mean the file system holding a tenant's repository is full. */
const FULL = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL']);
/** ... and that it failed otherwise: the storage, not the request, is at fault. */
const STORAGE_FAULT = /^(EIO|EROFS|SQLITE_IOERR.*|SQLITE_CANTOPEN|SQLITE_READONLY.*)$/;

/** The errno or SQLite code behind an error: its own, a KuraError's recorded errno, or its cause's. */
export function storageCode(e: unknown): string | undefined {
  for (let x = e as { code?: unknown; details?: { errno?: unknown }; cause?: unknown } | undefined, depth = 0; x && depth < 4; x = x.cause as typeof x, depth++) {
    if (typeof x.details?.errno === 'string') return x.details.errno;
    if (typeof x.code === 'string' && !x.code.startsWith('E_')) return x.code;
  }
  return undefined;
}

/**
 * What a session that failed with `e` answers: a KuraError as it is; the tenant's storage being
 * full or failing as E_IO (with the free space: the relay waits and retries, an operator sees
 * what to do); anything else is a fault of the vault itself (E_INTERNAL).
 */
export async function refusalOf(e: unknown, ctx: { tenant: string; repo: Repository }): Promise<KuraError> {
  const code = storageCode(e);
  const message = (e as Error)?.message ?? String(e);
  if (code && FULL.has(code)) {
    const space = await statfs(ctx.repo.root).catch(() => null);
    const free = space ? `${formatBytes(space.bavail * space.bsize)} (${space.bavail * space.bsize} bytes) free of ${formatBytes(space.blocks * space.bsize)}` : 'free space unknown';
    return new KuraError(
      'E_IO',
      `tenant ${ctx.tenant}'s storage on this vault is full: ${free} (${code}: ${message}). The vault operator frees space (kura vault prune and gc, or a larger file system); the client retries later (a kura relay keeps the snapshot queued)`,
      { errno: code, freeBytes: space ? space.bavail * space.bsize : null },
      { cause: e },
    );
  }
  if (isKuraError(e)) return e;
  if (code && STORAGE_FAULT.test(code)) {
    return new KuraError('E_IO', `tenant ${ctx.tenant}'s storage on this vault failed (${code}: ${message}); the vault operator checks the disk; the client retries later`, { errno: code }, { cause: e });
  }
  return new KuraError('E_INTERNAL', message, undefined, { cause: e });
}
