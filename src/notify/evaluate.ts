import { parseDuration } from '../config/duration.js';
import type { KuraConfig } from '../config/schema.js';
import { log } from '../log.js';
import type { Repository } from '../repository/repository.js';
import { collectStatus } from '../status/collect.js';
import type { Notifier } from './notifier.js';
import { lineStep, rpoKey, rpoStep, type LineState, type RpoState } from './watch.js';

/** Compare every source's RPO exposure with what was last announced; say each crossing once. */
export function evaluateRpo(repo: Repository, cfg: KuraConfig, notifier: Notifier, now = new Date()): void {
  if (!notifier.enabled) return;
  const report = collectStatus(repo, cfg, now);
  for (const e of report.exposure) notifier.transition<RpoState | undefined>(rpoKey(e), (prev) => rpoStep(prev, e, now.getTime()));
}

/** What the relay saw of a route's line just now (down: it could not reach or stay with the vault). */
export function observeLine(cfg: KuraConfig, notifier: Notifier, route: string, seen: { down: boolean; error?: string | null } | null, now = Date.now()): void {
  const after = parseDuration(cfg.notifications.lineDownAfter)!;
  notifier.transition<LineState>(`line:${route}`, (prev) => lineStep(prev, route, seen, now, after));
}

/**
 * The daemons' watch: every `notifications.evaluateEvery`, RPO exposure of every source (a
 * source that silently stopped is noticed with no command run) and, for a relay, how long each
 * route's line has been down.
 */
export function startWatch(repo: Repository, cfg: KuraConfig, notifier: Notifier, routes: readonly string[] = []): { stop: () => void } {
  if (!notifier.enabled) return { stop: () => undefined };
  const tick = () => {
    try {
      evaluateRpo(repo, cfg, notifier);
      for (const r of routes) observeLine(cfg, notifier, r, null);
    } catch (e) {
      log().warn({ err: (e as Error).message }, 'notification watch failed; it runs again at the next interval');
    }
  };
  const t = setInterval(tick, parseDuration(cfg.notifications.evaluateEvery)!);
  tick();
  return { stop: () => clearInterval(t) };
}
