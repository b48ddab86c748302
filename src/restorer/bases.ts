import { blobInfo, openBlob, type BlobInfo } from '../crypto/blob.js';
import { KuraError } from '../errors.js';
import { openingAddon } from '../native.js';
import { BufferPool } from './buffers.js';

/** Anything that yields blobs of `ids` in order: the local store, or a vault over SSH. */
export type BlobSource = (ids: Buffer[], what: string) => AsyncIterable<{ id: Buffer; blob: Buffer }>;

/**
 * Bases kept past the segment that needed them. A segment's own bases are always kept until it
 * is opened; this is only for the next segments' deltas of the same bases. 32 MiB held a whole
 * night's worth of pinned buffers (a 478 MiB restore of deltas: peak RSS 170-178 MB); 4 MiB
 * 138-140 MB in the same time.
 */
const CACHE_BYTES = 4 << 20;
/** bases are opened in this many pieces side by side on libuv's pool (as a segment's chunks are) */
const OPEN_PIECES = 2;

/** A pooled buffer bases were opened into: `refs` counts the cached bases in it and the jobs reading them. */
type Held = { buffer: Buffer; refs: number };

/** a base alone is opened on libuv's pool from this plaintext size on (else on the main thread) */
const POOL_BASE_BYTES = 64 << 10;

/** Pooled base buffers kept for reuse (a restore holds a few segments' bases at a time). */
const BASE_BUFFERS = 8;

/**
 * Opens blobs, deltas included: `prepare` fetches (through the same source, between two of its
 * streams) the base chunks a group of blobs needs and keeps their plaintexts, oldest dropped first
 * beyond CACHE_BYTES, so neighbouring deltas of one base read it once. A source that serves
 * several streams at once (a store) may have them read ahead (`fetch`) and handed to `prepare`.
 */
export class DeltaOpener {
  private readonly cache = new Map<string, { plain: Buffer; held: Held | null }>();
  private cached = 0;
  /**
   * The buffers bases are opened into, taken again once no cached base and no running job is in
   * them: bases in fresh memory (a night of deltas opens as many bytes of bases as it restores)
   * cost page faults and external memory that V8 answers with full collections.
   */
  private readonly pool = new BufferPool(BASE_BUFFERS);

  constructor(
    private readonly keys: { dataKey: Buffer; idKey: Buffer },
    private readonly source: BlobSource,
  ) {}

  /** The bases `blobs` need that are not prepared now, by ID (base64) in first-use order. */
  private missing(blobs: ReadonlyArray<{ blob: Buffer }>, needed = new Set<string>(), besides?: ReadonlySet<string>): Buffer[] {
    const fetch: Buffer[] = [];
    for (const { blob } of blobs) {
      for (const b of blobInfo(blob)?.bases ?? []) {
        const k = b.toString('base64');
        if (needed.has(k)) continue;
        needed.add(k);
        if (!this.cache.has(k) && !besides?.has(k)) fetch.push(Buffer.from(b));
      }
    }
    return fetch;
  }

  /** The stored bases of `ids`, read through the source; a base that is itself a delta is damage. */
  private async read(ids: Buffer[], what: string): Promise<Array<{ id: Buffer; blob: Buffer }>> {
    const got: Array<{ id: Buffer; blob: Buffer }> = [];
    if (ids.length === 0) return got;
    for await (const { id, blob } of this.source(ids, `base chunks of ${what}`)) {
      if (blobInfo(blob)?.bases.length) {
        const hex = id.toString('hex');
        throw new KuraError('E_CHUNK_CORRUPT', `chunk ${hex} is a base of a delta but is itself a delta (kura never writes that); run "kura check"`, { chunk: hex });
      }
      got.push({ id, blob });
    }
    return got;
  }

  /**
   * Read ahead the stored bases `blobs` will need that are not prepared now (the cache is left
   * alone): for `prepare`, later, while other groups are read and opened. Only for a source that
   * serves several streams at once.
   */
  fetch(blobs: ReadonlyArray<{ id: Buffer; blob: Buffer }>, what: string): Promise<Array<{ id: Buffer; blob: Buffer }>> {
    return this.read(this.missing(blobs), what);
  }

