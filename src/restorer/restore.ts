import { once } from 'node:events';
import { promises as fsp, createWriteStream } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Writable } from 'node:stream';
import { KuraError, ioError } from '../errors.js';
import { openBlob } from '../crypto/blob.js';
import { packName } from '../store/backend.js';
import type { Repository } from '../repository/repository.js';
import { chunkIdsOf, openSnapshotPrivate } from '../repository/snapshot.js';

const READ_AHEAD = 16;

export interface RestoreResult {
  id: string;
  bytes: number;
  chunks: number;
  seconds: number;
}

/**
 * Streams a snapshot's chunks in order into `out`, verifying every chunk (GCM tag, then the
 * plaintext re-hashed against its ID). Reads run ahead a little; memory stays bounded.
 */
export async function restoreTo(repo: Repository, snapshotId: string, out: Writable): Promise<RestoreResult> {
  const t0 = process.hrtime.bigint();
  const snap = await repo.readSnapshot(snapshotId);
  const keys = repo.keys;
  openSnapshotPrivate(snap, keys.dataKey); // authenticates header + chunk list
  const ids = [...chunkIdsOf(snap)];
  const fetch = async (i: number) => {
    const id = ids[i]!;
    const hex = id.toString('hex');
    const loc = repo.catalogue.location(id);
    const blob = loc ? await repo.store.getRange(packName(loc.pack), loc.offset, loc.length) : null;
    if (!blob || blob.length !== loc!.length) throw new KuraError('E_CHUNK_MISSING', `chunk ${hex} of snapshot ${snapshotId} is missing from the store; run "kura check" and restore from another copy`, { chunk: hex, snapshot: snapshotId });
    return blob;
  };
  const queue: Array<Promise<Buffer>> = [];
  let next = 0;
  const fill = () => {
    while (queue.length < READ_AHEAD && next < ids.length) {
      const p = fetch(next++);
      p.catch(() => {}); // observed when awaited below
      queue.push(p);
    }
  };
  let bytes = 0;
  fill();
  for (let i = 0; i < ids.length; i++) {
    const blob = await queue.shift()!;
    fill();
    let plain: Buffer;
    try {
      plain = openBlob(blob, ids[i]!, keys);
    } catch (e) {
      if (e instanceof KuraError) throw new KuraError(e.code, `${e.message} (snapshot ${snapshotId}, offset ${bytes})`, { ...e.details, snapshot: snapshotId });
      throw e;
    }
    bytes += plain.length;
    if (!out.write(plain)) await once(out, 'drain'); // rejects if the stream errors meanwhile
  }
  if (bytes !== snap.header.logicalBytes) {
    throw new KuraError('E_SNAPSHOT_CORRUPT', `snapshot ${snapshotId} restored ${bytes} bytes but records ${snap.header.logicalBytes}`);
  }
  return { id: snapshotId, bytes, chunks: ids.length, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

/**
 * Restore into a file: written beside the target under a temporary name and renamed only when
 * every chunk verified, so a failed restore never leaves something that looks complete.
 */
export async function restoreToFile(repo: Repository, snapshotId: string, target: string): Promise<RestoreResult> {
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.kura-partial-${randomBytes(4).toString('hex')}`);
  const ws = createWriteStream(tmp, { flags: 'wx', mode: 0o640 });
  try {
    await once(ws, 'open');
  } catch (e) {
    throw ioError(`cannot create ${tmp}`, e);
  }
  try {
    const r = await restoreTo(repo, snapshotId, ws);
    ws.end();
    await once(ws, 'finish');
    const fh = await fsp.open(tmp, 'r');
    await fh.sync();
    await fh.close();
    await fsp.rename(tmp, target);
    return r;
  } catch (e) {
    ws.destroy();
    await fsp.unlink(tmp).catch(() => {});
    throw e;
  }
}
