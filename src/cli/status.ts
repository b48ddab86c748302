import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { configOf, formatBytes, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';
import type { StatusReport } from '../status/status.js';
import { formatAge } from '../format.js';

export function printStatus(r: StatusReport): void {
  const w = (s: string) => process.stdout.write(s + '\n');
  w('ROUTE            STATE             QUEUED  BYTES       EXPOSURE  TARGET  LAST ERROR');
  for (const x of r.routes) {
    w(
      `${x.route.padEnd(16)} ${x.state.padEnd(17)} ${String(x.queued).padStart(6)}  ${formatBytes(x.queuedBytes).padEnd(10)}  ${(formatAge(x.exposureSeconds) + (x.overTarget ? '!' : '')).padEnd(8)}  ${formatAge(x.rpoTargetSeconds).padEnd(6)}  ${x.lastError ?? ''}`,
    );
  }
  w('');
  w('SOURCE           TENANT       SNAPSHOTS  LAST BACKUP           NEW         LAST JOB');
  for (const s of r.sources) {
    const job = s.lastJob ? (s.lastJobFailed ? `FAILED ${s.lastJob.errorCode}: ${s.lastJob.error ?? ''}` : 'ok') : '-';
    w(`${s.source.padEnd(16)} ${s.tenant.padEnd(12)} ${String(s.snapshots).padStart(9)}  ${(s.lastBackup ?? '-').replace('T', ' ').slice(0, 19).padEnd(20)}  ${formatBytes(s.lastNewBytes).padEnd(10)}  ${job}`);
  }
}

export function registerStatus(program: Command): void {
  withRepoOptions(program.command('status'))
    .description('routes (link state, backlog, RPO exposure against the target) and sources (last backup); exit 1 when a route is over its RPO target')
    .option('--json', 'print the report as one JSON line')
    .action(async (opts: RepoOptions & { json?: boolean }, cmd: Command) => {
      const { collectStatus } = await import('../status/collect.js');
      const repo = await openRepo(cmd, opts, 'none');
      try {
        const report = collectStatus(repo, configOf(cmd).config);
        if (opts.json) printJson(report);
        else printStatus(report);
        const over = report.routes.filter((r) => r.overTarget);
        const failed = report.sources.filter((s) => s.lastJobFailed);
        if (over.length > 0 || failed.length > 0) {
          const what = [
            ...over.map((r) => `RPO exposure over target on ${r.route} (${formatAge(r.exposureSeconds)} > ${formatAge(r.rpoTargetSeconds)})`),
            ...failed.map((s) => `last backup of ${s.source} failed (${s.lastJob?.errorCode})`),
          ];
          throw new KuraError(over.length > 0 ? 'E_RPO_EXCEEDED' : 'E_BACKUP_FAILED', what.join('; '), { reported: true });
        }
      } finally {
        repo.close();
      }
    });
}
