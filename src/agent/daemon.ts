import cron from 'node-cron';
import { KuraError } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import type { KuraConfig } from '../config/schema.js';
import type { Repository } from '../repository/repository.js';
import { log } from '../log.js';
import { localGc, runSource, selectSources, type SourceResult } from './run.js';
import type { Notifier } from '../notify/notifier.js';
import { startWatch } from '../notify/evaluate.js';
import { maintenanceFailed } from '../notify/jobs.js';

export interface DaemonEvent {
  source: string;
  result: SourceResult['result'] | 'skipped';
  reason?: string;
  [k: string]: unknown;
}

/**
 * `kura agent daemon`: each source on its cron schedule. A source never runs twice at once: a
 * tick that comes while its previous run is still going is reported and skipped. stop() (on
 * SIGTERM) stops the schedules, asks running exports to stop (a stopped export is a failed job
 * with no snapshot, like any other) and waits for them at most `agent.shutdownGrace`.
 */
export class AgentDaemon {
  private readonly tasks: Array<{ stop: () => unknown }> = [];
  private readonly running = new Map<string, Promise<void>>();
  private readonly abort = new AbortController();
  private stopped = false;

  constructor(
    private readonly repo: Repository,
    private readonly cfg: KuraConfig,
    private readonly emit: (e: DaemonEvent) => void,
    private readonly only?: string[],
    private readonly notifier?: Notifier,
  ) {}

  /** The sources with a schedule; a config error when there are none. */
  static scheduled(cfg: KuraConfig, only?: string[]): ReturnType<typeof selectSources> {
    const chosen = selectSources(cfg, only).filter(([, s]) => s.schedule);
    if (chosen.length === 0) throw new KuraError('E_CONFIG', 'no source has a schedule; give sources.<name>.schedule (a cron expression) or use "kura agent run" from cron or a systemd timer');
    return chosen;
  }

  start(): string[] {
    const chosen = AgentDaemon.scheduled(this.cfg, this.only);
    const lg = log().child({ mode: 'agent' });
    for (const [name, src] of chosen) {
      const task = cron.schedule(src.schedule!, () => {
        if (this.stopped) return;
        if (this.running.has(name)) {
          lg.warn({ source: name }, 'the previous run of this source is still going; this scheduled run is skipped');
          this.emit({ source: name, result: 'skipped', reason: 'the previous run is still going', time: new Date().toISOString() });
          return;
        }
        const run = (async () => {
          const r = await runSource(this.repo, this.cfg, name, src, { signal: this.abort.signal, notifier: this.notifier });
          this.emit(r as unknown as DaemonEvent);
          if (r.pruned && !this.stopped)
            await localGc(this.repo).catch((e: KuraError) => {
              lg.warn({ source: name, err: e.message }, 'on-site gc failed');
              this.notifier?.emit(maintenanceFailed('on-site gc', e, { tenant: src.tenant ?? this.cfg.tenant }));
            });
        })()
          .catch((e: Error) => lg.error({ source: name, err: e.message }, 'agent run failed'))
          .finally(() => this.running.delete(name));
        this.running.set(name, run);
      });
      this.tasks.push(task);
    }
    if (this.notifier) {
      this.notifier.start();
      this.tasks.push(startWatch(this.repo, this.cfg, this.notifier));
    }
    this.repo.catalogue.ops.heartbeat('agent');
    const beat = setInterval(() => this.repo.catalogue.ops.heartbeat('agent'), 5000);
    this.tasks.push({ stop: () => clearInterval(beat) });
    return chosen.map(([n]) => n);
  }

  /** Resolves when nothing runs any more; false when the grace period ran out first. */
  async stop(): Promise<boolean> {
    this.stopped = true;
    for (const t of this.tasks) t.stop();
    if (this.running.size === 0) return true;
    this.abort.abort();
    const grace = parseDuration(this.cfg.agent.shutdownGrace)!;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((r) => (timer = setTimeout(() => r(false), grace)));
    const done = Promise.all(this.running.values()).then(() => true as const);
    const ok = await Promise.race([done, timedOut]);
    clearTimeout(timer);
    return ok;
  }
}
