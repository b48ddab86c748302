import { KuraError } from '../errors.js';
import { blobInfo, openBlob } from '../crypto/blob.js';
import { chunkName } from '../store/backend.js';
import type { Repository } from '../repository/repository.js';
import { chunkIdsOf, decodeSnapshot, openSnapshotPrivate, type DecodedSnapshot } from '../repository/snapshot.js';

export type ProblemKind = 'snapshot-corrupt' | 'chunk-missing' | 'chunk-corrupt' | 'catalogue-stale';

export interface CheckProblem {
  kind: ProblemKind;
  message: string;
  chunk?: string;
  snapshot?: string;
  snapshots?: string[];
}

export interface CheckReport {
  ok: boolean;
  snapshots: number;
  chunksReferenced: number;
  chunksStored: number;
  chunksUnreferenced: number;
  chunksRead: number;
  readData: boolean;
  problems: CheckProblem[];
}

const READ_CONCURRENCY = 8;

/**
 * Structure: every snapshot file verifies against its ID (and, with the key, its private part
 * authenticates), every referenced chunk exists, the catalogue lists nothing the store lacks.
 * --read-data: every referenced blob is read, decrypted, decompressed and re-hashed.
 * Each problem names the snapshots it affects. Unreferenced chunks are reported, not errors:
 * a killed backup leaves them and GC reclaims them.
 */
export async function check(repo: Repository, opts: { readData: boolean }): Promise<CheckReport> {
  const problems: CheckProblem[] = [];
  const stored = new Set<string>();
  for await (const name of repo.store.list('data/')) stored.add(name.slice(name.lastIndexOf('/') + 1));

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
  for (const s of snaps) {
    for (const id of chunkIdsOf(s)) {
      const hex = id.toString('hex');
      referenced.add(hex);
      if (!stored.has(hex)) missing.add(hex);
    }
  }

  const corrupt = new Map<string, string>();
  let chunksRead = 0;
  if (opts.readData) {
    const keys = repo.keys;
    const todo = [...referenced].filter((h) => !missing.has(h));
    let next = 0;
    const worker = async () => {
      while (next < todo.length) {
        const hex = todo[next++]!;
        const blob = await repo.store.get(chunkName(hex));
        chunksRead++;
        if (!blob) {
          missing.add(hex);
          continue;
        }
        try {
          openBlob(blob, Buffer.from(hex, 'hex'), keys);
        } catch (e) {
          if (!(e instanceof KuraError)) throw e;
          corrupt.set(hex, e.message);
        }
      }
    };
    await Promise.all(Array.from({ length: READ_CONCURRENCY }, worker));
  } else {
    // without reading data, still catch blobs whose header is unreadable (cheap: sizes only)
    for (const hex of referenced) {
      if (missing.has(hex)) continue;
      const st = await repo.store.stat(chunkName(hex));
      if (st && st.size < 34) corrupt.set(hex, `chunk ${hex}: truncated blob (${st.size} bytes)`);
    }
  }

  if (missing.size > 0 || corrupt.size > 0) {
    const affected = new Map<string, string[]>();
    for (const s of snaps) {
      for (const id of chunkIdsOf(s)) {
        const hex = id.toString('hex');
        if (missing.has(hex) || corrupt.has(hex)) {
          const list = affected.get(hex) ?? [];
          if (list.at(-1) !== s.id) list.push(s.id);
          affected.set(hex, list);
        }
      }
    }
    for (const hex of missing) problems.push({ kind: 'chunk-missing', message: `chunk ${hex} is missing from the store`, chunk: hex, snapshots: affected.get(hex) ?? [] });
    for (const [hex, msg] of corrupt) problems.push({ kind: 'chunk-corrupt', message: msg, chunk: hex, snapshots: affected.get(hex) ?? [] });
  }

  let stale = 0;
  for (const row of repo.catalogue.chunkRows()) if (!stored.has(row.id.toString('hex'))) stale++;
  if (stale > 0) problems.push({ kind: 'catalogue-stale', message: `the catalogue lists ${stale} chunk(s) the store does not hold; run "kura repo rebuild-index"` });

  let unreferenced = 0;
  for (const hex of stored) if (!referenced.has(hex)) unreferenced++;
  return {
    ok: problems.length === 0,
    snapshots: snaps.length,
    chunksReferenced: referenced.size,
    chunksStored: stored.size,
    chunksUnreferenced: unreferenced,
    chunksRead,
    readData: opts.readData,
    problems,
  };
}

/**
 * Rebuild the catalogue from the store alone (chunk blobs and snapshot files), without keys.
 * Only chunks some snapshot references are recorded: a snapshot is written after its chunks were
 * made durable, while an unreferenced blob may be one a power cut damaged. Leaving those out only
 * means a later backup writes them again.
 */
export async function rebuildIndex(repo: Repository): Promise<{ chunks: number; snapshots: number }> {
  const referenced = new Set<string>();
  for await (const name of repo.store.list('snapshots/')) {
    const bytes = await repo.store.get(name);
    if (!bytes) continue;
    try {
      for (const id of chunkIdsOf(decodeSnapshot(bytes, name.slice('snapshots/'.length)))) referenced.add(id.toString('hex'));
    } catch (e) {
      if (!(e instanceof KuraError)) throw e; // a damaged snapshot references nothing; check reports it
    }
  }
  const rows: Array<{ id: Buffer; storedSize: number; plainSize: number }> = [];
  for await (const name of repo.store.list('data/')) {
    const hex = name.slice(name.lastIndexOf('/') + 1);
    if (!referenced.has(hex)) continue;
    const blob = await repo.store.get(name);
    const info = blob ? blobInfo(blob) : null;
    if (!blob || !info) continue; // damaged: check reports it, the next backup of that data rewrites it
    rows.push({ id: Buffer.from(hex, 'hex'), storedSize: blob.length, plainSize: info.plainLength });
  }
  repo.catalogue.db.transaction(() => {
    repo.catalogue.clear();
    repo.catalogue.addChunks(rows);
  })();
  await repo.reconcileSnapshots();
  return { chunks: rows.length, snapshots: repo.catalogue.counts().snapshots };
}
