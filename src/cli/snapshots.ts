import type { Command } from 'commander';
import { configOf, formatBytes, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';
import type { SnapshotHeader } from '../repository/snapshot.js';
import { formatTable } from '../format.js';

export function registerSnapshots(program: Command): void {
  withRepoOptions(program.command('snapshots'))
    .description('list snapshots (generations), oldest first')
    .option('--name <source>', 'only this source')
    .option('--json', 'print a JSON array')
    .option('--from <route>', 'list what the vault of this route holds (over SSH)')
    .option('--tenant <tenant>', 'tenant on the vault (default: the config\'s tenant)')
    .option('--identity <file>', 'SSH private key for the vault (default: the route\'s clientKey)')
    .action(async (opts: RepoOptions & { name?: string; from?: string; tenant?: string; identity?: string }, cmd: Command) => {
      if (opts.from) {
        const { remoteList, withRoute } = await import('../restorer/remote.js');
        const rows = await withRoute(configOf(cmd).config, { ...opts, from: opts.from }, (conn) => remoteList(conn, opts.name));
        if (opts.json) printJson(rows);
        else print(rows.map((r) => ({ id: r.id, header: r })));
        return;
      }
      const repo = await openRepo(cmd, opts, 'none');
      try {
        const rows = repo.catalogue.snapshots(opts.name ? { source: opts.name } : {});
        // a snapshot is damaged while a chunk it needs is quarantined and not stored again
        const damage = new Map(repo.catalogue.quarantine.damaged().map((d) => [d.snapshot, d.chunks]));
        if (opts.json) printJson(rows.map((r) => ({ id: r.id, ...r.header, damaged: damage.has(r.id), damagedChunks: damage.get(r.id) ?? [] })));
        else {
          print(rows, damage);
          if (damage.size > 0) process.stdout.write(`${damage.size} damaged: a chunk they need was found damaged and quarantined; a backup that meets the same data stores it again (then they restore), or restore them from a vault ("kura restore --from ROUTE")\n`);
        }
      } finally {
        repo.close();
      }
    });
}

function print(rows: Array<{ id: string; header: SnapshotHeader }>, damage: ReadonlyMap<string, string[]> = new Map()): void {
  const lines = [['ID', 'TIME', 'SOURCE', 'TENANT', 'SIZE', 'CHUNKS', 'NEW', 'STATE']];
  for (const r of rows) {
    const h = r.header;
    const d = damage.get(r.id);
    lines.push([r.id.slice(0, 12), h.endTime.replace('T', ' ').slice(0, 19), h.source, h.tenant, formatBytes(h.logicalBytes), String(h.chunkCount), formatBytes(h.newBytes), d ? `DAMAGED (${d.length} chunk(s) quarantined)` : '']);
  }
  process.stdout.write(formatTable(lines));
  process.stdout.write(`${rows.length} snapshot(s)\n`);
}
