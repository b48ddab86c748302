import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { formatBytes, formatTable } from '../format.js';
import type { KuraConfig } from '../config/schema.js';
import type { GcReport } from '../gc/gc.js';
import { isEmptyPolicy, type RetentionPolicy } from '../retention/plan.js';
import type { PruneReport } from '../retention/prune.js';
import { configOf, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';

interface PolicyFlags {
  keepLast?: string;
  keepHourly?: string;
  keepDaily?: string;
  keepWeekly?: string;
  keepMonthly?: string;
  keepYearly?: string;
  keepWithin?: string;
  keepTag?: string[];
}

const count = (flag: string) => (v: string) => {
  if (!/^\d+$/.test(v)) throw new KuraError('E_USAGE', `${flag} needs a whole number, not "${v}"`);
  return v;
};

export function withPolicyFlags(cmd: Command): Command {
  return cmd
    .option('--keep-last <n>', 'keep the newest N snapshots', count('--keep-last'))
    .option('--keep-hourly <n>', 'keep the newest snapshot of each of the last N hours', count('--keep-hourly'))
    .option('--keep-daily <n>', 'keep the newest snapshot of each of the last N days', count('--keep-daily'))
    .option('--keep-weekly <n>', 'keep the newest snapshot of each of the last N ISO weeks', count('--keep-weekly'))
    .option('--keep-monthly <n>', 'keep the newest snapshot of each of the last N months', count('--keep-monthly'))
    .option('--keep-yearly <n>', 'keep the newest snapshot of each of the last N years', count('--keep-yearly'))
    .option('--keep-within <duration>', 'keep every snapshot younger than this (e.g. 14d)')
    .option('--keep-tag <tag...>', 'keep every snapshot with this tag');
}

/** A policy given on the command line (it replaces the config's), or null when none was. */
export function policyFromFlags(o: PolicyFlags): RetentionPolicy | null {
  const num = (v?: string) => (v === undefined ? undefined : Number(v));
  const p: RetentionPolicy = {
    keepLast: num(o.keepLast),
    keepHourly: num(o.keepHourly),
    keepDaily: num(o.keepDaily),
    keepWeekly: num(o.keepWeekly),
    keepMonthly: num(o.keepMonthly),
    keepYearly: num(o.keepYearly),
    keepWithin: o.keepWithin,
    keepTags: o.keepTag,
  };
  return isEmptyPolicy(p) ? null : p;
}

export function timeZoneOf(cfg: KuraConfig): string {
  return cfg.timezone ?? Intl.DateTimeFormat().resolvedOptions().timeZone ?? 'UTC';
}

export function printPrune(r: PruneReport, heading = ''): void {
  const rows = [['ACTION', 'TIME', 'ID', 'TENANT', 'SOURCE', 'WHY']];
  for (const d of r.decisions) {
    rows.push([d.keep ? 'keep' : r.dryRun ? 'would remove' : 'remove', d.time.replace('T', ' ').slice(0, 19), d.id.slice(0, 12), d.tenant, d.source, d.keep ? d.reasons.join(', ') : 'no rule keeps it']);
  }
  process.stdout.write(heading + formatTable(rows));
  process.stdout.write(`${r.kept} kept, ${r.removed} ${r.dryRun ? 'would be removed (dry run)' : 'removed'}\n`);
}

export function printGc(r: GcReport, heading = ''): void {
  if (r.dryRun) {
    process.stdout.write(`${heading}${r.chunksRemoved} of ${r.chunksStored} chunk(s) (${formatBytes(r.bytesRemoved)}) are unreferenced and would be removed (dry run)\n`);
    return;
  }
  for (const p of r.problems) process.stdout.write(`${heading}PROBLEM ${p}\n`);
  process.stdout.write(
    `${heading}${r.chunksRemoved} chunk(s) removed (${formatBytes(r.bytesRemoved)}), ${r.packsDeleted + r.packsRewritten + r.orphanPacks} pack(s) deleted ` +
      `(${r.packsRewritten} rewritten into ${r.packsWritten}, ${r.orphanPacks} left by interrupted writers), ${formatBytes(Math.max(0, r.bytesFreed))} freed, ` +
      `${r.snapshots} snapshot(s) and ${r.chunksReferenced} chunk(s) kept, ${r.seconds.toFixed(1)} s\n`,
  );
}

export function registerPrune(program: Command): void {
  withPolicyFlags(withRepoOptions(program.command('prune')))
    .description('remove snapshots that fall out of the retention policy (sources.<name>.retention, or --keep-* flags); never protected ones, never ones a route still has to send')
    .option('--dry-run', 'print what would be kept and removed, and why, without removing anything')
    .option('--source <name...>', 'only these sources')
    .option('--gc', 'then reclaim the space (as "kura gc")')
    .option('--json', 'print the plan and result as one JSON line')
    .option('--from <route>', "on the vault of this route, by the tenant's retention in the vault's config (tenant-admin; a signed-in operator: kura login)")
    .option('--tenant <tenant>', "with --from: tenant on the vault (default: the config's tenant)")
    .option('--identity <file>', "with --from: SSH private key for the vault (default: the route's clientKey)")
    .action(async (opts: RepoOptions & PolicyFlags & { dryRun?: boolean; source?: string[]; gc?: boolean; from?: string; tenant?: string; identity?: string }, cmd: Command) => {
      const cfg = configOf(cmd).config;
      const flags = policyFromFlags(opts);
      if (opts.from) {
        if (flags) throw new KuraError('E_USAGE', "with --from the vault applies the tenant's retention from its own config (vault.tenants.<t>.retention): drop the --keep-* flags");
        if (opts.gc) throw new KuraError('E_USAGE', 'with --from, space is reclaimed by the vault\'s own gc (vault.maintenance, or kura vault gc on the vault host): drop --gc');
        const { remotePrune } = await import('./operator.js');
        const report = await remotePrune(cmd, { ...opts, from: opts.from });
        if (opts.json) printJson({ ok: true, ...report, route: opts.from });
        else printPrune(report, `vault of route ${opts.from}:\n`);
        return;
      }
      const repo = await openRepo(cmd, opts, 'none');
      try {
        const { prune } = await import('../retention/prune.js');
        const report = await prune(repo, {
          policyFor: (_tenant, source) => flags ?? cfg.sources[source]?.retention,
          now: new Date(),
          timeZone: timeZoneOf(cfg),
          dryRun: Boolean(opts.dryRun),
          keepUnsent: true,
          sources: opts.source,
        });
        let gc: GcReport | undefined;
        if (opts.gc && !opts.dryRun) {
          const { collectGarbage } = await import('../gc/gc.js');
          gc = await collectGarbage(repo, { mode: 'local' });
        }
        if (opts.json) printJson({ ok: true, ...report, ...(gc ? { gc } : {}) });
        else {
          printPrune(report);
          if (gc) printGc(gc);
        }
      } finally {
        repo.close();
      }
    });

  withRepoOptions(program.command('gc'))
    .description('reclaim the space of chunks no snapshot uses (rewrites packs that hold some); waits for nothing: fails with E_LOCKED while a backup runs')
    .option('--dry-run', 'count what would be removed')
    .option('--json', 'print the report as one JSON line')
    .action(async (opts: RepoOptions & { dryRun?: boolean }, cmd: Command) => {
      const repo = await openRepo(cmd, opts, 'none');
      try {
        const { collectGarbage } = await import('../gc/gc.js');
        const report = await collectGarbage(repo, { mode: 'local', dryRun: Boolean(opts.dryRun) });
        if (opts.json) printJson({ ok: report.problems.length === 0, ...report });
        else printGc(report);
      } finally {
        repo.close();
      }
    });

  for (const on of [true, false]) {
    withRepoOptions(program.command(on ? 'protect' : 'unprotect'))
      .description(on ? 'protect a snapshot from pruning (long-term hold), here or on the vault (--from, tenant-admin key)' : "lift a snapshot's long-term hold, here or on the vault (--from, tenant-admin; a signed-in operator with a recent strong sign-in: kura login --step-up)")
      .argument('<snapshot>', 'snapshot ID, unique prefix or latest:SOURCE')
      .option('--from <route>', "on the vault of this route (needs a tenant-admin key)")
      .option('--tenant <tenant>', "tenant on the vault (default: the config's tenant)")
      .option('--identity <file>', "SSH private key for the vault (default: the route's clientKey)")
      .option('--json', 'print the result as one JSON line')
      .action(async (ref: string, opts: RepoOptions & { from?: string; tenant?: string; identity?: string }, cmd: Command) => {
        let result: { id: string; protected: boolean; changed: boolean; where: string };
        if (opts.from) {
          const { remoteList, resolveRemote, withRoute } = await import('../restorer/remote.js');
          const { Frame, jsonOf } = await import('../protocol/frames.js');
          const r = await withRoute(configOf(cmd).config, { ...opts, from: opts.from }, async (conn) => {
            const id = resolveRemote(await remoteList(conn), ref);
            return jsonOf<{ id: string; protected: boolean; changed: boolean }>(await conn.request(Frame.PROTECT, { id, protect: on }, Frame.PROTECTED));
          });
          result = { ...r, where: `vault of route ${opts.from}` };
        } else {
          const repo = await openRepo(cmd, opts, 'none');
          try {
            const id = repo.resolveSnapshot(ref);
            const { setProtected } = await import('../retention/protect.js');
            result = { id, protected: on, changed: await setProtected(repo, id, on), where: repo.root };
          } finally {
            repo.close();
          }
        }
        if ((opts as { json?: boolean }).json) printJson({ ok: true, ...result });
        else process.stdout.write(`snapshot ${result.id} ${result.changed ? (on ? 'is now protected' : 'is no longer protected') : on ? 'was already protected' : 'was not protected'} (${result.where})\n`);
      });
  }
}
