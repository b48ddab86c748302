import { KuraError } from '../errors.js';
import { packName } from '../store/backend.js';
import type { Repository } from './repository.js';

const MAX_RUN = 8 << 20; // bytes per range read
const READ_AHEAD = 4; // range reads in flight

/** Consecutive chunks that sit back to back in one pack: read with one range read. */
interface Run {
  pack: string;
  offset: number;
  length: number;
  ids: Buffer[];
  lengths: number[];
}

function* planRuns(repo: Repository, ids: Iterable<Buffer>, what: string): Generator<Run> {
  let run: Run | null = null;
  for (const id of ids) {
    const loc = repo.catalogue.location(id);
    if (!loc) {
      const hex = id.toString('hex');
      throw new KuraError('E_CHUNK_MISSING', `chunk ${hex} of ${what} is not in the catalogue; run "kura check", or "kura repo rebuild-index" if the catalogue was lost`, { chunk: hex });
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
 * The stored blobs of `ids`, in order, read from their packs with coalesced range reads and a
 * small read-ahead (bounded memory whatever the number of chunks).
 */
export async function* readBlobs(repo: Repository, ids: Iterable<Buffer>, what: string): AsyncGenerator<{ id: Buffer; blob: Buffer }> {
  const runs = planRuns(repo, ids, what);
  const fetch = async (run: Run) => {
    let bytes = await repo.store.getRange(packName(run.pack), run.offset, run.length);
    if (!bytes || bytes.length !== run.length) {
      // a GC may have moved these chunks to a new pack since the run was planned: look again
      const moved = repo.catalogue.location(run.ids[0]!);
      if (moved && moved.pack !== run.pack) {
        const parts: Buffer[] = [];
        for (const id of run.ids) {
          const b = await readChunk(repo, id);
          if (!b) break;
          parts.push(b);
        }
        if (parts.length === run.ids.length) bytes = Buffer.concat(parts);
      }
    }
    if (!bytes || bytes.length !== run.length) {
      const hex = run.ids[0]!.toString('hex');
      throw new KuraError('E_CHUNK_MISSING', `pack ${run.pack} holding chunk ${hex} of ${what} is missing or truncated; run "kura check"`, { chunk: hex, pack: run.pack });
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
  fill();
  while (queue.length > 0) {
    const { run, bytes } = await queue.shift()!;
    fill();
    let off = 0;
    for (let i = 0; i < run.ids.length; i++) yield { id: run.ids[i]!, blob: bytes.subarray(off, (off += run.lengths[i]!)) };
  }
}

/**
 * One stored blob by chunk ID, or null when the repository does not hold it. A GC that moves the
 * chunk between the catalogue lookup and the read is seen as a missing pack: look it up again.
 */
export async function readChunk(repo: Repository, id: Buffer): Promise<Buffer | null> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const loc = repo.catalogue.location(id);
    if (!loc) return null;
    const blob = await repo.store.getRange(packName(loc.pack), loc.offset, loc.length);
    if (blob && blob.length === loc.length) return blob;
    const again = repo.catalogue.location(id);
    if (!again || again.pack === loc.pack) return null;
  }
  return null;
}
