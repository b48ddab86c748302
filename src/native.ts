import { createRequire } from 'node:module';

/**
 * kura's native addon (native/kura_native.c, built by `npm run build` with node-gyp): FastCDC
 * boundaries and keyed BLAKE3 IDs of a whole buffer in one call (or boundaries only, and the IDs
 * of given chunks). Optional: without it (no C
 * compiler where kura was installed, or KURA_NATIVE=0) the same chunks and IDs are made in
 * TypeScript, more slowly. The test suite compares the two.
 */
export interface NativeAddon {
  cutAndHash(
    data: Uint8Array,
    start: number,
    end: number,
    final: boolean,
    min: number,
    avg: number,
    max: number,
    maskS: number,
    maskL: number,
    gear: Int32Array,
    key: Uint8Array,
    cuts: Uint32Array,
    ids: Uint8Array,
  ): number;
  hashChunks(data: Uint8Array, cuts: Uint32Array, count: number, key: Uint8Array, ids: Uint8Array): void;
}

let cached: NativeAddon | null | undefined;

export function nativeAddon(): NativeAddon | null {
  if (cached !== undefined) return cached;
  if (process.env.KURA_NATIVE === '0') return (cached = null);
  try {
    cached = createRequire(import.meta.url)('../../build/Release/kura_native.node') as NativeAddon;
  } catch {
    cached = null;
  }
  return cached;
}
