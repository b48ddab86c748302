import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { configOf, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';
import { log } from '../log.js';

export function registerRelay(program: Command): void {
  const relay = program.command('relay').description('relay mode: ship queued snapshots to vaults over SSH, oldest first');

  withRepoOptions(relay.command('once'))
    .description('send what can be sent now, then exit: 0 when every route is drained, 75 when something is left (line down, or the tenant is over its vault quota: E_QUOTA), 77/65 when a vault refused')
    .option('--route <name>', 'only this route (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--json', 'print one JSON line per route')
    .action(async (opts: RepoOptions & { route: string[] }, cmd: Command) => {
      const { Relay } = await import('../relay/relay.js');
      const { config: cfg, path: cfgPath } = configOf(cmd);
      const { checkFiles } = await import('../config/load.js');
      checkFiles(cfg, { relay: true }, cfgPath);
      const repo = await openRepo(cmd, opts, 'none');
      const { Notifier } = await import('../notify/notifier.js');
      const { evaluateRpo } = await import('../notify/evaluate.js');
      const notifier = Notifier.fromConfig(cfg, 'relay', repo.root);
      notifier.start();
      try {
        const reports = await new Relay(repo, cfg, opts.route, notifier).once();
        evaluateRpo(repo, cfg, notifier);
        for (const r of reports) {
          if (opts.json) printJson(r);
          else process.stdout.write(`${r.route}: ${r.state}, ${r.sent} sent, ${r.left} left${r.error ? ` (${r.error.code}: ${r.error.message})` : ''}\n`);
        }
        const refused = reports.find((r) => r.state === 'refused');
        if (refused) throw new KuraError(refused.error!.code as KuraError['code'], `route ${refused.route}: ${refused.error!.message}`, { reported: opts.json });
        const over = reports.find((r) => r.state === 'quota-exceeded');
        if (over) throw new KuraError('E_QUOTA', `route ${over.route}: ${over.error!.message}; ${over.left} snapshot(s) stay queued`, { reported: opts.json });
        const left = reports.reduce((n, r) => n + r.left, 0);
        if (left > 0) throw new KuraError('E_BACKLOG_LEFT', `${left} snapshot(s) still queued; the relay will send them when the line is back`, { reported: opts.json });
      } finally {
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
