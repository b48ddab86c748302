import { MAX_BASES } from '../crypto/blob.js';
import type { ChunkLocation } from '../repository/catalogue.js';
import type { IdSet } from '../repository/idset.js';
import type { Repository } from '../repository/repository.js';
import { packName, type StoreBackend } from '../store/backend.js';
import { log } from '../log.js';
import type { SealBases } from './seal-worker.js';

/**
 * Where a changed chunk's delta bases come from: the previous generation's chunks at its place
 * (PreviousRows looks their catalogue rows up once each, BaseChooser picks the neighbours,
 * BaseLocator hands the seal workers their pack places). Used by archiver/backup.ts.
 */
/** Neighbours either side of the chunk's estimated place in the previous generation, as bases. */
const BASE_SPAN = 1;

/**
 * The catalogue rows of the previous generation's chunks, by place in its list, each looked up
 * once (a heavy night asks for the same neighbours again and again), with pack names by number.
 * Valid for one backup: it holds the lock that keeps GC from renumbering packs.
 */
export class PreviousRows {
  private readonly pack: Int32Array; // pack number; -1 not looked up, -2 not in the catalogue
  private readonly offset: Float64Array;
  private readonly stored: Int32Array;
  private readonly plain: Int32Array;
  private readonly names = new Map<number, string>();

  constructor(
    readonly previous: IdSet,
    private readonly catalogue: Repository['catalogue'],
    /** the chunks' plaintext sizes from the list cache, if it had them (else asked of the catalogue) */
    private readonly sizes: Uint32Array | null,
  ) {
    const n = previous.length;
    this.pack = new Int32Array(n).fill(-1);
    this.offset = new Float64Array(n);
    this.stored = new Int32Array(n);
    this.plain = new Int32Array(n);
  }

  private load(k: number): boolean {
    if (this.pack[k] === -1) {
      const r = this.catalogue.chunkRow(this.previous.idAt(k));
      if (!r) this.pack[k] = -2;
      else [this.pack[k], this.offset[k], this.stored[k], this.plain[k]] = r;
    }
    return this.pack[k]! >= 0;
  }

  /** Plaintext length of chunk k (1 if it is not in the catalogue: the walk still moves on). */
  plainSize(k: number): number {
    if (this.sizes) return Math.max(1, this.sizes[k]!);
    return this.load(k) ? Math.max(1, this.plain[k]!) : 1;
  }

  location(k: number): ChunkLocation | undefined {
    if (!this.load(k)) return undefined;
    const n = this.pack[k]!;
    let name = this.names.get(n);
    if (name === undefined) {
      name = this.catalogue.packNameOf(n);
      if (name === undefined) return undefined;
      this.names.set(n, name);
    }
    return { pack: name, offset: this.offset[k]!, length: this.stored[k]! };
  }
}

/**
 * Choose delta bases for new chunks. A new chunk's place in the previous generation is estimated
 * by bytes from the last chunk both generations share (each unchanged chunk re-anchors it); the
 * chunk found there and its neighbours are the candidates (BaseLocator replaces a candidate that
 * is itself a delta by its own bases, so a delta never needs more than one level to be opened).
 */
export class BaseChooser {
  // the walk from the anchor through the previous generation: chunk `walkAt` starts `walkBytes` after it
  private walkAnchor = -1;
  private walkAt = 0;
  private walkBytes = 0;

  constructor(private readonly rows: PreviousRows) {}

  /** Candidates (places in the previous generation) for a new chunk starting `bytesAfter` bytes after the anchor (old chunk `anchorOld` starts there). */
  choose(anchorOld: number, bytesAfter: number): number[] {
    if (this.walkAnchor !== anchorOld || this.walkBytes > bytesAfter) {
      this.walkAnchor = anchorOld;
      this.walkAt = anchorOld;
      this.walkBytes = 0;
    }
    const n = this.rows.previous.length;
    while (this.walkAt < n - 1 && this.walkBytes + this.rows.plainSize(this.walkAt) <= bytesAfter) this.walkBytes += this.rows.plainSize(this.walkAt++);
    const place = Math.min(this.walkAt, n - 1);
    // a chunk right after an unchanged one starts where its place does: the chunk before that
    // place is the unchanged one, no base
    const from = bytesAfter === 0 ? place : place - BASE_SPAN;
    const out: number[] = [];
    for (let k = Math.max(0, from); k <= Math.min(n - 1, place + BASE_SPAN); k++) out.push(k);
    return out;
  }
}

