import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import { configOf, formatBytes, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';
import type { TransferLine } from '../relay/transfer-log.js';

/** --since: an ISO time, or a duration back from now ("6h", "7d"). */
export function sinceOf(text: string | undefined, now = Date.now()): string | undefined {
  if (text === undefined) return undefined;
  const d = parseDuration(text);
  if (d !== null) return new Date(now - d).toISOString();
  const t = Date.parse(text);
  if (Number.isNaN(t)) throw new KuraError('E_USAGE', `--since ${JSON.stringify(text)} is neither a time (2026-12-01T00:00:00Z) nor a duration back from now (6h, 7d)`);
  return new Date(t).toISOString();
}

function printLines(lines: TransferLine[]): void {
  const w = (s: string) => process.stdout.write(s + '\n');
  w('END                  DIR      SNAPSHOT      TENANT       SOURCE       HOP                      BYTES       CHUNKS  SECONDS  PEER OFFSET');
  for (const l of lines) {
    const secs = ((Date.parse(l.end) - Date.parse(l.start)) / 1000).toFixed(1);
    const off = l.peerOffsetMs === null ? '-' : `${(l.peerOffsetMs / 1000).toFixed(2)}s`;
    w(`${l.end.replace('T', ' ').slice(0, 19)}  ${l.direction.padEnd(7)}  ${l.snapshot.slice(0, 12)}  ${l.tenant.padEnd(11)}  ${l.source.padEnd(11)}  ${l.hop.padEnd(23)}  ${formatBytes(l.bytes).padEnd(10)}  ${String(l.chunks).padStart(6)}  ${secs.padStart(7)}  ${off}`);
  }
}

export function registerLog(program: Command): void {
  withRepoOptions(program.command('log'))
    .description('the send and receive log: one line per snapshot sent (relay, forwarding vault) or received (vault), with the peer\'s clock offset measured at HELLO')
    .option('--route <name>', 'only lines of this route (send lines) or this peer (receive lines)')
    .option('--since <time>', 'only lines that ended at or after this time (ISO) or this long ago (6h, 7d)')
    .option('--vault', 'the vault\'s log (vault.root): receipts and forwarding sends of its tenants')
    .option('--tenant <tenant...>', 'with --vault: only these tenants (default: all)')
    .option('--json', 'one JSON line per log line')
    .action(async (opts: RepoOptions & { route?: string; since?: string; vault?: boolean; tenant?: string[]; json?: boolean }, cmd: Command) => {
      const { routingRecords } = await import('../relay/transfer-log.js');
      const since = sinceOf(opts.since);
      const lines: TransferLine[] = [];
      if (opts.vault) {
        const cfg = configOf(cmd).config.vault;
        if (!cfg) throw new KuraError('E_CONFIG', 'no vault section in the config; --vault reads vault.root');
        const { openTenantRepo, vaultTenants } = await import('../vault/maintenance.js');
        for (const tenant of opts.tenant?.length ? opts.tenant : vaultTenants(cfg)) {
          const repo = await openTenantRepo(cfg, tenant).catch((e: unknown) => {
            if (e instanceof KuraError && e.code === 'E_REPO_NOT_FOUND') return null;
            throw e;
          });
          if (!repo) continue;
          try {
            lines.push(...routingRecords(repo.catalogue).lines({ hop: opts.route, since }));
          } finally {
            repo.close();
          }
        }
        lines.sort((a, b) => a.end.localeCompare(b.end));
      } else {
        const repo = await openRepo(cmd, opts, 'none');
        try {
          lines.push(...routingRecords(repo.catalogue).lines({ hop: opts.route, since }));
        } finally {
          repo.close();
        }
      }
      if (opts.json) for (const l of lines) printJson(l);
      else printLines(lines);
    });
}
