import { KuraError } from '../errors.js';
import { blobInfo } from '../crypto/blob.js';
import { DeltaOpener } from '../restorer/bases.js';
import { packName } from '../store/backend.js';
import type { Repository } from '../repository/repository.js';
import type { ChunkRow } from '../repository/catalogue.js';
import { packId, packIndexLength, parsePackIndex, type PackEntry } from '../repository/pack.js';
import { blobDigest } from '../repository/digest.js';
import { quarantineBlobs, type DamagedBlob } from '../repository/quarantine.js';
import { decodeSnapshot, openSnapshotPrivate, snapshotChunkIds, type DecodedSnapshot } from '../repository/snapshot.js';
import { idsOf, isListBlob, openListBlob, type BlobFetcher } from '../repository/chunklist.js';

export type ProblemKind = 'snapshot-corrupt' | 'pack-corrupt' | 'chunk-missing' | 'chunk-corrupt' | 'chunk-quarantined' | 'catalogue-stale';

export interface CheckProblem {
  kind: ProblemKind;
  message: string;
  chunk?: string;
  pack?: string;
  snapshot?: string;
  snapshots?: string[];
}

export interface CheckReport {
  ok: boolean;
  snapshots: number;
  packs: number;
  chunksReferenced: number;
  chunksStored: number;
  chunksUnreferenced: number;
  chunksRead: number;
  /** of those read, blobs without a recorded digest that could only be checked for their structure (no key; written before pack format 2) */
  chunksUnverified: number;
  readData: boolean;
  /** read with the key (decrypted and re-hashed), or without (digests, list block IDs, pack IDs) */
  keyless: boolean;
  /** snapshots that reference a chunk that is damaged, missing or quarantined and not stored again */
  damagedSnapshots: string[];
  /** with --repair: the damaged blobs taken out of the index now */
  quarantined: Array<{ chunk: string; pack: string; offset: number; reason: string }>;
  problems: CheckProblem[];
}

interface Located {
  pack: string;
  offset: number;
  length: number;
  /** recorded digest (pack index or catalogue); null for a blob of pack format 1 */
  digest: Buffer | null;
}

const PACK_ID_RE = /^[0-9a-f]{64}$/;

/** Blobs by ID straight from the packs (pack indexes, not the catalogue). */
/**
 * Requests in flight when reading many objects: an object store answers each after a round
 * trip, so a rebuild that asked one at a time would spend its time waiting (a local disk does
 * not mind).
 */
const PARALLEL_READS = 8;
/** Whole packs fetched at once by rebuild-index. */
const PACK_FETCHES = 4;

/** fn over items with at most `limit` running at once; results in the items' order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Plaintext of the deltas whose bases are fetched together (a group of ranged reads, not one read each). */
const BASES_AHEAD_BYTES = 4 << 20;

/**
 * Fetches the bases of the next deltas of a pack in one go, from `hexes[at]` on, up to
 * BASES_AHEAD_BYTES of their plaintext; returns where that group ends. A delta's base fetched on
 * its own cost one request each: on Ceph RGW, 4 866 deltas took 235 s to check. A group whose
 * bases cannot all be read is left to the blob-by-blob reads, which name the one at fault.
 */
async function basesAhead(opener: DeltaOpener, bytes: Buffer, hexes: readonly string[], at: number, what: string, where: Map<string, Located>): Promise<number> {
  const group: Array<{ id: Buffer; blob: Buffer }> = [];
  let plain = 0;
  let end = at;
  for (; end < hexes.length && plain < BASES_AHEAD_BYTES; end++) {
    const loc = where.get(hexes[end]!)!;
    const blob = bytes.subarray(loc.offset, loc.offset + loc.length);
    const info = isListBlob(blob) ? null : blobInfo(blob);
    if (!info || info.bases.length === 0) continue;
    plain += info.plainLength;
    group.push({ id: Buffer.from(hexes[end]!, 'hex'), blob });
  }
  if (group.length < 2) return end;
  try {
    await opener.prepare(group, `the deltas of ${what}`);
  } catch (e) {
    if (!(e instanceof KuraError)) throw e;
  }
  return end;
}

