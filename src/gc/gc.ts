import { KuraError } from '../errors.js';
import { blobInfo, CHUNK_ID_BYTES } from '../crypto/blob.js';
import { packDeltas } from '../repository/catalogue.js';
import type { Repository } from '../repository/repository.js';
import { packId, storePack } from '../repository/pack.js';
import { blobDigest } from '../repository/digest.js';
import { snapshotChunkIds } from '../repository/snapshot.js';
import { hexArray, inBatches, inHexRuns } from '../repository/id-batches.js';
import { listFetcher } from '../repository/reader.js';
import { packName } from '../store/backend.js';

/**
 * Garbage collection, without keys (the vault runs it on tenants' ciphertext).
 *
 * 1. Mark: every chunk of every snapshot in the store goes into a temporary table (SQLite, so
 *    memory stays bounded whatever the chunk count). Refuse to go on if a snapshot is unreadable
 *    or references a chunk the catalogue does not know: GC never guesses.
 * 2. Candidates: chunks unreferenced and unleased *now*; nothing else can ever be swept.
 * 3. Sweep, in one write transaction: drop candidates that a snapshot committed since (marked
 *    first) or a live session lease now protects, delete the rest from the catalogue, and record
 *    the packs that lost chunks in `gc_pending`. A vault session's HAS checks and leases in one
 *    transaction too, so it either saw the chunk gone (and uploads it) or its lease wins.
 * 4. Packs: a pending pack with no live chunk is condemned; one with some is rewritten (its live
 *    blobs copied into new packs, made durable, rows moved, then the old pack condemned). Pack
 *    objects nothing refers to (left by a killed writer) are condemned unless a session holds a
 *    pack lease on them.
 * 5. Deletes, in two phases so that no store call sits inside a catalogue transaction (an S3
 *    DELETE may take seconds and be retried): the transaction that proves a pack unused (no
 *    chunk row, no live pack lease) only records it in `condemned_packs`; each is then claimed
 *    in a transaction of its own, deleted from the store, and forgotten. A session about to
 *    write a pack of the same name takes an unclaimed one back (Catalogue.leasePack) and waits
 *    out a claimed one, so a create can never be followed by the delete of the same object.
 *
 * A kill at any moment leaves a consistent repository: rows are only removed for chunks no
 * snapshot references, packs only condemned once no row points at them; a rerun finishes the
 * pending packs and deletes what was condemned. The same holds on every backend.
 */
export interface GcOptions {
  /** local: excludes backups of this repository; vault: concurrent sessions are protected by leases */
  mode: 'local' | 'vault';
  dryRun?: boolean;
  /** size of rewritten packs */
  packBytes?: number;
}

export interface GcReport {
  dryRun: boolean;
  snapshots: number;
  chunksReferenced: number;
  chunksStored: number;
  chunksRemoved: number;
  /** stored (compressed, encrypted) bytes of the removed chunks */
  bytesRemoved: number;
  packsDeleted: number;
  packsRewritten: number;
  packsWritten: number;
  bytesRewritten: number;
  orphanPacks: number;
  /** file bytes deleted minus file bytes written */
  bytesFreed: number;
  tempFilesRemoved: number;
  problems: string[];
  seconds: number;
}

const SNAP_RE = /^[0-9a-f]{64}$/;
const DEFAULT_PACK_BYTES = 4 << 20;

export async function collectGarbage(repo: Repository, opts: GcOptions): Promise<GcReport> {
  const lock = repo.catalogue.acquireLock('gc', opts.mode === 'local' ? ['gc', 'backup'] : ['gc']);
  try {
    return await runGc(repo, opts);
  } finally {
    lock.release();
  }
}

