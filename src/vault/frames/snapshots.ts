import { KuraError } from '../../errors.js';
import { CHUNK_ID_BYTES } from '../../crypto/blob.js';
import { Frame } from '../../protocol/frames.js';
import { expandListTree, idsOf } from '../../repository/chunklist.js';
import { listFetcher } from '../../repository/reader.js';
import { snapshotChunkIds, type DecodedSnapshot } from '../../repository/snapshot.js';
import { snapshotName } from '../../store/backend.js';
import type { VaultSession } from '../session.js';
import type { SnapshotRef } from './body.js';

const WANT_MAX = 65536; // IDs per WANT_REPLY (2 MiB); the client asks again after sending them
const REMEMBERED = 16; // snapshot files a session keeps, so later WANTs and the COMMIT can name them by ID

/** A snapshot file a client sent in WANT or COMMIT, and what WANT found of its data chunks. */
export interface Announced {
  id: string;
  snap: DecodedSnapshot;
  bytes: Buffer;
  /** its distinct data chunks, once its chunk list could be read */
  data?: Buffer[];
  /** those not present when last asked */
  open: Buffer[];
  /** the last WANT found nothing lacking (all it found present is leased to this session) */
  complete: boolean;
  /** this session committed it */
  committed: boolean;
  /** when it was first announced in this session, and the session's PUT counts then (the receive log) */
  since?: { at: number; put: number; putBytes: number };
}

/** The snapshot files a session was sent (WANT, COMMIT), by ID: later WANTs and the COMMIT name them. */
export class Announcements {
  private readonly files = new Map<string, Announced>();

  constructor(private readonly s: VaultSession) {}

  get(id: string): Announced | undefined {
    return this.files.get(id);
  }

  /** The snapshot file of a WANT or COMMIT payload: the file itself, or the ID of one sent before. */
  of(ref: SnapshotRef): Announced {
    const known = this.files.get(ref.id);
    if (!ref.file) {
      if (!known) throw new KuraError('E_PROTOCOL', `snapshot ${ref.id} was not sent in this session; send the snapshot file itself`);
      return known;
    }
    const { snap, bytes } = ref.file;
    if (snap.header.tenant !== this.s.ctx.tenant) {
      throw new KuraError('E_TENANT_MISMATCH', `snapshot ${ref.id} belongs to tenant ${snap.header.tenant}, not ${this.s.ctx.tenant}`);
    }
    if (known) return known;
    const a: Announced = { id: ref.id, snap, bytes: Buffer.from(bytes), open: [], complete: false, committed: false, since: { at: Date.now(), put: this.s.ops.put, putBytes: this.s.ops.putBytes } };
    if (this.files.size >= REMEMBERED) this.files.delete(this.files.keys().next().value!);
    this.files.set(ref.id, a);
    return a;
  }

  /**
   * What the vault lacks to commit a snapshot, as far as it can see now: its missing chunk list
   * blocks (the data they list comes next round), else its missing data chunks (at most
   * WANT_MAX), and the bases missing for the deltas it holds (prefixes). Whatever is present is
   * leased to this session, as a HAS answer is.
   */
  async lacking(a: Announced): Promise<{ ids: Buffer[]; prefixes: Buffer[] }> {
    const { repo, leaseTtlMs } = this.s.ctx;
    const { ops } = this.s;
    const expires = Date.now() + leaseTtlMs;
    const absent = (ids: Buffer[]): Buffer[] => {
      const bitmap = repo.catalogue.vault.hasAndLease(this.s.id, Buffer.concat(ids), CHUNK_ID_BYTES, expires);
      ops.has += ids.length;
      const out = ids.filter((_, i) => !(bitmap[i >> 3]! & (1 << (i & 7))));
      ops.present += ids.length - out.length;
      return out;
    };
    if (!a.data) {
      let level = a.snap.listIds;
      for (let d = a.snap.listDepth; d > 0; d--) {
        const missing = absent(distinct(level));
        if (missing.length > 0) return { ids: missing.slice(0, WANT_MAX), prefixes: [] };
        level = await expandListTree(level, 1, listFetcher(repo), `snapshot ${a.id}`);
      }
      if (level.length !== a.snap.header.chunkCount * CHUNK_ID_BYTES) {
        throw new KuraError('E_SNAPSHOT_CORRUPT', `snapshot ${a.id}: its chunk list holds ${level.length / CHUNK_ID_BYTES} chunks, its header ${a.snap.header.chunkCount}`, { snapshot: a.id });
      }
      a.open = a.data = distinct(level);
    }
    // what was present when asked before in this session is leased: only the rest is asked again
    a.open = absent(a.open);
    if (a.open.length > 0) return { ids: a.open.slice(0, WANT_MAX), prefixes: [] };
    const prefixes = repo.catalogue.bases.needed(a.data).missing;
    a.complete = prefixes.length === 0;
    return { ids: [], prefixes };
  }

