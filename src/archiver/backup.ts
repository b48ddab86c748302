import { hostname } from 'node:os';
import type { ChunkerParams } from '../chunker/fastcdc.js';
import { ChunkPipeline, type Fillable, type Segment } from '../chunker/pipeline.js';
import { CHUNK_ID_BYTES } from '../crypto/blob.js';
import { packName, snapshotName } from '../store/backend.js';
import type { ChunkRow } from '../repository/catalogue.js';
import { PACK_ENTRY, PACK_TRAILER, storePack } from '../repository/pack.js';
import { DIGEST_BYTES } from '../repository/digest.js';
import { quarantineBlobs, type DamagedBlob } from '../repository/quarantine.js';
import { scrubPacks } from '../checker/scrub.js';
import { log } from '../log.js';
import { buildListTree, LIST_BLOB_HEADER, sealListBlock } from '../repository/chunklist.js';
import { writeCachedList } from '../repository/list-cache.js';
import { alignedBases, endPrint, EndIndex } from './chunk-ends.js';
import type { Repository } from '../repository/repository.js';
import { encodeSnapshot, type SnapshotHeader, type SnapshotPrivate } from '../repository/snapshot.js';
import { SealPool } from './seal-pool.js';
import { BaseChooser, BaseLocator, PreviousRows, SharedRooms, basesBytes, readBases } from './delta-bases.js';
import { basesWorthTrying } from '../crypto/delta-policy.js';
import { Batches, holdable, type Batch, type NewChunk } from './batch.js';
import { ByteBudget, PACK_TARGET, RemoteBatchSizer } from './upload-pacing.js';
import { gathered, PackMerger, type MergedPack } from './pack-merge.js';
import type { SealResponse } from './seal-worker.js';
import { holdHeapGrowth } from '../heap-growth.js';
import { ByteList } from './byte-list.js';
import { NO_PREVIOUS, previousChunks, type Previous } from './previous.js';

export { SealPool, ChunkPipeline };

export interface BackupOptions {
  source: string;
  tenant: string;
  host?: string;
  tags?: string[];
  compressionLevel?: number;
  private?: SnapshotPrivate;
  /** Chunk sizes for this snapshot (default: the repository's); boundaries use the repository's gear table either way. */
  chunker?: ChunkerParams | undefined;
  /** Routes the snapshot is queued for, in the same transaction that records it. */
  routes?: string[];
  /** Worker threads for compression+encryption (default: one per core). */
  workers?: number;
  /** A pool started earlier (its start-up overlapping the key derivation); closed here. */
  pool?: SealPool;
  /** The chunking and hashing thread, likewise started early; closed here. */
  pipeline?: ChunkPipeline;
  /** Store changed chunks as deltas of the previous generation's where that is smaller (default true). */
  delta?: boolean;
  /** Stored bytes of packs the scrub before the backup reads at most (default SCRUB_BYTES; 0: none). */
  scrubBytes?: number;
  /** Told the input bytes chunked so far and the new bytes stored, once a segment (a progress meter). */
  progress?: (bytes: number, newBytes: number) => void;
}

export interface BackupResult {
  id: string;
  header: SnapshotHeader;
  seconds: number;
  /** stored blobs this backup would have reused but found damaged: quarantined and stored anew, and the older snapshots they damaged */
  damage?: { chunks: string[]; snapshots: string[] };
}

const BATCH_BYTES = 4 << 20; // new chunks per worker message (a pack, or part of a gathered one); 2 and 1 MiB measured slower
/** At most this many bytes of packs are uploading at once (4 PUTs in flight measured 191 MB/s on Ceph RGW against 105 MB/s for one). */
const UPLOAD_BYTES = 64 << 20;

const COMMIT_BYTES = 64 << 20; // new data between catalogue commits (each preceded by a store sync)
// ... or this many new chunks: a night of small deltas (~300 B each) would otherwise hold every
// row of the backup in memory until the end (27 000 rows ≈ 40 MB of small buffers, measured)
const COMMIT_ROWS = 8192;