async function runGc(repo: Repository, opts: GcOptions): Promise<GcReport> {
  const t0 = performance.now();
  const cat = repo.catalogue;
  const db = cat.db;
  const store = repo.store;
  const report: GcReport = {
    dryRun: Boolean(opts.dryRun),
    snapshots: 0,
    chunksReferenced: 0,
    chunksStored: 0,
    chunksRemoved: 0,
    bytesRemoved: 0,
    packsDeleted: 0,
    packsRewritten: 0,
    packsWritten: 0,
    bytesRewritten: 0,
    orphanPacks: 0,
    bytesFreed: 0,
    tempFilesRemoved: 0,
    problems: [],
    seconds: 0,
  };
  db.exec(`
    CREATE TEMP TABLE IF NOT EXISTS gc_mark (id BLOB PRIMARY KEY) WITHOUT ROWID;
    CREATE TEMP TABLE IF NOT EXISTS gc_dead (id BLOB PRIMARY KEY) WITHOUT ROWID;
    CREATE TEMP TABLE IF NOT EXISTS gc_leased (id BLOB PRIMARY KEY) WITHOUT ROWID;
    DELETE FROM temp.gc_mark; DELETE FROM temp.gc_dead; DELETE FROM temp.gc_leased;
  `);
  /** the chunks leases live at `now` hold, into temp.gc_leased (afresh) */
  const readLeases = (now: number) => {
    db.exec('DELETE FROM temp.gc_leased');
    cat.vault.copyLeased(now, 'temp.gc_leased');
  };
  // IDs marked a few thousand a statement (id-batches.ts): one statement an ID took 3 of 7 s of a
  // GC of seven nights of 4 KiB chunks
  const insertMarks = db.prepare<[string]>('INSERT OR IGNORE INTO temp.gc_mark (id) SELECT unhex(value) FROM json_each(?)');
  /** IDs side by side (a snapshot's list) into temp.gc_mark */
  const markIds = (ids: Buffer): void => inHexRuns(ids, CHUNK_ID_BYTES, (json) => insertMarks.run(json));
  /** IDs into temp.gc_mark */
  const markList = (ids: readonly Buffer[]): void => inBatches(ids, (part) => insertMarks.run(hexArray(part)));
  const insertFresh = db.prepare<[string], Buffer>('INSERT OR IGNORE INTO temp.gc_mark (id) SELECT unhex(value) FROM json_each(?) RETURNING id').pluck();
  /** IDs into temp.gc_mark; those that were not marked yet */
  const markFresh = (ids: readonly Buffer[]): Buffer[] => {
    const fresh: Buffer[] = [];
    inBatches(ids, (part) => {
      for (const id of insertFresh.all(hexArray(part))) fresh.push(id);
    });
    return fresh;
  };
  // the bases of the deltas that are marked (or, in the sweep, leased), pack by pack
  const deltaPacks = db.prepare<[], { pack: number; bases: Buffer; deltas: Buffer }>('SELECT pack, bases, deltas FROM pack_bases');
  const markedOffsets = db.prepare<[number], number>('SELECT c.offset FROM chunk_rows c JOIN temp.gc_mark m ON m.id = c.id WHERE c.pack = ?').pluck();
  const leasedOffsets = db.prepare<[number], number>('SELECT c.offset FROM chunk_rows c JOIN temp.gc_leased l ON l.id = c.id WHERE c.pack = ?').pluck();
  // each base prefix once, its chunks looked up a few thousand prefixes a statement (one a base
  // took 16 of 26 s of a GC of 400 000 4 KiB chunks that kept them all)
  const basesOf = (offsetsIn: (pack: number) => number[]): Buffer[] => {
    const prefixes = new Set<string>();
    for (const row of deltaPacks.all()) {
      const deltas = packDeltas(row);
      for (const o of offsetsIn(row.pack)) for (const prefix of deltas.get(o) ?? []) prefixes.add(prefix.toString('hex'));
    }
    return cat.bases.chunksUnder([...prefixes]).map(([, id]) => id);
  };
  const anyLeased = db.prepare('SELECT 1 FROM temp.gc_leased LIMIT 1');
  /** IDs out of temp.gc_dead; those that were in it */
  const undead = db.prepare<[string], Buffer>('DELETE FROM temp.gc_dead WHERE id IN (SELECT unhex(value) FROM json_each(?)) RETURNING id').pluck();
  /**
   * `take(bases)` for the bases of deltas, then for the bases of those it took, to the end of a
   * chain: kura never makes a delta of a delta, but a vault may be sent one. Each link looks only
   * at what the one before took (`take` answers the IDs it had not taken yet), so a cycle ends.
   */
  const followChains = (bases: Buffer[], take: (ids: readonly Buffer[]) => Buffer[]) => {
    for (let next = bases; next.length > 0; ) {
      const taken = take(next);
      next = taken.length > 0 ? cat.bases.needed(taken, undefined, { listed: true }).found : [];
    }
  };
  /**
   * The bases of leased deltas out of temp.gc_dead, to the end of a chain (only those still taken
   * for dead are followed further: a marked chunk's chain was followed when it was marked, and a
   * leased delta's bases are in the first list).
   */
  const reviveLeasedBases = () => {
    if (!anyLeased.get()) return;
    followChains(basesOf((pack) => leasedOffsets.all(pack)), (ids) => {
      const revived: Buffer[] = [];
      inBatches(ids, (part) => {
        for (const id of undead.all(hexArray(part))) revived.push(id);
      });
      return revived;
    });
  };
  const marked = new Set<string>();
  // SQLite's count of commits by other connections (vault sessions, a relay) when the bases
  // were last marked: one may have stored a delta of a chunk not marked yet (a quarantined
  // chunk stored again), whose bases must live
  const othersCommitted = () => db.pragma('data_version', { simple: true }) as number;
  let basesMarkedAt: number | null = null;
  const mark = async (ids: Iterable<string>) => {
    const before = marked.size;
    for (const id of ids) {
      if (marked.has(id)) continue;
      const snap = await repo.readSnapshot(id).catch((e: unknown) => {
        throw new KuraError('E_CHECK_FAILED', `gc stopped: snapshot ${id} cannot be read (${(e as Error).message}); its chunks cannot be known, so nothing is deleted. Run "kura check"`);
      });
      const blocks: Buffer[] = [];
      const data = await snapshotChunkIds(snap, listFetcher(repo), (b) => blocks.push(b)).catch((e: unknown) => {
        if ((e as KuraError).details?.quarantined) {
          throw new KuraError('E_CHECK_FAILED', `gc stopped: snapshot ${id} is damaged (a block of its chunk list is quarantined), so what it references cannot be known; nothing is deleted. A backup of the same data stores the block again; or prune the snapshot`);
        }
        throw new KuraError('E_CHECK_FAILED', `gc stopped: the chunk list of snapshot ${id} cannot be read (${(e as Error).message}); nothing is deleted. Run "kura check"`);
      });
      db.transaction(() => {
        markList(blocks);
        markIds(data);
      })();
      marked.add(id);
    }
    // a delta's base chunks live as long as it does; again only if a snapshot was marked anew or
    // another connection committed since. Past the first pass over every marked delta, each link
    // looks only at the chunks marked anew (passing again over every marked delta cost a GC of
    // seven 4 KiB nights 7.4 s against 6.8)
    if (marked.size > before || othersCommitted() !== basesMarkedAt) {
      basesMarkedAt = othersCommitted();
      followChains(basesOf((pack) => markedOffsets.all(pack)), (ids) => db.transaction(() => markFresh(ids))());
    }
  };
  const storeSnapshots = async () => {
    const out: string[] = [];
    for await (const name of store.list('snapshots/')) {
      const id = name.slice('snapshots/'.length);
      if (SNAP_RE.test(id)) out.push(id);
    }
    return out;
  };

  // a GC killed between its condemnations and its deletes left these
  if (!opts.dryRun) await deleteCondemned(repo, report);

  // 1. mark
  await mark(await storeSnapshots());
  await mark(cat.snapshotIds());
  // a chunk in quarantine (found damaged, not stored again yet) is known to be missing, not lost with the catalogue
  const unknown = db
    .prepare<[], { n: number }>('SELECT count(*) AS n FROM temp.gc_mark m WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = m.id) AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.chunk = m.id)')
    .get()!.n;
  if (unknown > 0) {
    throw new KuraError(
      'E_CHECK_FAILED',
      `gc stopped: snapshots reference ${unknown} chunk(s) the catalogue does not list, so it cannot tell what is garbage; nothing was deleted. Run "kura check", and "kura repo rebuild-index" if the catalogue was lost`,
      { unknownChunks: unknown },
    );
  }

  // 2. candidates
  const now = Date.now();
  cat.vault.dropExpiredLeases(now);
  db.prepare('DELETE FROM pack_leases WHERE expires <= ?').run(now);
  readLeases(now);
  db.exec(
    `INSERT INTO temp.gc_dead (id) SELECT c.id FROM chunks c
     WHERE NOT EXISTS (SELECT 1 FROM temp.gc_mark m WHERE m.id = c.id)
       AND NOT EXISTS (SELECT 1 FROM temp.gc_leased l WHERE l.id = c.id)`,
  );
  report.chunksStored = db.prepare<[], { n: number }>('SELECT count(*) AS n FROM chunks').get()!.n;

  if (opts.dryRun) {
    reviveLeasedBases();
    const d = db.prepare<[], { n: number; b: number | null }>('SELECT count(*) AS n, sum(c.stored_size) AS b FROM temp.gc_dead d JOIN chunks c ON c.id = d.id').get()!;
    report.chunksRemoved = d.n;
    report.bytesRemoved = d.b ?? 0;
    report.snapshots = marked.size;
    report.chunksReferenced = db.prepare<[], { n: number }>('SELECT count(*) AS n FROM temp.gc_mark').get()!.n;
    report.seconds = (performance.now() - t0) / 1000;
    return report;
  }

  // 3. sweep
  for (let round = 0; ; round++) {
    if (round > 100) throw new KuraError('E_LOCKED', 'gc could not finish its sweep: snapshots keep arriving faster than it can mark them; run it again later');
    await mark([...(await storeSnapshots()), ...cat.snapshotIds()]);
    let raced = false;
    db.transaction(() => {
      for (const id of cat.snapshotIds()) {
        if (!marked.has(id)) {
          raced = true; // committed between the mark and this transaction: mark it too, then retry
          return;
        }
      }
      // the leases as they are now, inside the transaction that decides
      readLeases(Date.now());
      db.exec('DELETE FROM temp.gc_dead WHERE id IN (SELECT id FROM temp.gc_mark) OR id IN (SELECT id FROM temp.gc_leased)');
      reviveLeasedBases();
      db.exec('INSERT OR IGNORE INTO gc_pending (pack) SELECT DISTINCT c.pack FROM chunks c JOIN temp.gc_dead d ON d.id = c.id');
      const d = db.prepare<[], { n: number; b: number | null }>('SELECT count(*) AS n, sum(c.stored_size) AS b FROM temp.gc_dead d JOIN chunks c ON c.id = d.id').get()!;
      report.chunksRemoved = d.n;
      report.bytesRemoved = d.b ?? 0;
      db.exec('DELETE FROM chunk_rows WHERE id IN (SELECT id FROM temp.gc_dead)');
    }).immediate();
    if (!raced) break;
  }
  report.snapshots = marked.size;
  report.chunksReferenced = db.prepare<[], { n: number }>('SELECT count(*) AS n FROM temp.gc_mark').get()!.n;
  db.exec('DELETE FROM temp.gc_mark; DELETE FROM temp.gc_dead; DELETE FROM temp.gc_leased;');

  // 4. packs
  await rewritePending(repo, report, opts.packBytes ?? DEFAULT_PACK_BYTES);
  await deleteCondemned(repo, report);
  await deleteOrphans(repo, report);
  await deleteCondemned(repo, report);
  cat.forgetEmptyPacks();
  if (store.local) report.tempFilesRemoved = await store.local.removeStaleTemps(3_600_000);
  await store.sync();
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}

