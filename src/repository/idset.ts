import { CHUNK_ID_BYTES } from '../crypto/blob.js';

/**
 * A read-only set of chunk IDs kept as the flat list they came in (n × 32 bytes) plus an
 * open-addressing index: no string per ID. Chunk IDs are keyed BLAKE3 hashes, so their first
 * four bytes are already a uniform hash. Membership compares all 32 bytes.
 */
export class IdSet {
  private readonly words: Int32Array;
  private readonly slots: Uint32Array; // entry index + 1; 0 = empty
  private readonly mask: number;
  readonly size: number;

  constructor(flat: Buffer) {
    if (flat.length % CHUNK_ID_BYTES !== 0) throw new RangeError('a list of chunk IDs is a multiple of 32 bytes');
    // an aligned copy, read as 32-bit words
    const copy = new Int32Array(flat.length / 4);
    Buffer.from(copy.buffer).set(flat);
    this.words = copy;
    const n = flat.length / CHUNK_ID_BYTES;
    let cap = 16;
    while (cap < n * 2) cap *= 2;
    this.slots = new Uint32Array(cap);
    this.mask = cap - 1;
    let size = 0;
    for (let i = 0; i < n; i++) {
      if (this.find(copy, i * 8) >= 0) continue; // duplicate chunk in the list
      let s = copy[i * 8]! & this.mask;
      while (this.slots[s] !== 0) s = (s + 1) & this.mask;
      this.slots[s] = i + 1;
      size++;
    }
    this.size = size;
  }

  /** Slot of the entry equal to words[at..at+8) of `src`, or -1. */
  private find(src: Int32Array, at: number): number {
    const w = this.words;
    const slots = this.slots;
    const mask = this.mask;
    for (let s = src[at]! & mask; ; s = (s + 1) & mask) {
      const e = slots[s]!;
      if (e === 0) return -1;
      const o = (e - 1) * 8;
      if (w[o] === src[at] && w[o + 1] === src[at + 1] && w[o + 2] === src[at + 2] && w[o + 3] === src[at + 3] && w[o + 4] === src[at + 4] && w[o + 5] === src[at + 5] && w[o + 6] === src[at + 6] && w[o + 7] === src[at + 7]) return s;
    }
  }

  private readonly probe = new Int32Array(8);
  private readonly probeBytes = Buffer.from(this.probe.buffer);

  has(id: Buffer): boolean {
    return this.indexOf(id) >= 0;
  }

  /** Position of the first occurrence of `id` in the list, or -1. */
  indexOf(id: Buffer): number {
    return this.indexAt(id, 0);
  }

  /** indexOf of the ID at ids[at .. at + 32) (a list of IDs, without slicing it). */
  indexAt(ids: Buffer, at: number): number {
    if (this.size === 0) return -1;
    ids.copy(this.probeBytes, 0, at, at + CHUNK_ID_BYTES);
    const s = this.find(this.probe, 0);
    return s < 0 ? -1 : this.slots[s]! - 1;
  }

  /** indexOf of the ID in words[at .. at + 8) (a list of IDs read as 32-bit words). */
  indexAtWords(words: Int32Array, at: number): number {
    if (this.size === 0) return -1;
    const s = this.find(words, at);
    return s < 0 ? -1 : this.slots[s]! - 1;
  }

  /** Entries in the list, duplicates included. */
  get length(): number {
    return this.words.length / 8;
  }

  /** The ID at position `i` of the list (a copy). */
  idAt(i: number): Buffer {
    return Buffer.from(Buffer.from(this.words.buffer, i * CHUNK_ID_BYTES, CHUNK_ID_BYTES));
  }
}