/** A batch sealed, waiting in a pack gathered from small ones to be stored. */
interface Sealed {
  b: Batch;
  res: SealResponse;
  /** the IDs of the bases its deltas may name (SealBases.ids) */
  baseIds: Uint8Array | null;
}

/**
 * The backup pipeline: input → FastCDC (own thread) → keyed BLAKE3 → skip known chunks →
 * (workers) zstd + AES-GCM → a pack per batch, small ones gathered → store. Write order: packs
 * (made durable by store.sync) → catalogue rows → snapshot file → catalogue snapshot row. A
 * crash anywhere leaves only unreferenced packs; a failed input leaves no snapshot.
 */
export async function backup(repo: Repository, input: AsyncIterable<Uint8Array> | Fillable, opts: BackupOptions): Promise<BackupResult> {
  const held = holdHeapGrowth();
  try {
    return await backupHeld(repo, input, opts);
  } finally {
    held();
  }
}

async function backupHeld(repo: Repository, input: AsyncIterable<Uint8Array> | Fillable, opts: BackupOptions): Promise<BackupResult> {
  const previous = previousChunks(repo, opts.source);
  // a GC of this repository must not remove chunks this backup counts as already stored
  let lock: { release: () => void };
  try {
    await repo.keysReady; // a repository opened with deferred keys: the derivation ends here
    lock = repo.catalogue.acquireLock('backup', ['gc']);
  } catch (e) {
    await previous;
    await opts.pool?.close();
    await opts.pipeline?.close();
    throw e;
  }
  const pipeline = opts.pipeline ?? new ChunkPipeline();
  try {
    const prev = await previous;
    const kept = prev.id !== null && repo.catalogue.snapshotHeader(prev.id) ? prev : NO_PREVIOUS;
    // what this backup will deduplicate against must still be what was written
    const checked = await checkStored(repo, prev.id, opts.scrubBytes ?? (repo.store.local ? SCRUB_BYTES : REMOTE_SCRUB_BYTES));
    for (const p of checked.problems) log().warn({ source: opts.source }, p);
    const res = await runBackup(repo, input, opts, pipeline, kept, checked.unusable);
    const damaged = checked.damaged;
    if (damaged.length === 0) return res;
    const snapshots = (await quarantineBlobs(repo, damaged, 'backup', null)).filter((s) => s !== res.id);
    const chunks = damaged.map((d) => d.chunk.toString('hex'));
    log().warn({ source: opts.source, chunks, snapshots }, `${damaged.length} stored blob(s) were found damaged and quarantined; this backup stored what it met of them anew, and ${snapshots.length} older snapshot(s) referenced them ("kura snapshots" shows which stay damaged)`);
    return { ...res, damage: { chunks, snapshots } };
  } finally {
    await pipeline.close();
    lock.release();
  }
}

/** Stored bytes the scrub before a backup reads at most (the next backup goes on from there). */
export const SCRUB_BYTES = 4 * 2 ** 30;
/**
 * The same on an object store, where every byte scrubbed is downloaded again each night (an
 * unchanged rerun of a 1 GiB dump took 21 s instead of 5 with the whole repository read): a
 * smaller rolling share, the cursor going on from night to night. The store checksums and
 * scrubs its own objects too (Ceph's deep scrub).
 */
export const REMOTE_SCRUB_BYTES = 256 * 2 ** 20;

/**
 * Before the backup deduplicates against what the repository holds, the packs it would rely on
 * are scrubbed (checker/scrub.ts: read whole, hashed against their IDs; only a pack that fails is
 * looked into blob by blob): a damaged blob is quarantined at once, out of the index, so this
 * backup stores that chunk anew when it meets it. `unusable`: chunks of the previous generation
 * that are not stored whole now (base64 IDs), never taken as stored. What it costs: docs/format.md.
 */
