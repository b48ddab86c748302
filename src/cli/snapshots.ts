import type { Command } from 'commander';
import { formatBytes, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';

export function registerSnapshots(program: Command): void {
  withRepoOptions(program.command('snapshots'))
    .description('list snapshots (generations), oldest first')
    .option('--name <source>', 'only this source')
    .option('--json', 'print a JSON array')
    .action(async (opts: RepoOptions & { name?: string }, cmd: Command) => {
      const repo = await openRepo(cmd, opts, 'none');
      try {
        const rows = repo.catalogue.snapshots(opts.name ? { source: opts.name } : {});
        if (opts.json) {
          printJson(rows.map((r) => ({ id: r.id, ...r.header })));
          return;
        }
        const lines = [['ID', 'TIME', 'SOURCE', 'TENANT', 'SIZE', 'CHUNKS', 'NEW']];
        for (const r of rows) {
          const h = r.header;
          lines.push([r.id.slice(0, 12), h.endTime.replace('T', ' ').slice(0, 19), h.source, h.tenant, formatBytes(h.logicalBytes), String(h.chunkCount), formatBytes(h.newBytes)]);
        }
        const widths = lines[0]!.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
        for (const l of lines) process.stdout.write(l.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd() + '\n');
        process.stdout.write(`${rows.length} snapshot(s)\n`);
      } finally {
        repo.close();
      }
    });
}
