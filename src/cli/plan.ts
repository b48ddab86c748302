import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { configOf, printJson } from './context.js';

export function registerPlan(program: Command): void {
  program
    .command('plan')
    .description('print the backup window plan of modules.virtualization: each member\'s start and expected end in its group\'s window, at most maxConcurrent at once (like prune --dry-run prints retention); exit 78 with the group named when one cannot fit')
    .option('--date <yyyy-mm-dd>', 'the day whose window to plan (default: today, in the top-level timezone)')
    .option('--json', 'one JSON array of { group, member, start, end } (ISO-8601), with lane and duration')
    .action(async (opts: { date?: string; json?: boolean }, cmd: Command) => {
      const cfg = configOf(cmd).config;
      const timeZone = cfg.timezone ?? Intl.DateTimeFormat().resolvedOptions().timeZone ?? 'UTC';
      const date = opts.date ?? new Intl.DateTimeFormat('en-CA', { timeZone, year: 'numeric', month: '2-digit', day: '2-digit' }).format(new Date());
      if (!/^\d{4}-\d{2}-\d{2}$/.test(date) || Number.isNaN(Date.parse(`${date}T00:00:00Z`))) throw new KuraError('E_USAGE', `--date must look like 2026-12-07, not "${date}"`);
      const { moduleOf } = await import('../modules/registry.js');
      const { backupPlan } = await import('../modules/virtualization/plan.js');
      const { groups } = moduleOf(cfg, 'virtualization');
      if (groups.length === 0) throw new KuraError('E_CONFIG', `modules.virtualization has no groups (type ${cfg.modules.virtualization.type}): every source starts at its own schedule; "kura config example" shows type: groups`);
      const history = await localHistory(cfg);
      const plans = groups.flatMap((g) => backupPlan(g, date, timeZone, history));
      if (opts.json) {
        printJson(plans.map((p) => ({ group: p.group, member: p.member, start: p.start.toISOString(), end: p.end.toISOString(), lane: p.lane, durationSeconds: p.durationSeconds, durationFrom: p.durationFrom, ...(p.moved ? { moved: p.moved } : {}) })));
        return;
      }
      const { formatTable } = await import('../format.js');
      const local = (d: Date) => new Intl.DateTimeFormat('sv-SE', { timeZone, dateStyle: 'short', timeStyle: 'medium' }).format(d);
      const rows = [['GROUP', 'MEMBER', 'LANE', 'START', 'END', 'DURATION', 'NOTE']];
      for (const p of plans) rows.push([p.group, p.member, String(p.lane), local(p.start), local(p.end), `${p.durationSeconds < 120 ? `${p.durationSeconds} s` : `${Math.round(p.durationSeconds / 60)} min`} (${p.durationFrom})`, p.moved ?? '']);
      process.stdout.write(formatTable(rows));
      process.stdout.write(`times in ${timeZone}; durations from this host's job history where it has one, else expectedDuration\n`);
    });
}

/** Durations of this host's members from its own job records (other hosts' members use expectedDuration). */
async function localHistory(cfg: import('../config/schema.js').KuraConfig): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const repo = cfg.repository?.path;
  // only a repository that exists: its directory holds the objects (fs) or the catalogue (others)
  if (!repo || !existsSync(path.join(repo, cfg.repository!.type === 'fs' ? 'config' : 'catalogue.sqlite'))) return out;
  const { Repository } = await import('../repository/repository.js');
  const { durationFromHistory } = await import('../modules/virtualization/plan.js');
  const r = await Repository.open(cfg.repository!.type === 'fs' ? repo : { dir: repo, storage: cfg.repository! }, null);
  try {
    const host = cfg.host ?? hostname();
    let whole = 0;
    for (const source of Object.keys(cfg.sources)) {
      const d = durationFromHistory(r.catalogue.ops.jobSeconds(source));
      if (d === null) continue;
      out.set(`${host}/${source}`, d);
      whole += d;
    }
    if (whole > 0) out.set(host, whole);
  } finally {
    r.close();
  }
  return out;
}
