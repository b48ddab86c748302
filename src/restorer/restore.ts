import { once } from 'node:events';
import { promises as fsp, createWriteStream } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Writable } from 'node:stream';
import { KuraError, ioError } from '../errors.js';
import { DeltaOpener, type BlobSource } from './bases.js';
import { readBlobs } from '../repository/reader.js';
import type { RepoKeys } from '../crypto/keys.js';
import type { Repository } from '../repository/repository.js';
import { openSnapshotPrivate, snapshotChunkIds, type DecodedSnapshot } from '../repository/snapshot.js';
import { idsOf } from '../repository/chunklist.js';

export interface RestoreResult {
  id: string;
  bytes: number;
  chunks: number;
  seconds: number;
}

export type { BlobSource };

const SEGMENT_BYTES = 32 << 20; // chunks fetched before their deltas' bases are

/**
 * Streams a snapshot's chunks in order into `out`, verifying every chunk (GCM tag, then the
 * plaintext re-hashed against its ID). The chunks are read in segments of at most 32 MiB; the
 * base chunks the segment's deltas need are read after it. Memory stays bounded whatever the
 * snapshot's size.
 */
export async function restoreStream(snap: DecodedSnapshot, keys: RepoKeys, blobs: BlobSource, out: Writable): Promise<RestoreResult> {
  const t0 = process.hrtime.bigint();
  const snapshotId = snap.id;
  openSnapshotPrivate(snap, keys.dataKey); // authenticates header + chunk list
  const ids = [...idsOf(await snapshotChunkIds(snap, blobs))];
  let bytes = 0;
  const what = `snapshot ${snapshotId}`;
  const opener = new DeltaOpener(keys, blobs);
  const perSegment = Math.max(16, Math.min(4096, Math.floor(SEGMENT_BYTES / (snap.header.chunker?.maxSize ?? 1 << 20))));
  for (let at = 0; at < ids.length; at += perSegment) {
    const segment: Array<{ id: Buffer; blob: Buffer }> = [];
    for await (const b of blobs(ids.slice(at, at + perSegment), what)) segment.push(b);
    await opener.prepare(segment, what);
    for (const { id, blob } of segment) {
      let plain: Buffer;
      try {
        plain = opener.open(blob, id);
      } catch (e) {
        if (e instanceof KuraError) throw new KuraError(e.code, `${e.message} (snapshot ${snapshotId}, offset ${bytes})`, { ...e.details, snapshot: snapshotId });
        throw e;
      }
      bytes += plain.length;
      if (!out.write(plain)) await once(out, 'drain'); // rejects if the stream errors meanwhile
    }
  }
  if (bytes !== snap.header.logicalBytes) {
    throw new KuraError('E_SNAPSHOT_CORRUPT', `snapshot ${snapshotId} restored ${bytes} bytes but records ${snap.header.logicalBytes}`);
  }
  return { id: snapshotId, bytes, chunks: ids.length, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

export async function restoreTo(repo: Repository, snapshotId: string, out: Writable): Promise<RestoreResult> {
  const snap = await repo.readSnapshot(snapshotId);
  return restoreStream(snap, repo.keys, (ids, what) => readBlobs(repo, ids, what), out);
}

/**
 * Restore into a file: written beside the target under a temporary name and renamed only when
 * every chunk verified, so a failed restore never leaves something that looks complete. On a
 * failure the temporary file is closed (a write still under way is waited for, and its
 * "destroyed" error is no news) and removed; the caller gets the failure that stopped the restore.
 */
export async function restoreToFile(target: string, run: (out: Writable) => Promise<RestoreResult>): Promise<RestoreResult> {
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.kura-partial-${randomBytes(4).toString('hex')}`);
  const ws = createWriteStream(tmp, { flags: 'wx', mode: 0o640 });
  let writeError: Error | null = null;
  ws.on('error', (e) => (writeError ??= e));
  try {
    await once(ws, 'open');
  } catch (e) {
    throw ioError(`cannot create ${tmp}`, e);
  }
  try {
    const r = await run(ws);
    ws.end();
    await once(ws, 'finish');
    const fh = await fsp.open(tmp, 'r');
    await fh.sync();
    await fh.close();
    await fsp.rename(tmp, target);
    return r;
  } catch (e) {
    if (!ws.closed) {
      const closed = once(ws, 'close').catch(() => {});
      ws.destroy();
      await closed;
    }
    await fsp.unlink(tmp).catch(() => {});
    // the file could not be written (a full disk, say): that, not the stream's state, is the news
    if (writeError && !(e instanceof KuraError)) throw ioError(`cannot write ${tmp}`, writeError);
    throw e;
  }
}
