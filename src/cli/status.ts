import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { configOf, formatBytes, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';
import type { StatusReport } from '../status/status.js';
import { formatAge } from '../format.js';

export function printStatus(r: StatusReport): void {
  const w = (s: string) => process.stdout.write(s + '\n');
  const exposed = (seconds: number | null, over: boolean) => (seconds === null ? '-' : formatAge(seconds) + (over ? '!' : ''));
  w('ROUTE            STATE             QUEUED  BYTES       EXPOSURE  TARGET  WORST SOURCE  LAST ERROR');
  for (const x of r.routes) {
    w(
      `${x.route.padEnd(16)} ${x.state.padEnd(17)} ${String(x.queued).padStart(6)}  ${formatBytes(x.queuedBytes).padEnd(10)}  ${exposed(x.exposureSeconds, x.overTarget).padEnd(8)}  ${formatAge(x.rpoTargetSeconds).padEnd(6)}  ${(x.worstSource ?? '-').padEnd(12)}  ${x.lastError ?? ''}`,
    );
  }
  w('');
  w('SOURCE           TENANT       SNAPSHOTS  LAST BACKUP           NEW         LAST JOB');
  for (const s of r.sources) {
    const job = s.lastJob ? (s.lastJobFailed ? `FAILED ${s.lastJob.errorCode}: ${s.lastJob.error ?? ''}` : 'ok') : '-';
    w(`${s.source.padEnd(16)} ${s.tenant.padEnd(12)} ${String(s.snapshots).padStart(9)}  ${(s.lastBackup ?? '-').replace('T', ' ').slice(0, 19).padEnd(20)}  ${formatBytes(s.lastNewBytes).padEnd(10)}  ${job}`);
  }
  if (r.setAside.length > 0) {
    w('');
    w('SET ASIDE        SNAPSHOT      SOURCE           SINCE                 WHY');
    for (const a of r.setAside) w(`${a.route.padEnd(16)} ${a.snapshot.slice(0, 12)}  ${a.source.padEnd(16)} ${a.at.replace('T', ' ').slice(0, 19).padEnd(20)}  ${a.reason}`);
  }
  if (r.damaged.length > 0) {
    w('');
    w('DAMAGED          SNAPSHOT      CHUNKS  FOUND');
    for (const d of r.damaged) w(`${(d.source ?? '-').padEnd(16)} ${d.snapshot.slice(0, 12)}  ${String(d.chunks.length).padStart(6)}  ${d.found.replace('T', ' ').slice(0, 19)}`);
    w('a damaged snapshot needs chunks found damaged and quarantined: the next backup of the same data stores them again (then it restores); until then restore it from a vault that holds it');
  }
  const planned = r.sources.filter((s) => s.plan);
  if (planned.length > 0) {
    w('');
    w('PLANNED          GROUP        NEXT START            SLOT     LAST RUN');
    for (const s of planned) {
      const p = s.plan!;
      w(`${s.source.padEnd(16)} ${p.group.padEnd(12)} ${(p.nextStart ?? p.error ?? '-').replace('T', ' ').slice(0, 19).padEnd(20)}  ${p.slot.padEnd(7)}  ${p.lastRun ?? '-'}`);
    }
  }
  if (r.exposure.length > 0) {
    w('');
    w('EXPOSURE         SOURCE           EXPOSED   TARGET  NEWEST ON THE FAR SIDE  QUEUED');
    for (const e of r.exposure) {
      const newest = e.since === 'no-snapshot' ? 'no snapshot yet' : e.since === 'first-snapshot' ? 'none yet' : (e.newestDelivered ?? '-').replace('T', ' ').slice(0, 19);
      w(`${(e.route ?? 'on-site').padEnd(16)} ${e.source.padEnd(16)} ${exposed(e.exposureSeconds, e.overTarget).padEnd(8)}  ${formatAge(e.targetSeconds).padEnd(6)}  ${newest.padEnd(22)}  ${e.queued}${e.paused ? ' (paused)' : ''}`);
    }
  }
}

/** Why status fails, one phrase per problem (empty: all is well). */
export function statusProblems(r: StatusReport): { code: 'E_RPO_EXCEEDED' | 'E_BACKUP_FAILED' | 'E_SNAPSHOT_DAMAGED'; what: string[] } | null {
  const over = r.exposure.filter((e) => e.overTarget);
  const failed = r.sources.filter((s) => s.lastJobFailed);
  if (over.length === 0 && failed.length === 0 && r.damaged.length === 0) return null;
  const what = [
    ...over.map((e) => `RPO exposure of ${e.source} ${e.route ? `on ${e.route}` : 'on site (no route)'} over target (${formatAge(e.exposureSeconds ?? 0)} > ${formatAge(e.targetSeconds)}${e.since === 'first-snapshot' ? ', nothing delivered yet' : ''})`),
    ...failed.map((s) => `last backup of ${s.source} failed (${s.lastJob?.errorCode})`),
    ...r.damaged.map((d) => `snapshot ${d.snapshot.slice(0, 12)} of ${d.source ?? '?'} is damaged (${d.chunks.length} chunk(s) quarantined)`),
  ];
  return { code: over.length > 0 ? 'E_RPO_EXCEEDED' : failed.length > 0 ? 'E_BACKUP_FAILED' : 'E_SNAPSHOT_DAMAGED', what };
}

export function registerStatus(program: Command): void {
  withRepoOptions(program.command('status'))
    .description('routes (link state, backlog, RPO exposure against the target, entries set aside) and sources (last backup), damaged snapshots; exit 1 when a source is over its RPO target on some route (including a source that stopped backing up) or its last backup failed, 65 when only a snapshot is damaged')
    .option('--json', 'print the report as one JSON line')
    .action(async (opts: RepoOptions & { json?: boolean }, cmd: Command) => {
      const { collectStatus } = await import('../status/collect.js');
      const repo = await openRepo(cmd, opts, 'none');
      try {
        const report = collectStatus(repo, configOf(cmd).config);
        if (opts.json) printJson(report);
        else printStatus(report);
        const problems = statusProblems(report);
        if (problems) throw new KuraError(problems.code, problems.what.join('; '), { reported: true });
      } finally {
        repo.close();
      }
    });
}
