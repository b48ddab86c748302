import type { Command } from 'commander';
import { configOf, openRepo, withRepoOptions, type RepoOptions } from './context.js';

export function registerTop(program: Command): void {
  withRepoOptions(program.command('top'))
    .description('live view of routes (state, backlog, rate, ETA, RPO exposure), sources and recent transfers; keys act on the running relay. Without a terminal it prints the status once.')
    .action(async (opts: RepoOptions, cmd: Command) => {
      const { collectStatus } = await import('../status/collect.js');
      const cfg = configOf(cmd).config;
      const repo = await openRepo(cmd, opts, 'none');
      try {
        // each route's hops beyond its vault (ROUTE_STATUS), asked now and then, not at every refresh
        const { collectHops } = await import('../status/collect-hops.js');
        const { routesOf } = await import('../relay/routes.js');
        const hops = new Map<string, import('../status/collect-hops.js').RouteHops>();
        const askHops = async () => {
          for (const route of Object.keys(routesOf(cfg))) hops.set(route, await collectHops(repo, cfg, route));
        };
        const load = () => {
          const hb = repo.catalogue.ops.lastHeartbeat('relay');
          return { report: collectStatus(repo, cfg), relayRunning: hb !== null && Date.now() - hb.at < 10_000, recent: repo.catalogue.ops.recentlySent(3), jobs: repo.catalogue.ops.recentJobs(3), hops: [...hops.values()].flatMap((h) => h.hops) };
        };
        if (!process.stdout.isTTY || !process.stdin.isTTY) {
          const { printStatus, printHops } = await import('./status.js');
          await askHops();
          const d = load();
          process.stdout.write(`relay ${d.relayRunning ? 'running' : 'stopped'}\n`);
          printStatus(d.report);
          for (const h of hops.values()) {
            process.stdout.write('\n');
            printHops(h);
          }
          return;
        }
        let asking = askHops().catch(() => {});
        const hopTimer = setInterval(() => (asking = asking.then(askHops).catch(() => {})), 15_000);
        hopTimer.unref();
        // ink renders only a final frame when it believes it runs under CI; on a terminal top is
        // interactive whatever the environment says (is-in-ci reads these at import time)
        delete process.env.CI;
        delete process.env.CONTINUOUS_INTEGRATION;
        const { render } = await import('ink');
        const { createElement } = await import('react');
        const { TopApp } = await import('../top/app.js');
        const app = render(createElement(TopApp, { load, control: (route, c) => repo.catalogue.ops.setRouteControl(route, c) }));
        await app.waitUntilExit();
        clearInterval(hopTimer);
      } finally {
        repo.close();
      }
    });
}