interface Moving {
  id: Buffer;
  from: string;
  blob: Buffer;
  /** the digest recorded when the blob was first written (null: before pack format 2; computed from the verified pack) */
  digest: Buffer | null;
}

async function rewritePending(repo: Repository, report: GcReport, packBytes: number): Promise<void> {
  const cat = repo.catalogue;
  const db = cat.db;
  const store = repo.store;
  const rowsOf = db.prepare<[string], { id: Buffer; offset: number; stored_size: number; digest: Buffer | null }>('SELECT id, offset, stored_size, digest FROM chunks WHERE pack = ? ORDER BY offset');
  const anyRow = db.prepare<[string], { x: number }>('SELECT 1 AS x FROM chunks WHERE pack = ? LIMIT 1');
  const leased = db.prepare<[string, number], { x: number }>('SELECT 1 AS x FROM pack_leases WHERE pack = ? AND expires > ?');
  const done = db.prepare('DELETE FROM gc_pending WHERE pack = ?');
  const move = db.prepare('UPDATE chunks SET pack = ?, offset = ?, digest = ? WHERE id = ? AND pack = ?');

  /**
   * Condemn `pack` if nothing refers to it, inside the (write) transaction that checks it, so no
   * session can lease it in between; deleteCondemned() removes the object afterwards.
   */
  const condemnIfUnused = (pack: string): boolean => {
    if (anyRow.get(pack) || leased.get(pack, Date.now())) return false;
    cat.condemned.condemn(pack);
    return true;
  };

  let out: Moving[] = [];
  let outBytes = 0;
  let sources: Array<{ pack: string; size: number }> = [];
  const flush = async () => {
    if (out.length > 0) {
      const pack = await storePack(store, out);
      report.packsWritten++;
      report.bytesRewritten += pack.size;
      report.bytesFreed -= pack.size;
      db.transaction(() => {
        pack.entries.forEach((e, i) => move.run(pack.id, e.offset, e.digest, e.id, out[i]!.from));
        // the new pack needs the bases of exactly the deltas it holds
        cat.bases.addPack(
          pack.id,
          pack.entries.map((e, i) => ({ offset: e.offset, bases: blobInfo(out[i]!.blob)?.bases.map((b) => Buffer.from(b)) ?? [] })).filter((d) => d.bases.length > 0),
        );
      }).immediate();
      // a second transaction: were the pack condemned in the one that moves the rows, nothing
      // would be lost, but the moved rows must be committed before any delete can start
      db.transaction(() => {
        for (const s of sources) {
          if (condemnIfUnused(s.pack)) {
            report.bytesFreed += s.size;
            report.packsRewritten++;
          }
          done.run(s.pack);
        }
      }).immediate();
    }
    out = [];
    outBytes = 0;
    sources = [];
  };

  const pending = db.prepare<[], { pack: string }>('SELECT pack FROM gc_pending ORDER BY pack').all();
  for (const { pack } of pending) {
    const rows = rowsOf.all(pack);
    const st = await store.stat(packName(pack));
    if (rows.length === 0) {
      db.transaction(() => {
        if (condemnIfUnused(pack)) {
          report.packsDeleted++;
          report.bytesFreed += st?.size ?? 0;
        }
        done.run(pack);
      }).immediate();
      continue;
    }
    const bytes = await store.get(packName(pack));
    // a damaged pack is rewritten only if every live blob still hashes to its recorded digest (the
    // damage lies in a quarantined copy or outside the blobs): a copy must never certify rot
    const whole = (r: { offset: number; stored_size: number; digest: Buffer | null }) => r.digest !== null && r.offset + r.stored_size <= bytes!.length && blobDigest(bytes!.subarray(r.offset, r.offset + r.stored_size)).equals(r.digest);
    if (!bytes || (packId(bytes) !== pack && !rows.every(whole))) {
      report.problems.push(`pack ${pack} is ${bytes ? 'damaged' : 'missing'}; its live chunks were left where they are. Run "kura check --read-data --repair"`);
      done.run(pack);
      continue;
    }
    for (const r of rows) {
      out.push({ id: r.id, from: pack, blob: bytes.subarray(r.offset, r.offset + r.stored_size), digest: r.digest });
      outBytes += r.stored_size;
    }
    sources.push({ pack, size: bytes.length });
    if (outBytes >= packBytes) await flush();
  }
  await flush();
}

