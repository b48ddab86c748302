import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { configOf, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';
import { log } from '../log.js';
import type { Repository } from '../repository/repository.js';

/**
 * relay once's progress: bytes on the wire, snapshots sent of those queued, and an estimate of
 * the total from what the queued backups stored new (the vault is sent what it lacks, about that).
 */
async function relayMeter(repo: Repository, opts: { route: string[]; json?: boolean; progress?: boolean }) {
  const { meterFor } = await import('./progress.js');
  const { wireTotals } = await import('../relay/connection.js');
  const ops = repo.catalogue.ops;
  const queued = () => ops.queued().filter((q) => opts.route.length === 0 || opts.route.includes(q.route));
  const start = queued();
  const estimate = start.reduce((n, q) => n + (repo.catalogue.snapshotHeader(q.snapshot)?.newBytes ?? 0), 0);
  const meter = meterFor(opts, 'relay', opts.route.length ? opts.route.join(',') : 'all routes', estimate);
  const from = wireTotals.bytesOut;
  if (meter.mode !== 'off') meter.follow(() => ({ bytes: wireTotals.bytesOut - from, extra: { snapshots: `${start.length - queued().length}/${start.length}` } }));
  return meter;
}

export function registerRelay(program: Command): void {
  const relay = program.command('relay').description('relay mode: ship queued snapshots to vaults over SSH, oldest first');

  withRepoOptions(relay.command('once'))
    .description('send what can be sent now, then exit: 0 when every route is drained, 75 when something is left (line down, or the tenant is over its vault quota: E_QUOTA), 77/65 when a vault refused, 65 when a damaged snapshot was set aside (the ones after it were sent)')
    .option('--route <name>', 'only this route (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--json', 'print one JSON line per route')
    .option('--progress', 'show progress even when standard error is no terminal (with --json: JSON lines on standard error)')
    .option('--no-progress', 'no progress line on a terminal')
    .action(async (opts: RepoOptions & { route: string[]; json?: boolean; progress?: boolean }, cmd: Command) => {
      const { Relay } = await import('../relay/relay.js');
      const { config: cfg, path: cfgPath } = configOf(cmd);
      const { checkFiles } = await import('../config/load.js');
      checkFiles(cfg, { relay: true }, cfgPath);
      const repo = await openRepo(cmd, opts, 'none');
      const { Notifier } = await import('../notify/notifier.js');
      const { evaluateRpo } = await import('../notify/evaluate.js');
      const notifier = Notifier.fromConfig(cfg, 'relay', repo.root);
      notifier.start();
      const meter = await relayMeter(repo, opts);
      let ok = false;
      try {
        const reports = await new Relay(repo, cfg, opts.route, notifier).once();
        ok = true;
        meter.finish(true);
        evaluateRpo(repo, cfg, notifier);
        for (const r of reports) {
          if (opts.json) printJson(r);
          else {
            process.stdout.write(`${r.route}: ${r.state}, ${r.sent} sent, ${r.left} left${r.setAside ? `, ${r.setAside.length} set aside` : ''}${r.error ? ` (${r.error.code}: ${r.error.message})` : ''}\n`);
            for (const a of r.setAside ?? []) process.stdout.write(`  set aside: ${a.snapshot} of ${a.source}: ${a.code}: ${a.message}\n`);
          }
        }
        const refused = reports.find((r) => r.state === 'refused');
        if (refused) throw new KuraError(refused.error!.code as KuraError['code'], `route ${refused.route}: ${refused.error!.message}`, { reported: opts.json });
        const aside = reports.find((r) => r.setAside?.length);
        if (aside) {
          const first = aside.setAside![0]!;
          throw new KuraError(first.code as KuraError['code'], `route ${aside.route}: ${aside.setAside!.length} damaged snapshot(s) set aside (first ${first.snapshot} of ${first.source}); the snapshots after them were sent. "kura status" lists them`, { reported: opts.json });
        }
        const over = reports.find((r) => r.state === 'quota-exceeded');
        if (over) throw new KuraError('E_QUOTA', `route ${over.route}: ${over.error!.message}; ${over.left} snapshot(s) stay queued`, { reported: opts.json });
        const left = reports.reduce((n, r) => n + r.left, 0);
        if (left > 0) throw new KuraError('E_BACKLOG_LEFT', `${left} snapshot(s) still queued; the relay will send them when the line is back`, { reported: opts.json });
      } finally {
        if (!ok) meter.finish(false);
        await notifier.flush();
        await notifier.close();
        repo.close();
      }
    });

  withRepoOptions(relay.command('run'))
    .description('run the relay daemon: drain every route, back off on line faults, catch up oldest first; SIGTERM stops it cleanly')
    .option('--route <name>', 'only this route (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .action(async (opts: RepoOptions & { route: string[] }, cmd: Command) => {
      const { Relay } = await import('../relay/relay.js');
      const { config: cfg, path: cfgPath } = configOf(cmd);
      const { checkFiles } = await import('../config/load.js');
      checkFiles(cfg, { relay: true }, cfgPath);
      const repo = await openRepo(cmd, opts, 'none');
      const { Notifier } = await import('../notify/notifier.js');
      const { startWatch } = await import('../notify/evaluate.js');
      const notifier = Notifier.fromConfig(cfg, 'relay', repo.root);
      const r = new Relay(repo, cfg, opts.route, notifier);
      notifier.start();
      const { routesOf } = await import('../relay/routes.js');
      const watch = startWatch(repo, cfg, notifier, opts.route.length ? opts.route : Object.keys(routesOf(cfg)));
      let metrics: { close: () => Promise<void> } | null = null;
      if (cfg.relay.metrics) {
        const { serveMetrics } = await import('../status/http.js');
        const { collectStatus } = await import('../status/collect.js');
        const { relayMetrics } = await import('../status/status.js');
        metrics = await serveMetrics(cfg.relay.metrics.host, cfg.relay.metrics.port, async () => relayMetrics(collectStatus(repo, cfg)) + (await import('../store/wrappers.js')).renderStoreMetrics());
      }
      const stop = (sig: string) => {
        log().info({ signal: sig }, 'relay stopping');
        r.stop();
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
      try {
        await r.run();
      } finally {
        watch.stop();
        await notifier.close();
        await metrics?.close();
        repo.close();
      }
    });
}

/** Operator controls for a running relay; also bound to keys in kura top. */
export function registerRouteControls(program: Command): void {
  const relay = program.commands.find((c) => c.name() === 'relay')!;
  withRepoOptions(relay.command('skip'))
    .description('set a queued snapshot aside by hand: it is not sent and no longer holds up its route (kura status lists it); the log records who did it and why')
    .argument('<snapshot>', 'snapshot ID or unique prefix of the queue entry')
    .option('--route <name>', 'the route of the entry (needed when the snapshot is queued for several)')
    .option('--reason <text>', 'why, for the record', 'set aside by an operator')
    .option('--json', 'print the result as one JSON line')
    .action(async (ref: string, opts: RepoOptions & { route?: string; reason: string }, cmd: Command) => {
      if (!/^[0-9a-f]{4,64}$/.test(ref)) throw new KuraError('E_USAGE', `"${ref}" is not a snapshot reference: give its ID or a unique prefix (4+ hex digits)`);
      const repo = await openRepo(cmd, opts, 'none');
      try {
        const waiting = repo.catalogue.ops.waitingEntries(ref).filter((e) => !opts.route || e.route === opts.route);
        const snapshots = new Set(waiting.map((e) => e.snapshot));
        if (waiting.length === 0) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `no queued entry of snapshot ${ref}${opts.route ? ` on route ${opts.route}` : ''} waits to be sent; "kura status" lists the queue`);
        if (snapshots.size > 1) throw new KuraError('E_SNAPSHOT_AMBIGUOUS', `"${ref}" matches ${snapshots.size} queued snapshots; give more digits`);
        if (waiting.length > 1) throw new KuraError('E_USAGE', `snapshot ${waiting[0]!.snapshot} is queued for routes ${waiting.map((e) => e.route).join(', ')}: say which with --route`);
        const e = waiting[0]!;
        const user = process.env.SUDO_USER ?? process.env.USER ?? 'unknown';
        repo.catalogue.ops.setAside(e.snapshot, e.route, `skipped by ${user}: ${opts.reason}`);
        log().warn({ event: 'relay-skip', snapshot: e.snapshot, source: e.source, route: e.route, user, reason: opts.reason }, `queue entry set aside by hand: snapshot ${e.snapshot} of ${e.source} will not be sent on route ${e.route}`);
        if (opts.json) printJson({ snapshot: e.snapshot, route: e.route, source: e.source, setAside: true });
        else process.stdout.write(`${e.route}: snapshot ${e.snapshot} of ${e.source} set aside; the route goes on with the next one\n`);
      } finally {
        repo.close();
      }
    });
  const controls: Array<[string, string, { paused?: boolean; retry?: boolean }]> = [
    ['pause', 'stop sending on a route (the queue keeps growing) until resumed', { paused: true }],
    ['resume', 'resume a paused route', { paused: false }],
    ['retry', 'skip the back-off: the running relay tries the route now', { retry: true }],
  ];
  for (const [name, what, control] of controls) {
    withRepoOptions(relay.command(name))
      .description(what)
      .argument('<route>', 'route name')
      .action(async (route: string, opts: RepoOptions, cmd: Command) => {
        const { routesOf } = await import('../relay/routes.js');
        if (!routesOf(configOf(cmd).config)[route]) throw new KuraError('E_CONFIG', `route "${route}" is not in modules.routing.routes`);
        const repo = await openRepo(cmd, opts, 'none');
        try {
          repo.catalogue.ops.setRouteControl(route, control);
          process.stdout.write(`${route}: ${name} requested\n`);
        } finally {
          repo.close();
        }
      });
  }
}
