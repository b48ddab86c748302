import { KuraError } from '../errors.js';
import { blobInfo } from '../crypto/blob.js';
import { DeltaOpener } from '../restorer/bases.js';
import { packName } from '../store/backend.js';
import type { Repository } from '../repository/repository.js';
import type { ChunkRow } from '../repository/catalogue.js';
import { packId, packIndexLength, parsePackIndex, type PackEntry } from '../repository/pack.js';
import { decodeSnapshot, openSnapshotPrivate, snapshotChunkIds, type DecodedSnapshot } from '../repository/snapshot.js';
import { idsOf, isListBlob, openListBlob, type BlobFetcher } from '../repository/chunklist.js';

export type ProblemKind = 'snapshot-corrupt' | 'pack-corrupt' | 'chunk-missing' | 'chunk-corrupt' | 'catalogue-stale';

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
  readData: boolean;
  problems: CheckProblem[];
}

interface Located {
  pack: string;
  offset: number;
  length: number;
}

const PACK_ID_RE = /^[0-9a-f]{64}$/;

/** Blobs by ID straight from the packs (pack indexes, not the catalogue). */
function packFetcher(repo: Repository, where: Map<string, Located>): BlobFetcher {
  return async function* (ids, what) {
    for (const id of ids) {
      const loc = where.get(id.toString('hex'));
      const blob = loc ? await repo.store.getRange(packName(loc.pack), loc.offset, loc.length) : null;
      if (!blob || blob.length !== loc!.length) throw new KuraError('E_CHUNK_MISSING', `chunk ${id.toString('hex')} of ${what} is in no pack of the store`, { chunk: id.toString('hex') });
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
  for await (const name of repo.store.list('packs/')) {
    const id = name.slice(name.lastIndexOf('/') + 1);
    if (!PACK_ID_RE.test(id)) continue;
    const st = await repo.store.stat(name);
    if (!st) continue;
    let tail = await repo.store.getRange(name, -Math.min(st.size, 16384), Math.min(st.size, 16384));
    const need = tail ? packIndexLength(tail) : null;
    if (tail && need !== null && need > tail.length && need <= st.size) tail = await repo.store.getRange(name, -need, need);
    const entries = tail ? parsePackIndex(tail, st.size) : null;
    if (!entries) onBad(id, `pack ${id} has no readable index (truncated or damaged file)`);
    else out.set(id, entries);
  }
  return out;
}

/**
 * Structure: every snapshot file verifies against its ID (and, with the key, its private part
 * authenticates); every pack has a readable index; every referenced chunk is in some pack; the
 * catalogue points only at what the packs hold. --read-data: every pack holding referenced
 * chunks is read whole and verified against its ID, and every referenced blob is decrypted,
 * decompressed and re-hashed. Each problem names the snapshots it affects. Unreferenced chunks
 * are reported, not errors: a killed backup leaves them and GC reclaims them.
 */
export async function check(repo: Repository, opts: { readData: boolean }): Promise<CheckReport> {
  const problems: CheckProblem[] = [];
  const indexes = await readPackIndexes(repo, (pack, message) => problems.push({ kind: 'pack-corrupt', message, pack }));
  const where = new Map<string, Located>();
  for (const [pack, entries] of indexes) for (const e of entries) if (!where.has(e.id.toString('hex'))) where.set(e.id.toString('hex'), { pack, offset: e.offset, length: e.length });
  // prefer the copy the catalogue uses, when the packs hold several
  for (const row of repo.catalogue.chunkRows()) {
    const hex = row.id.toString('hex');
    const entry = indexes.get(row.pack)?.find((e) => e.id.equals(row.id));
    if (entry) where.set(hex, { pack: row.pack, offset: entry.offset, length: entry.length });
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
      if (!(e instanceof KuraError)) throw e;
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
        const bases = repo.catalogue.basesNeeded(data);
        for (const prefix of bases.missing) {
          problems.push({ kind: 'chunk-missing', message: `a base chunk (ID ${prefix.toString('hex')}…) of a delta of snapshot ${s.id} is in no pack of the store`, chunk: prefix.toString('hex'), snapshots: [s.id] });
        }
        return bases.found;
      });
    } catch (e) {
      if (!(e instanceof KuraError)) throw e;
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
  let chunksRead = 0;
  if (opts.readData) {
    const keys = repo.keys;
    const opener = new DeltaOpener(keys, packFetcher(repo, where));
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
      if (packId(bytes) !== pack) problems.push({ kind: 'pack-corrupt', message: `pack ${pack} does not match its ID (damaged file)`, pack });
      for (const hex of hexes) {
        const loc = where.get(hex)!;
        chunksRead++;
        try {
          const blob = bytes.subarray(loc.offset, loc.offset + loc.length);
          const id = Buffer.from(hex, 'hex');
          if (isListBlob(blob)) openListBlob(blob, id);
          else {
            await opener.prepare([{ id, blob }], `chunk ${hex}`);
            opener.open(blob, id);
          }
        } catch (e) {
          if (!(e instanceof KuraError)) throw e;
          corrupt.set(hex, `${e.message} (in pack ${pack})`);
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
    for (const hex of missing) problems.push({ kind: 'chunk-missing', message: `chunk ${hex} is in no pack of the store`, chunk: hex, snapshots: affected.get(hex) ?? [] });
    for (const [hex, msg] of corrupt) problems.push({ kind: 'chunk-corrupt', message: msg, chunk: hex, snapshots: affected.get(hex) ?? [] });
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
    readData: opts.readData,
    problems,
  };
}

/**
 * Rebuild the catalogue from the store alone (pack indexes and snapshot files), without keys.
 * Only chunks some snapshot references are recorded: a snapshot is written after its packs were
 * made durable, while an unreferenced pack may be one a power cut damaged. Leaving those out
 * only means a later backup writes them again.
 */
export async function rebuildIndex(repo: Repository): Promise<{ chunks: number; snapshots: number }> {
  const indexes = await readPackIndexes(repo, () => {});
  const where = new Map<string, Located>();
  for (const [pack, entries] of indexes) for (const e of entries) if (!where.has(e.id.toString('hex'))) where.set(e.id.toString('hex'), { pack, offset: e.offset, length: e.length });
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
  // the base chunks of deltas are referenced too: a second pass records those the first found
  for (let pass = 0; pass < 2; pass++) {
    for (const [pack, entries] of indexes) {
      const wanted = entries.filter((e) => referenced.has(e.id.toString('hex')) && !rows.has(e.id.toString('hex')));
      if (wanted.length === 0) continue;
      const bytes = await repo.store.get(packName(pack));
      if (!bytes) continue;
      for (const e of wanted) {
        const info = blobInfo(bytes.subarray(e.offset, e.offset + e.length));
        if (!info) continue;
        const bases = info.bases.map((b) => Buffer.from(b));
        rows.set(e.id.toString('hex'), { id: e.id, pack, offset: e.offset, storedSize: e.length, plainSize: info.plainLength, bases });
        for (const b of bases) referenced.add(b.toString('hex'));
      }
    }
  }
  repo.catalogue.db.transaction(() => {
    repo.catalogue.clear();
    repo.catalogue.addChunks([...rows.values()]);
  })();
  await repo.reconcileSnapshots();
  return { chunks: rows.size, snapshots: repo.catalogue.counts().snapshots };
}