async function checkStored(repo: Repository, previousId: string | null, budgetBytes: number): Promise<{ unusable: Set<string>; damaged: DamagedBlob[]; problems: string[] }> {
  const scrub = budgetBytes > 0 ? await scrubPacks(repo, { budgetBytes, cursorKey: 'scrub.backup' }) : { damaged: [], problems: [] };
  // out of the index before the first dedup lookup; which snapshots they damage is found after
  if (scrub.damaged.length > 0) repo.catalogue.quarantine.add(scrub.damaged, 'backup', previousId);
  // and deltas whose base is gone: whole, but not to be opened until it is stored again
  const unusable = new Set([...repo.catalogue.quarantine.unhealed(), ...repo.catalogue.quarantine.orphanedDeltas()].map((id) => id.toString('base64')));
  return { unusable, damaged: scrub.damaged, problems: scrub.problems };
}

async function runBackup(
  repo: Repository,
  input: AsyncIterable<Uint8Array> | Fillable,
  opts: BackupOptions,
  pipeline: ChunkPipeline,
  previous: Previous,
  unusable: ReadonlySet<string>,
): Promise<BackupResult> {
  const known = previous.set;
  const t0 = process.hrtime.bigint();
  const startTime = new Date().toISOString();
  const keys = repo.keys;
  const level = opts.compressionLevel ?? repo.config.compression.level;
  const params = opts.chunker ?? repo.config.chunker;
  pipeline.start(params, keys.gearSeed, keys.idKey);
  // the workers hand each pack back to be stored here; on a local disk they read delta bases themselves
  const local = repo.store.local ?? null;
  const pool = opts.pool ?? new SealPool(keys, local?.root ?? null, opts.workers);
  if (opts.pool) pool.setKey(keys);
  const store = repo.store;
  const catalogue = repo.catalogue;

  const ids = new ByteList();
  const sizes = new ByteList(); // the chunks' plaintext sizes, u32 each (for the list cache)
  const endPrints = new ByteList(); // the fingerprints of the chunks' ends, u32 each (for the list cache)
  // `known`, the previous generation's chunks, answers most dedup lookups without a catalogue query
  // changed chunks may be stored as deltas of the previous generation's: on a local disk the
  // workers read the bases themselves, from an object store they are fetched for them (readBases)
  const rows = opts.delta === false || level <= 0 || known.length === 0 ? null : new PreviousRows(known, catalogue, previous.sizes);
  const chooser = rows ? new BaseChooser(rows) : null;
  const locator = rows ? new BaseLocator(repo, rows) : null;
  // a changed chunk ending as an old one did replaces it (and those since the last match)
  const ends = rows && previous.ends ? new EndIndex(previous.ends) : null;
  // where the last chunk found unchanged ends: in bytes here, as a chunk index in the previous generation
  let anchorBytes = 0;
  let anchorOld = 0;
  const inFlightKeys = new Set<string>(); // new chunks not yet in the catalogue
  let logicalBytes = 0;
  let chunkCount = 0;
  let newChunks = 0;
  let newBytes = 0;

  let pendingRows: Array<ChunkRow & { key: string }> = [];
  let pendingRowBytes = 0;
  const running = new Set<Promise<void>>();
  // each worker holds a second request while it works on one (REQUESTS_PER_WORKER), so no batch
  // waits besides: one more cost peak RSS and no time (alternated runs). On a local disk, 4 runs
  // each: 488 MB first backup 1.13-1.17 s at 123-125 MiB against 1.13-1.77 s at 129-130; its night
  // 7 2.61-2.88 s at 157-159 MiB against 2.77-2.85 s at 162-164; the 8 GB night 2, 2 runs,
  // 24.7-24.9 s at 180-181 MiB against 24.5-24.9 s at 185-190. To Ceph RGW, 3 runs each: the
  // 488 MB first backup 1.58-1.90 s against 1.57-1.80 s, at 160-164 MiB either way; its night 2
  // 2.70-3.49 s (median 3.01) at 226-229 MiB against 2.58-3.02 s (2.87) at 250-255 (batches of
  // up to 24 MiB then, see RemoteBatchSizer)
  const maxRunning = pool.slots;
  let failure: unknown = null;

  const sizer = local ? null : new RemoteBatchSizer();
  const merger = new PackMerger<Sealed>(sizer ? sizer.target : PACK_TARGET);
  const batchCapacity = (local ? BATCH_BYTES : sizer!.max) + params.maxSize; // (pages past what a batch fills are never touched)
  const uploads = new ByteBudget(UPLOAD_BYTES);
  const rooms = new SharedRooms(pool.slots);
  const batches = new Batches(batchCapacity);
  const newBatch = () => batches.create(sizer ? sizer.next() : BATCH_BYTES);
  let batch = newBatch();
  const ready: Batch[] = [];

  // chunks once quarantined are stored anew whole: a delta's base is never itself a delta, and
  // deltas stored before may name them as their base
  const quarantined = new Set([...catalogue.quarantine.chunkIds()].map((hex) => Buffer.from(hex, 'hex').toString('base64')));

  /** A chunk that is not in the previous generation: to be stored (with its candidate bases) unless the catalogue has it. */
  const onNewChunk = (chunk: Buffer, id: Buffer, at: number, endPrint: number): NewChunk | null => {
    // its bases: the old chunks up to the one that ended the same way, else those at its estimated place
    let candidates: number[] = [];
    const match = ends ? ends.find(endPrint, anchorOld) : -1;
    if (match >= 0) {
      candidates = alignedBases(anchorOld, match);
      anchorOld = match + 1;
      anchorBytes = at + chunk.length;
    } else if (chooser) candidates = chooser.choose(anchorOld, at - anchorBytes);
    // old chunks far larger than this one (the source's chunk size was lowered): stored whole
    if (candidates.length > 0 && !basesWorthTrying(chunk.length, candidates.reduce((n, k) => n + rows!.plainSize(k), 0))) candidates = [];
    const key = id.toString('base64');
    if (inFlightKeys.has(key) || (catalogue.hasChunk(id) && (unusable.size === 0 || !unusable.has(key)))) return null;
    inFlightKeys.add(key);
    return { chunk, id, key, bases: chooser && !quarantined.has(key) ? candidates : [] };
  };

  const onSegment = (seg: Segment) => {
    ids.append(seg.ids);
    const { cuts, data } = seg;
    const n = cuts.length / 2;
    const lengths = new Uint32Array(n);
    const prints = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      lengths[i] = cuts[2 * i + 1]!;
      prints[i] = endPrint(data, cuts[2 * i]!, cuts[2 * i]! + cuts[2 * i + 1]!);
    }
    sizes.append(Buffer.from(lengths.buffer));
    endPrints.append(Buffer.from(prints.buffer));
    chunkCount += n;
    const words = seg.ids.byteOffset % 4 === 0 ? new Int32Array(seg.ids.buffer, seg.ids.byteOffset, seg.ids.length / 4) : null;
    const start = logicalBytes;
    const fresh: NewChunk[] = [];
    let freshBytes = 0;
    for (let i = 0; i < n; i++) {
      const at = logicalBytes;
      logicalBytes += cuts[2 * i + 1]!;
      // most chunks are last night's: one probe of the in-memory set, nothing allocated
      const old = words ? known.indexAtWords(words, i * 8) : known.indexAt(seg.ids, i * CHUNK_ID_BYTES);
      if (old >= 0 && (unusable.size === 0 || !unusable.has(seg.ids.toString('base64', i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES)))) {
        anchorBytes = logicalBytes;
        anchorOld = old + 1;
        continue;
      }
      const id = Buffer.from(seg.ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES));
      const c = onNewChunk(data.subarray(cuts[2 * i]!, cuts[2 * i]! + cuts[2 * i + 1]!), id, at, prints[i]!);
      if (!c) continue;
      fresh.push(c);
      freshBytes += c.chunk.length;
    }
    // mostly new (a first backup, a heavy night): the seal workers read the new chunks where they are
    const where = holdable(seg, freshBytes, logicalBytes - start);
    for (const c of fresh) {
      if (!batches.add(batch, c, where)) continue;
      ready.push(batch);
      batch = newBatch();
    }
    opts.progress?.(logicalBytes, newBytes);
  };

  const commitRows = async () => {
    if (pendingRows.length === 0) return;
    const rows = pendingRows;
    pendingRows = [];
    pendingRowBytes = 0;
    await store.sync();
    catalogue.addChunks(rows);
    for (const r of rows) inFlightKeys.delete(r.key);
  };

  /** Bytes of packs uploading at once stay within UPLOAD_BYTES. */
  const upload = async (packId: string, data: Uint8Array | Uint8Array[], size: number, sha256?: string) => {
    await uploads.acquire(size);
    try {
      await store.put(packName(packId), data, { sha256 });
    } finally {
      uploads.release(size);
    }
  };

  /** The catalogue rows of a batch's chunks, now that its blobs are stored in `packId` from `at`. */
  const stored = async (b: Batch, res: SealResponse, baseIds: Uint8Array | null, packId: string, at: number) => {
    pendingRowBytes += res.blobOffsets[b.ids.length]!;
    let used = 0;
    b.ids.forEach((id, i) => {
      const offset = at + res.blobOffsets[i]!;
      const rowBases: Buffer[] = [];
      for (let k = 0; k < res.baseCount[i]!; k++) {
        const r = res.usedBases[used++]!;
        rowBases.push(Buffer.from(baseIds!.subarray(r * CHUNK_ID_BYTES, (r + 1) * CHUNK_ID_BYTES)));
      }
      const digest = Buffer.from(res.digests.buffer, res.digests.byteOffset + i * DIGEST_BYTES, DIGEST_BYTES);
      const replace = unusable.size > 0 && unusable.has(b.keys[i]!);
      pendingRows.push({ id, pack: packId, offset, storedSize: res.blobOffsets[i + 1]! - res.blobOffsets[i]!, plainSize: b.offsets[i + 1]! - b.offsets[i]!, key: b.keys[i]!, bases: rowBases, digest, replace });
    });
    if (pendingRowBytes >= COMMIT_BYTES || pendingRows.length >= COMMIT_ROWS) await commitRows();
  };

  /** A pack gathered from small ones: one file or PUT, then the rows of every batch in it. */
  const storeMerged = async (m: MergedPack<Sealed>) => {
    await upload(m.id, m.parts, m.size);
    merger.release(m);
    newBytes += PACK_TRAILER;
    for (const { tag, at } of m.members) await stored(tag.b, tag.res, tag.baseIds, m.id, at);
  };

  const sealAndStore = async (b: Batch) => {
    const idBuf = Buffer.concat(b.ids);
    const bases = locator ? locator.locate(b.bases) : null;
    const room = bases && !local ? rooms.take(basesBytes(bases)) : null;
    let res: SealResponse;
    try {
      if (room) await readBases(store, bases!, room);
      const { data, elsewhere } = Batches.request(b);
      res = await pool.seal(level, data, Uint32Array.from(b.offsets), idBuf.buffer.slice(idBuf.byteOffset, idBuf.byteOffset + idBuf.length) as ArrayBuffer, bases, elsewhere, { sha256: !local });
    } finally {
      if (room) rooms.give(room);
    }
    batches.answered(b, res.data);
    const packBytes = res.blobOffsets[b.ids.length]!;
    sizer?.seen(b.used, packBytes);
    newBytes += packBytes + b.ids.length * PACK_ENTRY;
    newChunks += b.ids.length;
    // the pack the worker handed back: stored alone if large enough or of many small chunks, else gathered with others
    const pack = res.pack!;
    const run = { blobs: new Uint8Array(pack, 0, packBytes), blobOffsets: res.blobOffsets, ids: b.ids, digests: res.digests };
    if (merger.alone(run) || !gathered(b.ids.length, local !== null)) {
      await upload(res.packId, Buffer.from(pack, 0, res.packLength), res.packLength, res.packSha256 ?? undefined);
      pool.recycle(pack);
      newBytes += PACK_TRAILER;
      return stored(b, res, bases?.ids ?? null, res.packId, 0);
    }
    // a batch may wait in a gathered pack till the end of a night of deltas: it keeps its bases'
    // IDs for its rows, not the blobs read for the worker (a whole previous generation, 141 MB
    // for a 488 MB night, measured)
    const full = merger.add(run, { b, res, baseIds: bases?.ids ?? null });
    pool.recycle(pack);
    res.pack = null; // the worker builds its next packs in it
    if (full) await storeMerged(full);
  };

  const dispatch = async (b: Batch) => {
    const p = sealAndStore(b).catch((e) => {
      failure ??= e;
    });
    running.add(p);
    void p.finally(() => running.delete(p));
    while (running.size >= maxRunning) await Promise.race(running);
    if (failure) throw failure;
  };

  try {
    // boundaries are found on the chunking thread while this one hashes the segment before
    await pipeline.run(input, async (seg) => {
      onSegment(seg);
      while (ready.length > 0) await dispatch(ready.shift()!);
    });
    if (batch.ids.length > 0) ready.push(batch);
    while (ready.length > 0) await dispatch(ready.shift()!);
    await Promise.all(running);
    if (failure) throw failure;
    const last = merger.take();
    if (last) await storeMerged(last);
    await commitRows();
  } catch (e) {
    // keep what is already durable so a rerun does not redo it; the snapshot is not written
    await Promise.allSettled(running);
    await commitRows().catch(() => {});
    await pool.close();
    throw e;
  }
  await pool.close();

  // the chunk list, cut into blocks stored like chunks: unchanged blocks are last night's
  const newBlocks: Array<{ id: Buffer; blob: Buffer }> = [];
  const seenBlocks = new Set<string>();
  const tree = buildListTree(ids.bytes(), (id, block) => {
    // most blocks are last night's (stored: that snapshot is kept while this backup holds its lock)
    if (previous.blocks.has(id) && (unusable.size === 0 || !unusable.has(id.toString('base64')))) return;
    const k = id.toString('base64');
    if (seenBlocks.has(k) || catalogue.hasChunk(id)) return;
    seenBlocks.add(k);
    newBlocks.push({ id: Buffer.from(id), blob: sealListBlock(block) });
  });
  if (newBlocks.length > 0) {
    const pack = await storePack(store, newBlocks);
    catalogue.addChunks(pack.entries.map((e, i) => ({ id: e.id, pack: pack.id, offset: e.offset, storedSize: e.length, plainSize: newBlocks[i]!.blob.length - LIST_BLOB_HEADER, digest: e.digest })));
    newBytes += pack.size;
  }

  const parent = catalogue.snapshots({ source: opts.source }).at(-1)?.id ?? null;
  const header: SnapshotHeader = {
    tenant: opts.tenant,
    source: opts.source,
    host: opts.host ?? hostname(),
    startTime,
    endTime: new Date().toISOString(),
    logicalBytes,
    chunkCount,
    newChunks,
    newBytes,
    parent,
    tags: opts.tags ?? [],
    listDepth: tree.depth,
    chunker: { minSize: params.minSize, avgSize: params.avgSize, maxSize: params.maxSize },
  };
  const snap = encodeSnapshot(header, tree.top, opts.private ?? {}, keys.dataKey);
  await store.putIfAbsent(snapshotName(snap.id), snap.bytes);
  await store.sync();
  catalogue.db.transaction(() => {
    catalogue.addSnapshot(snap.id, header);
    for (const r of opts.routes ?? []) catalogue.ops.enqueue(snap.id, r, header.source, header.endTime);
  })();
  await writeCachedList(repo.root, opts.source, snap.id, ids.bytes(), sizes.bytes(), endPrints.bytes());
  return { id: snap.id, header, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