async function deleteOrphans(repo: Repository, report: GcReport): Promise<void> {
  const db = repo.catalogue.db;
  const referenced = new Set(db.prepare<[], { pack: string }>('SELECT DISTINCT pack FROM chunks').all().map((r) => r.pack));
  // condemned but not deleted yet (a failed delete): counted when condemned, deleted by the next pass
  for (const p of repo.catalogue.condemned.list()) referenced.add(p);
  const anyRow = db.prepare<[string], { x: number }>('SELECT 1 AS x FROM chunks WHERE pack = ? LIMIT 1');
  const leased = db.prepare<[string, number], { x: number }>('SELECT 1 AS x FROM pack_leases WHERE pack = ? AND expires > ?');
  for await (const { name, size } of repo.store.listWithSizes('packs/')) {
    const id = name.slice(name.lastIndexOf('/') + 1);
    if (!SNAP_RE.test(id) || referenced.has(id)) continue;
    db.transaction(() => {
      if (anyRow.get(id) || leased.get(id, Date.now())) return;
      repo.catalogue.condemned.condemn(id);
      report.orphanPacks++;
      report.bytesFreed += size;
    }).immediate();
  }
}

/** Phase two of every delete: claim each condemned pack (a transaction), delete its object, forget it. */
async function deleteCondemned(repo: Repository, report: GcReport): Promise<void> {
  const cat = repo.catalogue;
  for (const pack of cat.condemned.list()) {
    if (!cat.condemned.claim(pack)) continue; // taken back by a session, or in use again
    try {
      await repo.store.delete(packName(pack));
    } catch (e) {
      report.problems.push(`pack ${pack} could not be deleted (${(e as Error).message}); the next gc tries again`);
      cat.condemned.release(pack);
      continue;
    }
    cat.condemned.forget(pack);
  }
}
