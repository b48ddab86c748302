/**
 * The buffers pieces are opened into, given back once their bytes were written and taken again
 * for later pieces. Fresh buffers for every piece (a restore's whole size again in new memory)
 * cost page faults and, as external memory, a major GC of the heap every few tens of MiB.
 * At most `keep` are kept; the pipeline holds at most SEGMENTS_AHEAD segments of PARTS pieces.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(private readonly keep: number) {}

  take(bytes: number): Buffer {
    const i = this.free.findIndex((b) => b.length >= bytes);
    if (i >= 0) return this.free.splice(i, 1)[0]!;
    return Buffer.allocUnsafeSlow(Math.max(1, Math.ceil(bytes / (1 << 20))) * (1 << 20));
  }

  give(b: Buffer): void {
    if (this.free.length < this.keep) this.free.push(b);
  }
}
