import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * What arrives on a socket comes in Buffers of its own (up to 64 KiB each, from the C heap),
 * garbage as soon as a reader has copied it out, yet freed only by V8's next collection of the
 * thread's young generation. A thread that reads much and allocates few objects besides collects
 * rarely: V8 lets external memory grow by 64 MiB before it steps in. A night of changed chunks
 * reads its delta bases from the object store (141 MB for a 488 MiB dump), and its peak RSS stood
 * 45 MiB of freed socket buffers above the same night on a local disk (the main thread's C heap
 * at its peak: 73 MiB against 27). So every READ_BETWEEN bytes of answers the thread's young
 * generation is collected (a scavenge: dead objects only, a millisecond or two). Measured on
 * that night: 191-198 MiB against 211-222 with no collection, in the same time (4.4-4.7 s); every
 * 16 MiB left it at 211-218 MiB.
 */
const READ_BETWEEN = 4 << 20;

let read = 0;
let collect: ((opts: { type: 'minor' }) => void) | null | undefined;

/** Count `bytes` read from a socket; collect the young generation when READ_BETWEEN have been since the last time. */
export function bytesRead(bytes: number): void {
  read += bytes;
  if (read < READ_BETWEEN) return;
  read = 0;
  if (collect === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      collect = runInNewContext('gc') as typeof collect;
    } catch {
      collect = null; // a runtime without it: V8's own rule, as before
    }
  }
  collect?.({ type: 'minor' });
}
