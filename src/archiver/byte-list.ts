import { CHUNK_ID_BYTES } from '../crypto/blob.js';

/** Growable byte list (chunk IDs of the snapshot, 32 bytes per chunk of input). */
export class ByteList {
  private buf = Buffer.allocUnsafe(64 * CHUNK_ID_BYTES);
  length = 0;
  append(b: Uint8Array): void {
    if (this.length + b.length > this.buf.length) {
      const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.length + b.length));
      this.buf.copy(next, 0, 0, this.length);
      this.buf = next;
    }
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}
