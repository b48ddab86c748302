import { setFlagsFromString } from 'node:v8';

/**
 * V8 doubles a thread's young generation (up to 3 × 16 MiB on 64-bit) each time as many bytes
 * have survived scavenges since it last grew as it holds; the count only ever adds up, so the
 * longer a backup runs the larger every thread's young generation ends, whatever it keeps alive.
 * Peak RSS grew with the dump and the time a backup ran: a night of spread updates at the
 * default chunk size peaked at 193 MiB on 488 MB, 230-240 MiB on 8 GB and 246 MiB on 16 GB. The
 * growth factor is read at each growth, so a backup holds it at 1 while it runs: every thread's
 * young generation stays the size it had when the backup began (the main thread's new space 8 MiB after
 * kura's start-up, the workers' 1 MiB semi-spaces). The 8 GB night then peaked at 197-204 MiB
 * in the same time (24.2-25.9 s against 25.0-25.3, alternated); with the flag set at start-up, a
 * night of 73 000 4 KiB chunks peaked at 239-247 MiB against 260-265.
 *
 * Not for restores: a restore's chunks in flight then survive into the old generation (a 4 KiB
 * restore peaked at 179 MiB instead of 156-158, and took 3.5 s instead of 2.9). A V8 that
 * ignores the value (later ones bound it below by 2) only leaves the young generation to grow,
 * as before.
 */
const DEFAULT_GROWTH = 2;
let holders = 0;

/** Keeps the young generations from growing until the returned function is called. */
export function holdYoungGeneration(): () => void {
  if (holders++ === 0) setFlagsFromString('--semi-space-growth-factor=1');
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (--holders === 0) setFlagsFromString(`--semi-space-growth-factor=${DEFAULT_GROWTH}`);
  };
}
