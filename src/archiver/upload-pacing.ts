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
 * so a high ceiling is paid in peak RSS: on Ceph RGW, 2 runs each, alternated, a 488 MB OLTP
 * night of deltas peaked at 172-191 MiB with 8 MiB against 227-245 with 24 MiB and no gathering
 * (2.55-2.83 s against 2.83-3.54 s); its first backup at 146 against 161 MiB; a 165 MB municipal
 * first backup at 162-168 against 205-211 MiB in the same 2.0-2.2 s. 4 MiB took 4.1-4.5 s for
 * the night (a batch's bases are fetched per batch), 12 MiB peaked at 187-206 MiB.
 */
export class RemoteBatchSizer {
  /** stored bytes per input byte, as the recent packs got it (a first guess for a database export) */
  private storedPerInput = 0.3;
  constructor(
    readonly target = 3.8 * 2 ** 20,
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
