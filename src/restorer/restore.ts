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

const READ_AHEAD = 4; // range reads in flight
const MAX_RUN = 8 << 20; // bytes per range read

export interface RestoreResult {
  id: string;
  bytes: number;
  chunks: number;
  seconds: number;
}

/** Consecutive chunks that sit back to back in one pack: read with one range read. */
interface Run {
  pack: string;
  offset: number;
  length: number;
  ids: Buffer[];
  lengths: number[];
}

function* planRuns(repo: Repository, snapshotId: string, ids: Buffer[]): Generator<Run> {
  let run: Run | null = null;
  for (const id of ids) {
    const loc = repo.catalogue.location(id);
    if (!loc) {
      const hex = id.toString('hex');
      throw new KuraError('E_CHUNK_MISSING', `chunk ${hex} of snapshot ${snapshotId} is not in the catalogue; run "kura check", or "kura repo rebuild-index" if the catalogue was lost`, { chunk: hex, snapshot: snapshotId });
    }
    if (run && run.pack === loc.pack && run.offset + run.length === loc.offset && run.length + loc.length <= MAX_RUN) {
      run.length += loc.length;
    } else {
      if (run) yield run;
      run = { pack: loc.pack, offset: loc.offset, length: loc.length, ids: [], lengths: [] };
    }
    run.ids.push(id);
    run.lengths.push(loc.length);
  }
  if (run) yield run;
}

/**
 * Streams a snapshot's chunks in order into `out`, verifying every chunk (GCM tag, then the
 * plaintext re-hashed against its ID). A few range reads run ahead; memory stays bounded.
 */
export async function restoreTo(repo: Repository, snapshotId: string, out: Writable): Promise<RestoreResult> {
  const t0 = process.hrtime.bigint();
  const snap = await repo.readSnapshot(snapshotId);
  const keys = repo.keys;
  openSnapshotPrivate(snap, keys.dataKey); // authenticates header + chunk list
  const ids = [...chunkIdsOf(snap)];
  const runs = planRuns(repo, snapshotId, ids);
  const fetch = async (run: Run) => {
    const bytes = await repo.store.getRange(packName(run.pack), run.offset, run.length);
    if (!bytes || bytes.length !== run.length) {
      const hex = run.ids[0]!.toString('hex');
      throw new KuraError('E_CHUNK_MISSING', `pack ${run.pack} holding chunk ${hex} of snapshot ${snapshotId} is missing or truncated; run "kura check" and restore from another copy`, { chunk: hex, pack: run.pack, snapshot: snapshotId });
    }
    return { run, bytes };
  };
  const queue: Array<Promise<{ run: Run; bytes: Buffer }>> = [];
  const fill = () => {
    while (queue.length < READ_AHEAD) {
      const next = runs.next();
      if (next.done) return;
      const p = fetch(next.value);
      p.catch(() => {}); // observed when awaited below
      queue.push(p);
    }
  };
  let bytes = 0;
  fill();
  while (queue.length > 0) {
    const { run, bytes: data } = await queue.shift()!;
    fill();
    let off = 0;
    for (let i = 0; i < run.ids.length; i++) {
      const blob = data.subarray(off, (off += run.lengths[i]!));
      let plain: Buffer;
      try {
        plain = openBlob(blob, run.ids[i]!, keys);
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