function packFetcher(repo: Repository, where: Map<string, Located>): BlobFetcher {
  return async function* (ids, what) {
    // one ranged read per pack (getRanges coalesces nearby blobs), packs read side by side
    const list = [...ids];
    const byPack = new Map<string, number[]>();
    list.forEach((id, i) => {
      const loc = where.get(id.toString('hex'));
      if (!loc) throw new KuraError('E_CHUNK_MISSING', `chunk ${id.toString('hex')} of ${what} is in no pack of the store`, { chunk: id.toString('hex') });
      const members = byPack.get(loc.pack);
      if (members) members.push(i);
      else byPack.set(loc.pack, [i]);
    });
    const blobs: Array<Buffer | null> = new Array(list.length).fill(null);
    await mapLimit([...byPack], PARALLEL_READS, async ([pack, members]) => {
      const got = await repo.store.getRanges(packName(pack), members.map((i) => where.get(list[i]!.toString('hex'))!));
      members.forEach((i, k) => (blobs[i] = got?.[k] ?? null));
    });
    for (let i = 0; i < list.length; i++) {
      const blob = blobs[i];
      const id = list[i]!;
      if (!blob || blob.length !== where.get(id.toString('hex'))!.length) throw new KuraError('E_CHUNK_MISSING', `chunk ${id.toString('hex')} of ${what} is in no pack of the store`, { chunk: id.toString('hex') });
      yield { id, blob };
    }
  };
}

/**
 * Every snapshot's referenced chunks: its chunk list blocks, its data chunks and the base chunks
 * of its deltas (`bases`: from the catalogue, or from the blobs' headers when rebuilding it).
 */
async function referencedBy(repo: Repository, s: DecodedSnapshot, where: Map<string, Located>, bases: (ids: Buffer[]) => Buffer[]): Promise<Buffer[]> {
  const blocks: Buffer[] = [];
  const data = [...idsOf(await snapshotChunkIds(s, packFetcher(repo, where), (b) => blocks.push(b)))];
  return [...blocks, ...data, ...bases(data)];
}

/** Every pack's index, read from the tail of each pack (no keys needed). */
async function readPackIndexes(repo: Repository, onBad: (pack: string, why: string) => void): Promise<Map<string, PackEntry[]>> {
  const out = new Map<string, PackEntry[]>();
  const names: string[] = [];
  const sizes: number[] = [];
  // sizes from the listing: no request per pack before its tail is read
  for await (const { name, size } of repo.store.listWithSizes('packs/')) {
    if (!PACK_ID_RE.test(name.slice(name.lastIndexOf('/') + 1))) continue;
    names.push(name);
    sizes.push(size);
  }
  const read = await mapLimit(names, PARALLEL_READS, async (name, i) => {
    const size = sizes[i]!;
    let tail = await repo.store.getRange(name, -Math.min(size, 16384), Math.min(size, 16384));
    if (!tail) return undefined; // gone since the listing
    const need = packIndexLength(tail);
    if (need !== null && need > tail.length && need <= size) tail = await repo.store.getRange(name, -need, need);
    return tail ? parsePackIndex(tail, size) : null;
  });
  names.forEach((name, i) => {
    const id = name.slice(name.lastIndexOf('/') + 1);
    const entries = read[i];
    if (entries === undefined) return; // gone meanwhile
    if (!entries) onBad(id, `pack ${id} has no readable index (truncated or damaged file)`);
    else out.set(id, entries);
  });
  return out;
}

/**
 * Structure: every snapshot file verifies against its ID (and, with the key, its private part
 * authenticates); every pack has a readable index; every referenced chunk is in some pack; the
 * catalogue points only at what the packs hold. --read-data: every pack holding referenced
 * chunks is read whole and verified against its ID, and every referenced blob is verified
 * against its recorded digest; with the key it is also decrypted, decompressed and re-hashed.
 * Without a key (a vault tenant), blobs written before pack format 2 can only be checked for
 * their structure (list blocks against their IDs): `chunksUnverified` says how many. Copies in
 * quarantine are not taken for a chunk; a referenced chunk only quarantine holds is a problem
 * until a backup stores it again. With `repair`, damaged blobs found are quarantined (and chunks
 * whose pack is gone taken out of the index), so the next backup that meets the same data stores
 * them anew. Each problem names the snapshots it affects. Unreferenced chunks are reported, not
 * errors: a killed backup leaves them and GC reclaims them.
 */
