import cron from 'node-cron';
import { KuraError } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import type { KuraConfig, SourceConfig } from '../config/schema.js';
import type { Repository } from '../repository/repository.js';
import { log } from '../log.js';
import { localGc, runSource, selectSources, type SourceResult } from './run.js';
import type { Notifier } from '../notify/notifier.js';
import { startWatch } from '../notify/evaluate.js';
import { maintenanceFailed } from '../notify/jobs.js';
import { takeSlot } from './slot.js';
import { lastPlannedStart, nextPlannedStart, planHistory, plannedMember, timeZoneOf, type PlannedMember } from './window.js';

export interface DaemonEvent {
  source: string;
  result: SourceResult['result'] | 'skipped' | 'planned';
  reason?: string;
  [k: string]: unknown;
}

/**
 * `kura agent daemon`: each source on its cron schedule, or at the start its virtualization
 * group's plan gives it (a missed planned run, while the daemon or the VM was down, runs at
 * start). A source never runs twice at once: a
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

  /** The sources the daemon runs: those with a cron schedule and those a virtualization group plans. */
  static scheduled(cfg: KuraConfig, only?: string[]): ReturnType<typeof selectSources> {
    const chosen = selectSources(cfg, only).filter(([name, s]) => s.schedule || plannedMember(cfg, name));
    if (chosen.length === 0) throw new KuraError('E_CONFIG', 'no source has a schedule; give sources.<name>.schedule (a cron expression), make this host a member of a modules.virtualization group, or use "kura agent run" from cron or a systemd timer');
    return chosen;
  }

  start(): string[] {
    const chosen = AgentDaemon.scheduled(this.cfg, this.only);
    const lg = log().child({ mode: 'agent' });
    for (const [name, src] of chosen) {
      const member = plannedMember(this.cfg, name);
      if (member) {
        if (src.schedule) lg.info({ source: name, group: member.group.name }, 'the source is planned by its virtualization group; its own schedule is not used');
        this.catchUp(name, src, member);
        this.schedulePlanned(name, src, member);
        continue;
      }
      const task = cron.schedule(src.schedule!, () => this.launch(name, src));
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

  /** Run a source now, unless its previous run is still going (then say so and skip). */
  private launch(name: string, src: SourceConfig, why?: Record<string, unknown>, coordination?: string): void {
    const lg = log().child({ mode: 'agent' });
    if (this.stopped) return;
    if (this.running.has(name)) {
      lg.warn({ source: name }, 'the previous run of this source is still going; this scheduled run is skipped');
      this.emit({ source: name, result: 'skipped', reason: 'the previous run is still going', time: new Date().toISOString() });
      return;
    }
    const run = (async () => {
      const r = await runSource(this.repo, this.cfg, name, src, { signal: this.abort.signal, notifier: this.notifier, coordination });
      this.emit({ ...(r as unknown as DaemonEvent), ...why });
      if (r.pruned && !this.stopped)
        await localGc(this.repo).catch((e: KuraError) => {
          lg.warn({ source: name, err: e.message }, 'on-site gc failed');
          this.notifier?.emit(maintenanceFailed('on-site gc', e, { tenant: src.tenant ?? this.cfg.tenant }));
        });
    })()
      .catch((e: Error) => lg.error({ source: name, err: e.message }, 'agent run failed'))
      .finally(() => this.running.delete(name));
    this.running.set(name, run);
  }

  /** Sources of one member (a whole host) run one after the other at the member's start. */
  private readonly memberChains = new Map<string, Promise<void>>();

  private launchPlanned(name: string, src: SourceConfig, m: PlannedMember, why: Record<string, unknown>, until: Date): void {
    const prev = this.memberChains.get(m.member) ?? Promise.resolve();
    const next = prev.then(async () => {
      if (this.stopped) return;
      const ops = this.repo.catalogue.ops;
      ops.setSlotState(name, { state: 'waiting', group: m.group.name, since: new Date().toISOString() });
      const lease = await takeSlot(this.cfg, m, { until, ttlMs: (m.group.slotTtlSeconds ?? 600) * 1000, signal: this.abort.signal });
      ops.setSlotState(name, { state: lease.coordination === 'coordinated' ? 'holding' : 'none', group: m.group.name, since: new Date().toISOString() });
      try {
        this.launch(name, src, { ...why, coordination: lease.coordination }, lease.coordination);
        await this.running.get(name);
      } finally {
        await lease.release();
        ops.setSlotState(name, { state: 'none', group: m.group.name, since: new Date().toISOString() });
      }
    });
    this.memberChains.set(m.member, next.catch(() => undefined));
  }

  /** At start: a planned run missed while the daemon or the VM was down runs now (the next start or window). */
  private catchUp(name: string, src: SourceConfig, m: PlannedMember): void {
    const tz = timeZoneOf(this.cfg);
    const last = lastPlannedStart(m, new Date(), tz, planHistory(this.repo, this.cfg));
    if (!last) return;
    const ops = this.repo.catalogue.ops;
    // a source that never ran here starts on the plan; one without a good job since its last
    // planned start missed it (the VM was off, the daemon down, or killed mid-export)
    if (!ops.lastJobStart(name) || ops.okJobSince(name, last.start.toISOString())) return;
    log().info({ source: name, group: m.group.name, missed: last.start.toISOString() }, 'the planned run was missed (the daemon or the VM was down): running it now');
    this.launchPlanned(name, src, m, { group: m.group.name, catchUp: true, missed: last.start.toISOString() }, new Date(Math.max(Date.now(), last.windowEnd.getTime(), last.end.getTime())));
  }

  /** The next planned start of the source's member; re-planned after each run and at least every 6 h. */
  private schedulePlanned(name: string, src: SourceConfig, m: PlannedMember): void {
    if (this.stopped) return;
    const tz = timeZoneOf(this.cfg);
    const next = nextPlannedStart(m, new Date(), tz, planHistory(this.repo, this.cfg));
    const wait = next ? Math.min(next.start.getTime() - Date.now(), 6 * 3_600_000) : 3_600_000;
    if (next) this.emit({ source: name, result: 'planned', group: m.group.name, member: m.member, start: next.start.toISOString(), end: next.end.toISOString(), ...(next.moved ? { moved: next.moved } : {}) });
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (next && next.start.getTime() <= Date.now() + 1000) this.launchPlanned(name, src, m, { group: m.group.name, plannedStart: next.start.toISOString() }, new Date(Math.max(next.windowEnd.getTime(), next.end.getTime())));
      this.schedulePlanned(name, src, m);
    }, Math.max(0, wait));
    this.timers.add(timer);
  }

  private readonly timers = new Set<NodeJS.Timeout>();

  /** Resolves when nothing runs any more; false when the grace period ran out first. */
  async stop(): Promise<boolean> {
    this.stopped = true;
    for (const t of this.tasks) t.stop();
    for (const t of this.timers) clearTimeout(t);
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
