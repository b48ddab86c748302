import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { formatBytes } from '../format.js';
import { log } from '../log.js';
import type { SourceResult } from '../agent/run.js';
import { configOf, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';

function printResult(r: SourceResult, json: boolean | undefined): void {
  if (json) {
    printJson(r);
    return;
  }
  if (r.result === 'ok') {
    process.stdout.write(
      `${r.source}: ok, snapshot ${r.snapshot!.slice(0, 12)}, ${formatBytes(r.logicalBytes!)} exported, ${formatBytes(r.newBytes!)} new, ${r.seconds.toFixed(1)} s` +
        (r.routes.length ? `, queued for ${r.routes.join(', ')}` : '') +
        (r.pruned ? `, ${r.pruned} old snapshot(s) pruned` : '') +
        '\n',
    );
  } else {
    process.stdout.write(`${r.source}: ${r.result.toUpperCase()}: ${r.error!.code}: ${r.error!.message}\n`);
  }
}

export function registerAgent(program: Command): void {
  const agent = program.command('agent').description('agent mode: export sources into the local repository and queue them for routes');

  withRepoOptions(agent.command('run'))
    .description(
      'run sources once, one after another (for cron, systemd timers, job schedulers). One line per source (--json: snapshot ID, sizes, new bytes, duration, result). ' +
        'Exit 0 when all succeeded, 1 when some failed (E_BACKUP_FAILED), 75 when a source was already running elsewhere (E_LOCKED), 77 when the key does not open the repository (E_KEY_WRONG), 78 for config errors',
    )
    .option('--source <name...>', 'only these sources (default: all)')
    .option('--json', 'one JSON line per source')
    .action(async (opts: RepoOptions & { source?: string[]; json?: boolean }, cmd: Command) => {
      const { config: cfg, path: cfgPath } = configOf(cmd);
      const { checkFiles } = await import('../config/load.js');
      checkFiles(cfg, { agent: true }, cfgPath);
      const { selectSources, runSource, localGc } = await import('../agent/run.js');
      const { evaluateRpo } = await import('../notify/evaluate.js');
      const { maintenanceFailed } = await import('../notify/jobs.js');
      const chosen = selectSources(cfg, opts.source);
      // the first export starts while the key is still being derived
      const repo = await openRepo(cmd, opts, 'deferred');
      const { Notifier } = await import('../notify/notifier.js');
      const notifier = Notifier.fromConfig(cfg, 'agent', repo.root);
      notifier.start();
      const results: SourceResult[] = [];
      // SIGTERM (systemd stop, a job scheduler's cancel): stop the running export, record its job
      // as failed (no snapshot), run nothing more
      const abort = new AbortController();
      const stop = () => abort.abort();
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
      try {
        for (const [name, src] of chosen) {
          if (abort.signal.aborted) break;
          const r = await runSource(repo, cfg, name, src, { signal: abort.signal, notifier });
          results.push(r);
          printResult(r, opts.json);
          // a key that does not open the repository fails every source alike: say that, once
          await repo.keysReady;
        }
        if (results.some((r) => r.pruned)) {
          const gc = await localGc(repo).catch((e: KuraError) => {
            notifier.emit(maintenanceFailed('on-site gc', e, { tenant: cfg.tenant }));
            throw e;
          });
          if (gc) log().info({ chunksRemoved: gc.chunksRemoved, bytesFreed: gc.bytesFreed }, 'on-site gc after retention');
        }
      } finally {
        process.off('SIGTERM', stop);
        process.off('SIGINT', stop);
        // a cron-driven host has no daemon: judge RPO exposure here too, then let the mail go out
        // before exiting (bounded by notifications.flushTimeout; what is left stays queued)
        try {
          evaluateRpo(repo, cfg, notifier);
        } catch (e) {
          log().warn({ err: (e as Error).message }, 'RPO evaluation for notifications failed');
        }
        const left = await notifier.flush();
        if (left > 0) log().warn({ pending: left }, 'some notifications are not delivered yet; they stay queued and any later kura run, or the daemons, deliver them');
        await notifier.close();
        repo.close();
      }
      const failed = results.filter((r) => r.result === 'failed');
      if (failed.length > 0) {
        throw new KuraError('E_BACKUP_FAILED', `${failed.length} of ${results.length} source(s) failed: ${failed.map((f) => `${f.source} (${f.error!.code})`).join(', ')}; no snapshot was written for them`, { reported: Boolean(opts.json) });
      }
      const locked = results.filter((r) => r.result === 'locked');
      if (locked.length > 0) throw new KuraError('E_LOCKED', `${locked.map((l) => l.source).join(', ')}: already running elsewhere; not run twice`, { reported: Boolean(opts.json) });
    });

  withRepoOptions(agent.command('daemon'))
    .description('run each source on its cron schedule (sources.<name>.schedule); a run never overlaps itself; SIGTERM stops cleanly within agent.shutdownGrace')
    .option('--source <name...>', 'only these sources (default: all with a schedule)')
    .action(async (opts: RepoOptions & { source?: string[] }, cmd: Command) => {
      const { config: cfg, path: cfgPath } = configOf(cmd);
      const { checkFiles } = await import('../config/load.js');
      checkFiles(cfg, { agent: true }, cfgPath);
      const { AgentDaemon } = await import('../agent/daemon.js');
      AgentDaemon.scheduled(cfg, opts.source); // config errors before anything opens
      const repo = await openRepo(cmd, opts, 'required');
      const { Notifier } = await import('../notify/notifier.js');
      const notifier = Notifier.fromConfig(cfg, 'agent', repo.root);
      const daemon = new AgentDaemon(repo, cfg, (e) => printJson(e), opts.source, notifier);
      let scheduled: string[];
      try {
        scheduled = daemon.start();
      } catch (e) {
        await notifier.close();
        repo.close();
        throw e;
      }
      log().info({ sources: scheduled }, 'agent daemon running');
      const sig = await new Promise<string>((resolve) => {
        process.once('SIGTERM', () => resolve('SIGTERM'));
        process.once('SIGINT', () => resolve('SIGINT'));
      });
      log().info({ signal: sig }, 'agent daemon stopping');
      const clean = await daemon.stop();
      await notifier.close();
      repo.close();
      if (!clean) throw new KuraError('E_LOCKED', `a running export did not stop within agent.shutdownGrace (${cfg.agent.shutdownGrace}); its job is left unfinished and no snapshot was written for it`);
    });
}
