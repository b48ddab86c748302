import { readFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';

/** Samples a child's peak resident set (VmHWM) from /proc while it runs: measured from outside. */
export function watchPeakRss(child: ChildProcess, everyMs = 25): { stop: () => number } {
  let peakKiB = 0;
  const sample = () => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peakKiB = Math.max(peakKiB, Number(m[1]));
    } catch {
      /* exited */
    }
  };
  const timer = setInterval(sample, everyMs);
  child.once('exit', () => clearInterval(timer));
  return {
    stop: () => {
      clearInterval(timer);
      return peakKiB / 1024;
    },
  };
}

export async function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return { code: child.exitCode, signal: child.signalCode };
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  return { code, signal };
}

/** Polls `cond` until it holds; fails naming `what` after `timeoutMs`. */
export async function waitFor(what: string, cond: () => Promise<boolean> | boolean, timeoutMs = 30_000, everyMs = 100): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
