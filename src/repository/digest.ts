import { blake3, Blake3Hasher } from '@napi-rs/blake-hash';
import { nativeAddon } from '../native.js';

/**
 * The digest of a stored blob (pack format 2, docs/format.md): the first 16 bytes of BLAKE3 in
 * keyed mode, with the public key DIGEST_KEY, of the blob's bytes as stored (ciphertext, or a
 * plaintext list block). Keyed mode with a fixed key is just another hash function; it lets the
 * native addon hash many small blobs side by side (its SIMD batch is keyed: 3-4x the speed of
 * one blob at a time on 0.5-2 KiB blobs, the size of a dump's compressed 4 KiB chunks). Recorded
 * when the blob is written (pack index, catalogue) and carried with it over the relay, so that
 * whoever holds no key (a relay, a vault) can tell whether the bytes it reads are the bytes that
 * were written. It says nothing about who wrote them: authenticity stays with the GCM tag and
 * the chunk ID, which need the key.
 */
export const DIGEST_BYTES = 16;

/** The BLAKE3 key of blob digests: BLAKE3-256 of "kura blob digest v1". Public: anyone can verify a digest. */
export const DIGEST_KEY = blake3('kura blob digest v1');

// one call into the native addon costs ~1.5 us; a new keyed hasher of @napi-rs/blake-hash ~20,
// one kept and reset ~5
const ONE_CUT = new Uint32Array(2);
const ONE_OUT = Buffer.alloc(32);
let fallback: Blake3Hasher | null = null;

/** One blob's digest. */
export function blobDigest(blob: Uint8Array): Buffer {
  const native = nativeAddon();
  if (native) {
    ONE_CUT[1] = blob.length;
    native.hashChunks(blob, ONE_CUT, 1, DIGEST_KEY, ONE_OUT);
    return Buffer.from(ONE_OUT.subarray(0, DIGEST_BYTES));
  }
  fallback ??= Blake3Hasher.newKeyed(DIGEST_KEY);
  fallback.reset();
  return fallback.update(blob).digestBuffer().subarray(0, DIGEST_BYTES);
}

/**
 * The digests of blobs lying back to back in `bytes` (`lengths` in order, adding up to at most
 * its length), n × 16 bytes: one native call for all of them where the addon is built.
 */
export function runDigests(bytes: Uint8Array, lengths: readonly number[]): Buffer {
  const n = lengths.length;
  // its own memory, word-aligned (a Buffer this small may sit unaligned in Node's pool)
  const out = Buffer.from(new ArrayBuffer(n * DIGEST_BYTES));
  const native = nativeAddon();
  if (native && n > 1) {
    const cuts = new Uint32Array(2 * n);
    let off = 0;
    for (let i = 0; i < n; i++) {
      cuts[2 * i] = off;
      cuts[2 * i + 1] = lengths[i]!;
      off += lengths[i]!;
    }
    const full = new Uint32Array(n * 8);
    native.hashChunks(bytes, cuts, n, DIGEST_KEY, new Uint8Array(full.buffer));
    // the first 16 of each 32 bytes, as words (a Buffer.copy per blob cost as much as the hashing)
    const words = new Uint32Array(out.buffer, out.byteOffset, n * 4);
    for (let i = 0; i < n; i++) {
      words[4 * i] = full[8 * i]!;
      words[4 * i + 1] = full[8 * i + 1]!;
      words[4 * i + 2] = full[8 * i + 2]!;
      words[4 * i + 3] = full[8 * i + 3]!;
    }
    return out;
  }
  let off = 0;
  for (let i = 0; i < n; i++) {
    blobDigest(bytes.subarray(off, off + lengths[i]!)).copy(out, i * DIGEST_BYTES);
    off += lengths[i]!;
  }
  return out;
}

/** How a blob read back compares with the digest recorded when it was written. */
export type DigestVerdict = 'ok' | 'damaged' | 'unrecorded';

/**
 * The verdict for each blob of a run: 'unrecorded' where no digest was recorded (a blob written
 * before pack format 2: verified by key, as before), 'damaged' where the bytes no longer hash
 * to it. `actual` is runDigests of the run.
 */
export function digestVerdicts(recorded: ReadonlyArray<Uint8Array | null | undefined>, actual: Buffer): DigestVerdict[] {
  return recorded.map((d, i) => {
    if (!d) return 'unrecorded';
    return actual.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES).equals(d) ? 'ok' : 'damaged';
  });
}
