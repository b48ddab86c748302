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
        const load = () => {
          const hb = repo.catalogue.ops.lastHeartbeat('relay');
          return { report: collectStatus(repo, cfg), relayRunning: hb !== null && Date.now() - hb.at < 10_000, recent: repo.catalogue.ops.recentlySent(3), jobs: repo.catalogue.ops.recentJobs(3) };
        };
        if (!process.stdout.isTTY || !process.stdin.isTTY) {
          const { printStatus } = await import('./status.js');
          const d = load();
          process.stdout.write(`relay ${d.relayRunning ? 'running' : 'stopped'}\n`);
          printStatus(d.report);
          return;
        }
        // ink renders only a final frame when it believes it runs under CI; on a terminal top is
        // interactive whatever the environment says (is-in-ci reads these at import time)
        delete process.env.CI;
        delete process.env.CONTINUOUS_INTEGRATION;
        const { render } = await import('ink');
        const { createElement } = await import('react');
        const { TopApp } = await import('../top/app.js');
        const app = render(createElement(TopApp, { load, control: (route, c) => repo.catalogue.ops.setRouteControl(route, c) }));
        await app.waitUntilExit();
      } finally {
        repo.close();
      }
    });
}