  /** Make the bases `blobs` need ready to open them: those `fetched` ahead, and any other not prepared (read now). */
  async prepare(blobs: ReadonlyArray<{ id: Buffer; blob: Buffer }>, what: string, fetched: ReadonlyArray<{ id: Buffer; blob: Buffer }> = []): Promise<void> {
    const needed = new Set<string>();
    const ahead = new Set(fetched.map((g) => g.id.toString('base64')));
    // dropped from the cache since they were read ahead, or never read ahead
    const fetch = this.missing(blobs, needed, ahead);
    if (fetch.length === 0 && fetched.length === 0) return;
    for (const [k, v] of this.cache) {
      if (this.cached <= CACHE_BYTES) break;
      if (needed.has(k)) continue;
      this.cache.delete(k);
      this.cached -= v.plain.length;
      this.drop(v.held);
    }
    // those read ahead that an earlier group prepared meanwhile are not opened twice
    const got = fetched.filter((g) => !this.cache.has(g.id.toString('base64')));
    if (fetch.length > 0) got.push(...(await this.read(fetch, what)));
    if (got.length === 0) return;
    // opened off the main thread in pieces side by side; a piece that does not open is opened
    // here, blob by blob, for the error of the damaged one. Bases are authenticated by their tags
    // (whose AAD holds their IDs) and not re-hashed: what a delta makes of them is, against the
    // delta's own ID, so a base that opened to other bytes fails there (as the backup's seal
    // workers treat bases)
    // (a piece of one small base is opened here: a job on the pool would cost more than it saves,
    // and its pooled buffer, 1 MiB at least, would be held for a few KiB; a large one goes there,
    // so the main thread is free meanwhile: segments of 1 MiB chunks each met one base, and
    // opening them here was a sixth of a restore's main thread)
    const plain = (g: { blob: Buffer }) => blobInfo(g.blob)?.plainLength ?? 0;
    const native = openingAddon();
    const size = Math.ceil(got.length / OPEN_PIECES);
    const pieces: Array<Array<{ id: Buffer; blob: Buffer }>> = [];
    for (let at = 0; at < got.length; at += size) pieces.push(got.slice(at, at + size));
    const pooled = (piece: Array<{ blob: Buffer }>) => native !== null && (piece.length > 1 || plain(piece[0]!) >= POOL_BASE_BYTES);
    const buffers = pieces.map((piece) => (pooled(piece) ? this.pool.take(piece.reduce((n, g) => n + plain(g), 0)) : null));
    const opened = await Promise.all(
      pieces.map((piece, i) => (native && buffers[i] ? native.openBlobs(this.keys.dataKey, this.keys.idKey, piece.map((g) => g.blob), Buffer.concat(piece.map((g) => g.id)), null, buffers[i]!, false) : Promise.resolve(null))),
    );
    pieces.forEach((piece, i) => {
      const plains = opened[i];
      const held: Held | null = plains && plains === buffers[i] ? { buffer: plains, refs: 0 } : null;
      if (buffers[i] && !held) this.pool.give(buffers[i]!); // not opened into it: free at once
      let at = 0;
      for (const { id, blob } of piece) {
        let plain: Buffer;
        if (plains && typeof plains !== 'number') {
          const n = blobInfo(blob)!.plainLength;
          // a view of the piece's buffer, not a copy (copying every base was a fifth of a restore's
          // memory traffic): the cache drops bases oldest first, so a piece's buffer is freed
          // soon after its last base, and the CACHE_BYTES bound overshoots by at most a piece
          plain = plains.subarray(at, (at += n));
        } else plain = openBlob(blob, id, this.keys);
        const k = id.toString('base64');
        const old = this.cache.get(k);
        if (old) {
          this.cached -= old.plain.length;
          this.drop(old.held);
        }
        this.cache.set(k, { plain, held });
        if (held) held.refs++;
        this.cached += plain.length;
      }
    });
  }

  private drop(held: Held | null): void {
    if (held && --held.refs === 0) this.pool.give(held.buffer);
  }

  /**
   * Keeps the buffers of these blobs' prepared bases from reuse, though the bases leave the cache,
   * until the returned function is called: a job that reads them as dictionaries is running.
   */
  pin(infos: ReadonlyArray<BlobInfo | null>): () => void {
    const held: Held[] = [];
    for (const info of infos) {
      for (const b of info?.bases ?? []) {
        const e = this.cache.get(b.toString('base64'));
        if (e?.held) {
          e.held.refs++;
          held.push(e.held);
        }
      }
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const h of held) this.drop(h);
    };
  }

  /** A prepared delta's bases' plaintexts, in its order; null for a blob that is no delta (its header: blobInfo). */
  basesOf(info: BlobInfo | null): Buffer[] | null {
    const bases = info?.bases ?? [];
    if (bases.length === 0) return null;
    return bases.map((b) => {
      const p = this.cache.get(b.toString('base64'));
      if (!p) throw new Error(`base chunk ${b.toString('hex')} was not prepared`);
      return p.plain;
    });
  }

  /** Open a blob with these bases, or (null) those prepared for it. */
  open(blob: Buffer, id: Buffer, bases: Buffer[] | null = null): Buffer {
    const mine = bases ?? this.basesOf(blobInfo(blob));
    return mine ? openBlob(blob, id, this.keys, mine) : openBlob(blob, id, this.keys);
  }
}

/**
 * A delta's dictionary as the addon's openBlobs takes it: one view when its bases lie back to
 * back, else the bases themselves, joined on the pool thread. Joining them here was a tenth of
 * a restore of deltas: 4 454 chunks, ~130 KiB of bases each, copied on the main thread.
 */
export function dictionaryPieces(bases: Buffer[] | null): Buffer | Buffer[] | null {
  if (!bases) return null;
  return bases.length === 1 ? bases[0]! : (side(bases) ?? bases);
}

/** One view over buffers that lie back to back in one allocation (bases opened together usually do), else null. */
function side(parts: Buffer[]): Buffer | null {
  const first = parts[0]!;
  let end = first.byteOffset + first.length;
  for (let i = 1; i < parts.length; i++) {
    if (parts[i]!.buffer !== first.buffer || parts[i]!.byteOffset !== end) return null;
    end += parts[i]!.length;
  }
  return Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset);
}
