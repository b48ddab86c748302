import { setFlagsFromString } from 'node:v8';
import { nativeAddon } from './native.js';

/**
 * How far V8's heaps and the C heap may grow while a backup runs. Their own rules make a long
 * backup's peak RSS grow with the dump, whatever the backup keeps alive:
 *
 * - The young generation. V8 doubles a thread's young generation (up to 3 × 16 MiB on 64-bit)
 *   each time as many bytes have survived scavenges since it last grew as it holds; the count only
 *   ever adds up. A night of spread updates at the default chunk size peaked at 193 MiB on 488 MB,
 *   230-240 MiB on 8 GB and 246 MiB on 16 GB. The growth factor is read at each growth, so a
 *   backup holds it at 1: every thread's young generation stays the size it had when the backup
 *   began (the main thread's new space 8 MiB after kura's start-up, the workers' 1 MiB
 *   semi-spaces). The 8 GB night then peaked at 197-204 MiB instead of 232-238, in the same time.
 * - The old generation. With the young generation held, more of a backup's short-lived objects
 *   (a batch's rows and keys, which live until their commit) are promoted before they die, and V8
 *   lets the old generation grow up to four times what survived its last full collection before
 *   it collects again. On the 8 GB night the main thread's heap rose from 21 to 36 MiB while what
 *   it kept alive stayed at 10-15 MiB (sampled with a full collection every 2 s). The growing
 *   factor is read at each full collection, so a backup holds it at 1.2. Measured, alternated,
 *   three runs each: the 8 GB night 2 at 201-207 MiB against 212-217, in the same time.
 * - The C heap. What the threads free goes back to malloc's arenas, which return to the system
 *   only what lies at their tops. At the 8 GB night's peak the arenas held 56 MiB, of which 29 MiB
 *   were free, and glibc had raised its mapping threshold to the size of a freed buffer (up to
 *   32 MiB), so more and more buffers landed in the arenas. A backup fixes that threshold at 1 MiB
 *   (for the rest of the process: glibc has no way back to its own rule) and returns the arenas'
 *   free pages to the system every second. Measured, with the V8 holds, alternated three times: a
 *   488 MB night 163-169 MiB against 171-178 (3.2-4.2 s against 3.1-4.2, 0.1-0.2 s more system
 *   time); the 8 GB night 2 192-195 MiB against 195-198 (about 1 s more system time). A restore
 *   with the same fixed threshold took 1.17-1.35 s against 1.01-1.16 s, so the threshold is left
 *   as it is until a backup runs.
 *
 * Not for restores from a directory: a restore's chunks in flight then survive into the old
 * generation (with a held young generation a 4 KiB restore peaked at 179 MiB instead of 156-158,
 * and took 3.5 s instead of 2.9). A restore from an object store reads many segments ahead
 * (restorer/restore.ts), and without the holds its heaps grew with them: a 488 MB dump's fourth
 * night in 4 KiB chunks from Ceph RGW peaked at 227-238 MiB reading 8 segments at once, 264-270
 * reading 24; held, 160-170 and 176-178, in 5.2-5.4 s instead of 4.8-4.9. A restore from a vault
 * reads ahead as well: from a vault on RGW, reading 4096 chunks at once, 184-201 MiB, held 134-136
 * MiB in the same 5.3-5.5 s. A V8 that ignores a value (later ones bound the young generation's factor below by 2)
 * only leaves that heap to grow, as before; without the native addon the C heap is left as it is.
 */
const DEFAULT_FLAGS = '--semi-space-growth-factor=2 --heap-growing-percent=0'; // 0: V8 chooses, by GC speed
const HELD_FLAGS = '--semi-space-growth-factor=1 --heap-growing-percent=20';
const MMAP_THRESHOLD = 1 << 20;
const TRIM_EVERY_MS = 1000;
let holders = 0;
let trimming: NodeJS.Timeout | null = null;

/** Holds the young generations at their size, the old ones near what they keep alive, and the C heap near what it holds, until the returned function is called. */
export function holdHeapGrowth(): () => void {
  if (holders++ === 0) {
    setFlagsFromString(HELD_FLAGS);
    const native = nativeAddon();
    if (native?.trimMalloc && native.fixMallocMmapThreshold?.(MMAP_THRESHOLD)) {
      const trim = native.trimMalloc.bind(native);
      trimming = setInterval(trim, TRIM_EVERY_MS).unref();
    }
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (--holders === 0) {
      setFlagsFromString(DEFAULT_FLAGS);
      if (trimming) clearInterval(trimming);
      trimming = null;
    }
  };
}
