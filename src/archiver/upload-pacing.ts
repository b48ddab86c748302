// How packs go up to an object store: the input per batch (so packs come out at a few MiB) and
// the bytes of packs uploading at once. Used by archiver/backup.ts.

/**
 * On an object store each pack is one PUT: packs of a few MiB keep the requests per GiB stored
 * low (≤ 300 wants ≥ 3.4 MiB), and Ceph RGW stores an object over 4 MiB (rgw_max_chunk_size) as
 * a head and a tail RADOS object, two writes. Packs are aimed at `target` stored bytes: each
 * batch takes as much input as the packs so far say compresses to that (measured on a 1 GiB
 * first backup to RGW: batches of 16 MiB, packs of 4.4 MiB, cost Ceph 2.3-3.9 CPU-s; of 12 MiB,
 * packs of 3.3 MiB, 2.2 s, and the backup ran 5-10 % faster).
 *
 * Up to `max`: input that compresses better than that makes packs under the target, which
 * PackMerger gathers into one. Every batch in flight holds its input (and a worker its bases),
 * so a high ceiling is paid in peak RSS. On Ceph RGW, 2 runs each, alternated:
 * - a 488 MB OLTP dump (~100:1): first backup 140-142 MiB with 8 MiB, 140-154 with 12, 161 with
 *   24 and no gathering; its nights of deltas 170-186 MiB (2.3-2.8 s), 185-202, 224-245 (2.5-3.5 s)
 * - a 488 MiB dump that compresses 3.6:1, default chunks: first backup 155 MiB (4.0 s) with 8,
 *   164-165 (3.3-4.4 s) with 12, 171 (3.8-3.9 s) with 24; a night of one row in 40 changed
 *   222-230 MiB (5.9 s), 241-252 (5.2-5.6 s), 307-322 (4.9-6.6 s)
 * - 4 MiB took 4.1-4.5 s for the OLTP night (a batch's bases are fetched per batch)
 */
/** Stored bytes a pack is aimed at (packs of small batches are gathered to about this size: pack-merge.ts). */
export const PACK_TARGET = 3.8 * 2 ** 20;

export class RemoteBatchSizer {
  /** stored bytes per input byte, as the recent packs got it (a first guess for a database export) */
  private storedPerInput = 0.3;
  constructor(
    readonly target = PACK_TARGET,
    readonly min = 4 << 20,
    readonly max = 8 << 20,
  ) {}

  /** Input bytes for the next batch. */
  next(): number {
    return Math.round(Math.min(this.max, Math.max(this.min, this.target / this.storedPerInput)));
  }

  /** A batch of `input` bytes became a pack of `stored` bytes. */
  seen(input: number, stored: number): void {
    if (input > 0) this.storedPerInput = (this.storedPerInput + stored / input) / 2;
  }
}

/** Bytes in flight, bounded: acquire() waits while `limit` would be passed (one oversized request may go alone). */
export class ByteBudget {
  private used = 0;
  private waiting: Array<() => void> = [];
  constructor(private readonly limit: number) {}
  async acquire(n: number): Promise<void> {
    while (this.used > 0 && this.used + n > this.limit) await new Promise<void>((r) => this.waiting.push(r));
    this.used += n;
  }
  release(n: number): void {
    this.used -= n;
    for (const w of this.waiting.splice(0)) w();
  }
}