export async function check(repo: Repository, opts: { readData: boolean; repair?: boolean }): Promise<CheckReport> {
  const problems: CheckProblem[] = [];
  const indexes = await readPackIndexes(repo, (pack, message) => problems.push({ kind: 'pack-corrupt', message, pack }));
  const inQuarantine = repo.catalogue.quarantine.locations();
  const quarantinedIds = repo.catalogue.quarantine.chunkIds();
  const where = new Map<string, Located>();
  for (const [pack, entries] of indexes) {
    for (const e of entries) {
      if (inQuarantine.get(pack)?.has(e.offset)) continue; // a damaged copy: never taken for the chunk
      if (!where.has(e.id.toString('hex'))) where.set(e.id.toString('hex'), { pack, offset: e.offset, length: e.length, digest: e.digest });
    }
  }
  // prefer the copy the catalogue uses, when the packs hold several
  for (const row of repo.catalogue.chunkRows()) {
    const hex = row.id.toString('hex');
    const entry = indexes.get(row.pack)?.find((e) => e.id.equals(row.id));
    if (entry) where.set(hex, { pack: row.pack, offset: entry.offset, length: entry.length, digest: row.digest ?? entry.digest });
  }

  const snaps: DecodedSnapshot[] = [];
  for await (const name of repo.store.list('snapshots/')) {
    const id = name.slice('snapshots/'.length);
    try {
      const bytes = await repo.store.get(name);
      if (!bytes) continue;
      const s = decodeSnapshot(bytes, id);
      if (repo.hasKeys) openSnapshotPrivate(s, repo.keys.dataKey);
      snaps.push(s);
    } catch (e) {
      if (!(e instanceof KuraError) || e.code === 'E_IO') throw e; // a store that fails to answer is no damage
      problems.push({ kind: 'snapshot-corrupt', message: e.message, snapshot: id });
    }
  }

  const referenced = new Set<string>();
  const missing = new Set<string>();
  const refs = new Map<string, Buffer[]>();
  for (const s of snaps) {
    let ids: Buffer[];
    try {
      ids = await referencedBy(repo, s, where, (data) => {
        const bases = repo.catalogue.bases.needed(data);
        for (const prefix of bases.missing) {
          problems.push({ kind: 'chunk-missing', message: `a base chunk (ID ${prefix.toString('hex')}…) of a delta of snapshot ${s.id} is in no pack of the store`, chunk: prefix.toString('hex'), snapshots: [s.id] });
        }
        return bases.found;
      });
    } catch (e) {
      if (!(e instanceof KuraError) || e.code === 'E_IO') throw e; // a store that fails to answer is no damage
      // the list tree itself is damaged or incomplete: what is known of it still counts
      const hex = (e.details?.chunk as string | undefined) ?? '';
      if (hex) missing.add(hex);
      else problems.push({ kind: 'snapshot-corrupt', message: e.message, snapshot: s.id });
      ids = [...idsOf(s.listIds), ...(hex ? [Buffer.from(hex, 'hex')] : [])];
    }
    refs.set(s.id, ids);
    for (const id of ids) {
      const hex = id.toString('hex');
      referenced.add(hex);
      if (!where.has(hex)) missing.add(hex);
    }
  }

  const corrupt = new Map<string, string>();
  const toQuarantine: DamagedBlob[] = [];
  let chunksRead = 0;
  let chunksUnverified = 0;
  if (opts.readData) {
    const keys = repo.hasKeys ? repo.keys : null;
    const opener = keys ? new DeltaOpener(keys, packFetcher(repo, where)) : null;
    const byPack = new Map<string, string[]>();
    for (const hex of referenced) {
      const loc = where.get(hex);
      if (loc) byPack.set(loc.pack, [...(byPack.get(loc.pack) ?? []), hex]);
    }
    for (const [pack, hexes] of byPack) {
      const bytes = await repo.store.get(packName(pack));
      if (!bytes) {
        for (const hex of hexes) missing.add(hex);
        continue;
      }
      // a pack that holds a quarantined copy no longer matches its ID: that damage is known
      if (packId(bytes) !== pack && !inQuarantine.has(pack)) problems.push({ kind: 'pack-corrupt', message: `pack ${pack} does not match its ID (damaged file)`, pack });
      let ahead = 0; // hexes[.. ahead) have had their bases fetched, if any
      for (const [at, hex] of hexes.entries()) {
        if (opener && at === ahead) ahead = await basesAhead(opener, bytes, hexes, at, `pack ${pack}`, where);
        const loc = where.get(hex)!;
        chunksRead++;
        const blob = bytes.subarray(loc.offset, loc.offset + loc.length);
        const id = Buffer.from(hex, 'hex');
        const damaged = (reason: string) => {
          corrupt.set(hex, `${reason} (in pack ${pack})`);
          toQuarantine.push({ chunk: id, pack, offset: loc.offset, length: loc.length, digest: loc.digest, reason });
        };
        if (loc.digest && !blobDigest(blob).equals(loc.digest)) {
          damaged(`chunk ${hex}: stored bytes do not hash to the digest recorded when written`);
          continue;
        }
        try {
          if (isListBlob(blob)) openListBlob(blob, id);
          else if (opener) {
            try {
              await opener.prepare([{ id, blob }], `chunk ${hex}`);
            } catch (e) {
              // a base that is missing or damaged is reported as itself (bases are referenced too);
              // this blob may well be whole. A store that fails to answer is no damage: the check
              // stops, and says so
              if (e instanceof KuraError && e.code !== 'E_IO') continue;
              throw e;
            }
            opener.open(blob, id);
          } else if (!loc.digest) {
            if (!blobInfo(blob)) throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex}: not a blob of a known format (truncated or damaged)`, { chunk: hex });
            chunksUnverified++;
          }
        } catch (e) {
          if (!(e instanceof KuraError) || e.code === 'E_IO') throw e;
          damaged(e.message);
        }
      }
    }
  }

  if (missing.size > 0 || corrupt.size > 0) {
    const affected = new Map<string, string[]>();
    for (const s of snaps) {
      for (const id of refs.get(s.id) ?? []) {
        const hex = id.toString('hex');
        if (missing.has(hex) || corrupt.has(hex)) {
          const list = affected.get(hex) ?? [];
          if (list.at(-1) !== s.id) list.push(s.id);
          affected.set(hex, list);
        }
      }
    }
    for (const hex of missing) {
      if (quarantinedIds.has(hex)) {
        problems.push({ kind: 'chunk-quarantined', message: `chunk ${hex} was found damaged and is quarantined; a backup that meets the same data stores it again (or restore from a vault that holds it)`, chunk: hex, snapshots: affected.get(hex) ?? [] });
      } else problems.push({ kind: 'chunk-missing', message: `chunk ${hex} is in no pack of the store`, chunk: hex, snapshots: affected.get(hex) ?? [] });
    }
    for (const [hex, msg] of corrupt) problems.push({ kind: 'chunk-corrupt', message: msg, chunk: hex, snapshots: affected.get(hex) ?? [] });
  }
  const damagedSnapshots = new Set<string>();
  for (const p of problems) for (const s of p.snapshots ?? []) damagedSnapshots.add(s);

  // repair: damaged copies out of the index (the catalogue's copy only), and rows of chunks whose pack is gone
  const quarantined: CheckReport['quarantined'] = [];
  if (opts.repair) {
    const gone: DamagedBlob[] = [];
    for (const row of repo.catalogue.chunkRows()) {
      if (indexes.has(row.pack) || !missing.has(row.id.toString('hex'))) continue;
      gone.push({ chunk: row.id, pack: row.pack, offset: row.offset, length: row.stored_size, digest: row.digest, reason: `pack ${row.pack} is missing or has no readable index` });
    }
    const all = [...toQuarantine, ...gone];
    if (all.length > 0) {
      repo.catalogue.quarantine.add(all, 'check', null);
      for (const s of snaps) {
        const hit = (refs.get(s.id) ?? []).filter((id) => all.some((d) => d.chunk.equals(id)));
        if (hit.length > 0) repo.catalogue.quarantine.addDamage(s.id, hit);
      }
      for (const d of all) quarantined.push({ chunk: d.chunk.toString('hex'), pack: d.pack, offset: d.offset, reason: d.reason });
    }
  }

  let stale = 0;
  for (const row of repo.catalogue.chunkRows()) if (!indexes.get(row.pack)?.some((e) => e.id.equals(row.id))) stale++;
  if (stale > 0) problems.push({ kind: 'catalogue-stale', message: `the catalogue places ${stale} chunk(s) in packs that do not hold them; run "kura repo rebuild-index"` });

  let unreferenced = 0;
  for (const hex of where.keys()) if (!referenced.has(hex)) unreferenced++;
  return {
    ok: problems.length === 0,
    snapshots: snaps.length,
    packs: indexes.size,
    chunksReferenced: referenced.size,
    chunksStored: where.size,
    chunksUnreferenced: unreferenced,
    chunksRead,
    chunksUnverified,
    readData: opts.readData,
    keyless: !repo.hasKeys,
    damagedSnapshots: [...damagedSnapshots],
    quarantined,
    problems,
  };
}

/**
 * Rebuild the catalogue from the store alone (pack indexes and snapshot files), without keys.
 * Only chunks some snapshot references are recorded: a snapshot is written after its packs were
 * made durable, while an unreferenced pack may be one a power cut damaged. Leaving those out
 * only means a later backup writes them again. Copies in quarantine, and blobs that no longer
 * hash to the digest their pack's index recorded (those are quarantined now), are not recorded
 * either: the next backup that meets their data stores them anew.
 */
export async function rebuildIndex(repo: Repository): Promise<{ chunks: number; snapshots: number; quarantined: number }> {
  const indexes = await readPackIndexes(repo, () => {});
  const inQuarantine = repo.catalogue.quarantine.locations();
  const where = new Map<string, Located>();
  for (const [pack, entries] of indexes) {
    for (const e of entries) {
      if (inQuarantine.get(pack)?.has(e.offset)) continue;
      if (!where.has(e.id.toString('hex'))) where.set(e.id.toString('hex'), { pack, offset: e.offset, length: e.length, digest: e.digest });
    }
  }
  const referenced = new Set<string>();
  for await (const name of repo.store.list('snapshots/')) {
    const bytes = await repo.store.get(name);
    if (!bytes) continue;
    try {
      for (const id of await referencedBy(repo, decodeSnapshot(bytes, name.slice('snapshots/'.length)), where, () => [])) referenced.add(id.toString('hex'));
    } catch (e) {
      if (!(e instanceof KuraError)) throw e; // a damaged snapshot references nothing; check reports it
    }
  }
  const rows = new Map<string, ChunkRow>();
  const damaged: DamagedBlob[] = [];
  // the base chunks of deltas are referenced too: a second pass records those the first found
  for (let pass = 0; pass < 2; pass++) {
    const todo = [...indexes]
      .map(([pack, entries]) => ({ pack, wanted: entries.filter((e) => referenced.has(e.id.toString('hex')) && !rows.has(e.id.toString('hex')) && !inQuarantine.get(pack)?.has(e.offset)) }))
      .filter((p) => p.wanted.length > 0);
    // packs fetched a few at a time (memory: PACK_FETCHES whole packs), handled in order
    for (let at = 0; at < todo.length; at += PACK_FETCHES) {
      const group = todo.slice(at, at + PACK_FETCHES);
      const fetched = await Promise.all(group.map((p) => repo.store.get(packName(p.pack))));
      group.forEach(({ pack, wanted }, gi) => {
        const bytes = fetched[gi];
        if (!bytes) return;
        for (const e of wanted) {
          if (rows.has(e.id.toString('hex'))) continue; // in an earlier pack too: the first copy wins
          const blob = bytes.subarray(e.offset, e.offset + e.length);
          if (e.digest && !blobDigest(blob).equals(e.digest)) {
            if (pass === 0) damaged.push({ chunk: e.id, pack, offset: e.offset, length: e.length, digest: e.digest, reason: 'stored bytes do not hash to the digest recorded when written (found by rebuild-index)' });
            continue;
          }
          const info = blobInfo(blob);
          if (!info) continue;
          const bases = info.bases.map((b) => Buffer.from(b));
          rows.set(e.id.toString('hex'), { id: e.id, pack, offset: e.offset, storedSize: e.length, plainSize: info.plainLength, bases, digest: e.digest });
          for (const b of bases) referenced.add(b.toString('hex'));
        }
      });
    }
  }
  repo.catalogue.db.transaction(() => {
    repo.catalogue.clear();
    repo.catalogue.addChunks([...rows.values()]);
  })();
  await repo.reconcileSnapshots();
  const fresh = damaged.filter((d) => !rows.has(d.chunk.toString('hex')));
  if (fresh.length > 0) await quarantineBlobs(repo, fresh, 'rebuild-index', null);
  return { chunks: rows.size, snapshots: repo.catalogue.counts().snapshots, quarantined: fresh.length };
}
