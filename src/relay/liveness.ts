import type { Socket } from 'node:net';

/**
 * Liveness of a line, by progress rather than by ping replies.
 *
 * A line is alive while the far end is heard from: any byte that arrives counts — replies, the
 * vault's acknowledgement of data it has taken (it grants SSH window for every 256 KiB its
 * session has read), answers to the keepalive pings a quiet line is sent. A narrow line is alive
 * however many megabytes wait in front of a ping, as long as the vault keeps taking data; a line
 * from which nothing arrives for `relay.deadAfter` is down.
 *
 * Bytes this side's kernel took to send are not counted: into a send buffer that is not full a
 * kernel takes bytes (a ping, say) without the far end having acknowledged anything.
 */

export const DEFAULT_DEAD_AFTER_MS = 60_000;

/** The progress count of a connection: the bytes that arrived on its socket. */
export function socketProgress(s: Pick<Socket, 'bytesRead'>): number {
  return s.bytesRead;
}

export interface WatchState {
  /** the progress count at the last check */
  progress: number;
  /** when it last changed (ms) */
  movedAt: number;
  /** when it was last checked (ms) */
  checkedAt: number;
}

/**
 * One check of a line (pure): whether it moved since the last check, and whether it has now been
 * still for `deadAfterMs`. A check that comes late (this process was stalled: a long synchronous
 * step, a suspended VM) does not count the stall against the line.
 */
export function checkProgress(s: WatchState, progress: number, now: number, deadAfterMs: number, tickMs: number): WatchState & { dead: boolean } {
  if (progress !== s.progress) return { progress, movedAt: now, checkedAt: now, dead: false };
  const late = now - s.checkedAt - tickMs;
  const movedAt = late > tickMs ? s.movedAt + late : s.movedAt;
  return { progress, movedAt, checkedAt: now, dead: now - movedAt >= deadAfterMs };
}

/** How often a line is checked: a tenth of deadAfter, at most every half second. */
export function tickOf(deadAfterMs: number): number {
  return Math.max(10, Math.min(500, deadAfterMs / 10));
}

/** How often a line is pinged: at the keepalive interval, and at least three times per deadAfter. */
export function pingIntervalOf(keepaliveMs: number, deadAfterMs: number): number {
  return Math.max(100, Math.min(keepaliveMs, Math.floor(deadAfterMs / 3)));
}

/**
 * Watches `progress()` and calls `onDead` once, when it has not changed for `deadAfterMs`.
 * The timer does not keep the process alive.
 */
export function watchProgress(progress: () => number, deadAfterMs: number, onDead: () => void, now: () => number = () => performance.now()): { stop(): void } {
  const tickMs = tickOf(deadAfterMs);
  const t = now();
  let state: WatchState = { progress: progress(), movedAt: t, checkedAt: t };
  const timer = setInterval(() => {
    const next = checkProgress(state, progress(), now(), deadAfterMs, tickMs);
    state = next;
    if (next.dead) {
      clearInterval(timer);
      onDead();
    }
  }, tickMs);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}

/** "60 s", "1.5 s", "2 min": how long a line was still, for an operator. */
export function formatQuiet(ms: number): string {
  if (ms >= 120_000 && ms % 60_000 === 0) return `${ms / 60_000} min`;
  return `${Number((ms / 1000).toFixed(1))} s`;
}