/**
 * Where a batch's bases are stored, in the layout the seal workers take (null if none). A
 * candidate that is itself a delta is replaced by its own bases (the catalogue records them per
 * pack), so a delta never needs more than one level to be opened. On a local disk the workers
 * read the bases themselves; elsewhere readBases() fetches them first.
 */
export class BaseLocator {
  /**
   * The deltas of the packs looked at last, and the bases of the candidates looked at last, by
   * place: the walk moves forward through the previous generation, so a few recent entries
   * serve nearly every lookup. Bounded: kept for the whole backup they grew with every delta of
   * the previous nights (38 MB of a 300 MB backup's heap, measured).
   */
  private readonly deltasOf = new Recent<string, Map<number, Buffer[]> | null>(8);
  /** the bases of candidates that are deltas, with their locations, by the delta's place */
  private readonly ownBases = new Recent<number, Array<{ id: Buffer; loc: ChunkLocation }> | null>(4096);

  constructor(
    private readonly repo: Repository,
    private readonly rows: PreviousRows,
  ) {}

  private basesOf(k: number, loc: ChunkLocation): Array<{ id: Buffer; loc: ChunkLocation }> | null {
    let own = this.ownBases.get(k);
    if (own !== undefined) return own;
    const catalogue = this.repo.catalogue;
    let d = this.deltasOf.get(loc.pack);
    if (d === undefined) this.deltasOf.set(loc.pack, (d = catalogue.bases.ofPack(loc.pack)));
    const prefixes = d?.get(loc.offset);
    own = null;
    if (prefixes) {
      own = [];
      for (const id of prefixes.flatMap((prefix) => catalogue.bases.chunksWithPrefix(prefix))) {
        const l = catalogue.location(id);
        if (l) own.push({ id, loc: l });
      }
    }
    this.ownBases.set(k, own);
    return own;
  }

  locate(candidates: number[][]): SealBases | null {
    const index = new Map<string, number>();
    const ids: Buffer[] = [];
    const located: ChunkLocation[] = [];
    const start = new Uint32Array(candidates.length + 1);
    const refs: number[] = [];
    const intern = (id: Buffer, loc: ChunkLocation): number => {
      const key = id.toString('base64');
      let at = index.get(key);
      if (at === undefined) {
        index.set(key, (at = ids.length));
        ids.push(id);
        located.push(loc);
      }
      return at;
    };
    const byPlace = new Map<number, number>(); // candidate place → its index in this batch's bases
    const again = new Uint8Array(candidates.length);
    candidates.forEach((cands, i) => {
      const mine: number[] = [];
      for (const k of cands) {
        if (mine.length >= MAX_BASES) break;
        const loc = this.rows.location(k);
        if (!loc) continue;
        const own = this.basesOf(k, loc);
        if (!own) {
          let at = byPlace.get(k);
          if (at === undefined) byPlace.set(k, (at = intern(this.rows.previous.idAt(k), loc)));
          if (!mine.includes(at)) mine.push(at);
          continue;
        }
        again[i] = 1; // the old version is itself a delta: the chunk changes night after night
        for (const b of own) {
          if (mine.length >= MAX_BASES) break;
          const at = intern(b.id, b.loc);
          if (!mine.includes(at)) mine.push(at);
        }
      }
      refs.push(...mine);
      start[i + 1] = refs.length;
    });
    if (ids.length === 0) return null;
    const packs: string[] = [];
    const packIndex = new Map<string, number>();
    const packOf = new Uint32Array(ids.length);
    const offset = new Float64Array(ids.length);
    const length = new Uint32Array(ids.length);
    located.forEach((loc, i) => {
      let p = packIndex.get(loc.pack);
      if (p === undefined) {
        packIndex.set(loc.pack, (p = packs.length));
        packs.push(loc.pack);
      }
      packOf[i] = p;
      offset[i] = loc.offset;
      length[i] = loc.length;
    });
    return { ids: Buffer.concat(ids), packs, packOf, offset, length, start, refs: Uint32Array.from(refs), again };
  }
}