  /** What a snapshot refers to that this vault does not hold: chunks by ID, delta bases by prefix. */
  async missingFor(snap: DecodedSnapshot): Promise<string[]> {
    const { repo } = this.s.ctx;
    const missing: string[] = [];
    // the chunk list blocks are plaintext: the vault reads them (a missing one refuses the commit)
    const ids = [...idsOf(await snapshotChunkIds(snap, listFetcher(repo)))];
    // each chunk looked up once: whether it is held, and where (for its bases if a delta)
    const places = repo.catalogue.bases.placesOf(ids);
    ids.forEach((c, i) => {
      if (places.pack[i]! < 0) missing.push(c.toString('hex'));
    });
    for (const prefix of repo.catalogue.bases.needed(ids, places).missing) missing.push(`${prefix.toString('hex')}… (a delta's base)`);
    return missing;
  }
}

/** WANT: what the vault lacks to commit this snapshot (present chunks are now leased to the session). */
export async function want(s: VaultSession, ref: SnapshotRef): Promise<void> {
  await s.uploads.settle('WANT');
  const a = s.snapshots.of(ref);
  if (!a.data) await s.othersLanded(a.id);
  const lacking = await s.snapshots.lacking(a);
  s.uploads.expect(lacking.ids);
  const out = Buffer.allocUnsafe(8 + 32 * lacking.ids.length + 8 * lacking.prefixes.length);
  out.writeUInt32BE(lacking.ids.length, 0);
  lacking.ids.forEach((id, i) => id.copy(out, 4 + 32 * i));
  const at = 4 + 32 * lacking.ids.length;
  out.writeUInt32BE(lacking.prefixes.length, at);
  lacking.prefixes.forEach((p, i) => p.copy(out, at + 4 + 8 * i));
  return s.send(Frame.WANT_REPLY, out);
}

/** COMMIT: store the snapshot once every chunk it lists is present. */
export async function commit(s: VaultSession, ref: SnapshotRef): Promise<void> {
  const { repo, tenant } = s.ctx;
  await s.uploads.settle('COMMIT');
  const a = s.snapshots.of(ref);
  const { id, snap, bytes, complete } = a;
  // after a WANT that found nothing lacking, everything is leased to this session: no need
  // to read the chunk list again
  const missing = complete ? [] : await s.snapshots.missingFor(snap);
  if (missing.length > 0) throw new KuraError('E_CHUNK_MISSING', `snapshot ${id} refers to ${missing.length} chunk(s) this vault does not hold (first ${missing[0]}); send them and commit again (a kura relay does so on its next attempt; if it keeps failing, run "kura check" on the sending repository)`, { missing: missing.length });
  const existed = !(await repo.store.putIfAbsent(snapshotName(id), bytes));
  await repo.store.sync();
  repo.catalogue.vault.commitSnapshot(s.id, id, snap.header);
  a.committed = true;
  s.ops.commits++;
  s.ctx.audit.write({ event: 'commit', outcome: 'ok', tenant, session: s.id, snapshot: id, source: snap.header.source, existed });
  s.ctx.routing?.received(s, a);
  return s.send(Frame.COMMITTED, { id, existed });
}

function distinct(list: Buffer): Buffer[] {
  const seen = new Set<string>();
  const out: Buffer[] = [];
  for (const id of idsOf(list)) {
    const k = id.toString('base64');
    if (!seen.has(k)) {
      seen.add(k);
      out.push(id);
    }
  }
  return out;
}
