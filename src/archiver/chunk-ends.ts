/**
 * Where a changed chunk was in the previous generation, found by how it ends.
 *
 * Content-defined boundaries depend only on the bytes just before them, so an edit inside a
 * region leaves the region's boundaries where they were: a changed chunk usually ends with the
 * same bytes as the chunk it replaces. The backup fingerprints each chunk's last bytes (kept in
 * the list cache beside its sizes), and a new chunk whose end matches an old chunk's end takes
 * that chunk (and those between it and the last match) as its delta bases. Estimating the place
 * by bytes from the last unchanged chunk fails when every chunk changes and rows leave their
 * places each night (an OLTP table dumped in heap order): the estimate drifts by the bytes that
 * moved and misses the chunk after a few dozen. A fingerprint only guides the choice: a wrong
 * match picks worse bases, never a wrong chunk.
 */

/** Bytes of a chunk's end that are fingerprinted (the window the chunker's cut depends on). */
export const END_BYTES = 32;

/** FNV-1a of the last END_BYTES bytes of data[start, end) (all of them if the chunk is shorter). */
export function endPrint(data: Uint8Array, start: number, end: number): number {
  let h = 0x811c9dc5;
  for (let i = Math.max(start, end - END_BYTES); i < end; i++) h = Math.imul(h ^ data[i]!, 0x01000193);
  return h >>> 0;
}

/**
 * The previous generation's chunks by end fingerprint (8 bytes a chunk: fingerprints sorted, with
 * each one's place beside it; no per-entry objects). Lookups allocate nothing: with 64-bit keys
 * every comparison made a BigInt, 226 MB of garbage in a night of 73 000 4 KiB chunks (measured).
 */
export class EndIndex {
  private readonly prints: Uint32Array;
  private readonly places: Uint32Array;

  constructor(ends: Uint32Array) {
    const order = new Uint32Array(ends.length);
    for (let i = 0; i < order.length; i++) order[i] = i;
    order.sort((a, b) => ends[a]! - ends[b]! || a - b);
    this.places = order;
    this.prints = new Uint32Array(order.length);
    for (let i = 0; i < order.length; i++) this.prints[i] = ends[order[i]!]!;
  }

  /** The old chunk ending with fingerprint `fp`: of several, the one nearest `near`; -1 if none. */
  find(fp: number, near: number): number {
    const key = fp >>> 0;
    let lo = 0;
    let hi = this.prints.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.prints[mid]! < key) lo = mid + 1;
      else hi = mid;
    }
    let best = -1;
    for (let i = lo; i < this.prints.length && this.prints[i] === key; i++) {
      const k = this.places[i]!;
      if (best < 0 || Math.abs(k - near) < Math.abs(best - near)) best = k;
    }
    return best;
  }
}

/** At most this many old chunks between two matched ends are offered as one chunk's bases. */
const ALIGNED_SPAN = 3;

/**
 * The delta bases of a new chunk whose end matched old chunk `match`, when the last match (or
 * unchanged chunk) left off at old chunk `from`: the old chunks from there to the match, which
 * cover the same bytes when the boundaries between held; if that is more than a few (or the
 * match lies behind), the matched chunk and the one before it.
 */
export function alignedBases(from: number, match: number): number[] {
  if (match >= from && match - from < ALIGNED_SPAN) {
    const out: number[] = [];
    for (let k = from; k <= match; k++) out.push(k);
    return out;
  }
  return match > 0 ? [match - 1, match] : [match];
}