/** A map that keeps its `limit` most recently used entries. */
class Recent<K, V> {
  private readonly map = new Map<K, V>();
  constructor(private readonly limit: number) {}

  get(k: K): V | undefined {
    const v = this.map.get(k);
    if (v !== undefined) {
      this.map.delete(k);
      this.map.set(k, v);
    }
    return v;
  }

  set(k: K, v: V): void {
    this.map.delete(k);
    this.map.set(k, v);
    if (this.map.size > this.limit) this.map.delete(this.map.keys().next().value as K);
  }
}

/**
 * Buffers shared with the seal workers that batches' bases are read into, each reused once its
 * batch is sealed. Read into buffers of their own, the bases were copied again into the worker
 * (a message copies the buffers it names), and both threads freed them only at their next GC.
 */
export class SharedRooms {
  private readonly free: SharedArrayBuffer[] = [];

  constructor(private readonly keep: number) {}

  /** A buffer of at least `bytes`, shared with the workers (not copied into their messages). */
  take(bytes: number): Buffer {
    const i = this.free.findIndex((b) => b.byteLength >= bytes); // the smallest that fits (smallest first)
    const room = i >= 0 ? this.free.splice(i, 1)[0]! : new SharedArrayBuffer(Math.ceil((bytes * 1.25) / 65536) * 65536);
    return Buffer.from(room, 0, bytes);
  }

  /** Done with: the next batch may read into it (the smallest is dropped beyond `keep`). */
  give(b: Buffer): void {
    this.free.push(b.buffer as SharedArrayBuffer);
    this.free.sort((x, y) => x.byteLength - y.byteLength);
    if (this.free.length > this.keep) this.free.shift();
  }
}

/**
 * The stored blobs of a batch's bases, read through the store (an object store, where the seal
 * workers cannot read a pack themselves) into `into`, one room per pack: one ranged read per
 * pack, nearby blobs in one request (the backend merges close ranges). A pack that cannot be read
 * leaves its bases null: those chunks are stored whole, as on a local disk; a delta is only ever
 * a saving. `into` is at least basesBytes(bases) long.
 */
export async function readBases(store: StoreBackend, bases: SealBases, into: Buffer): Promise<void> {
  const blobs: Array<Uint8Array | null> = new Array(bases.length.length).fill(null);
  const byPack = new Map<number, number[]>();
  bases.packOf.forEach((p, i) => {
    let list = byPack.get(p);
    if (!list) byPack.set(p, (list = []));
    list.push(i);
  });
  let at = 0;
  await Promise.all(
    [...byPack].map(async ([p, members]) => {
      const name = packName(bases.packs[p]!);
      const room = into.subarray(at, (at += members.reduce((n, i) => n + bases.length[i]!, 0)));
      try {
        const got = await store.getRanges(name, members.map((i) => ({ offset: bases.offset[i]!, length: bases.length[i]! })), room);
        if (got) members.forEach((i, k) => (blobs[i] = got[k]!.length === bases.length[i] ? got[k]! : null));
      } catch (e) {
        log().warn({ pack: bases.packs[p], err: (e as Error).message }, 'cannot read delta bases; those chunks are stored whole');
      }
    }),
  );
  bases.blobs = blobs;
}

/** The stored bytes of a batch's bases together: the room readBases needs. */
export function basesBytes(bases: SealBases): number {
  let n = 0;
  for (const l of bases.length) n += l;
  return n;
}
