/** Capped exponential back-off with a little jitter (pure; `random` injectable for tests). */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number, random = Math.random): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(Math.min(maxMs, base * (0.9 + 0.2 * random())));
}
