import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import type { VaultConfig } from '../config/schema.js';

/** --since: an ISO time, a date, or a duration back from now ("2h", "30m", "7d"). */
export function sinceOf(v: string | undefined, now: number): string | undefined {
  if (v === undefined) return undefined;
  const ago = /^(\d+)\s*(s|m|h|d)$/.exec(v.trim());
  if (ago) return new Date(now - Number(ago[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[ago[2] as 's' | 'm' | 'h' | 'd']).toISOString();
  const t = Date.parse(v);
  if (!Number.isFinite(t)) throw new KuraError('E_USAGE', `--since must be a time (2026-12-05T18:00:00Z, 2026-12-05) or a duration back from now (30m, 2h, 7d), not "${v}"`);
  return new Date(t).toISOString();
}

/** `kura vault audit`: every vault node's audit lines as shipped to the shared store, merged in time order. */
export function registerVaultAudit(vault: Command, vaultConfig: (cmd: Command) => VaultConfig): void {
  vault
    .command('audit')
    .description("the audit lines of every vault node sharing vault.storage (vault.node), read from the store and merged in time order: works on any node's host, for a node that is gone too (a node's newest lines reach the store within vault.node.audit.every; refusals at once)")
    .option('--node <id>', "only this node's lines")
    .option('--since <time>', 'lines from this time on: 2026-12-05T18:00:00Z, 2026-12-05, or back from now: 30m, 2h, 7d')
    .option('--tenant <tenant>', "only this tenant's lines")
    .option('--json', 'print one JSON object')
    .action(async (opts: { node?: string; since?: string; tenant?: string; json?: boolean }, cmd: Command) => {
      const cfg = vaultConfig(cmd);
      if (!cfg.node) throw new KuraError('E_CONFIG', `kura vault audit reads the audit lines vault nodes keep in their shared store (vault.node); this vault keeps its audit log in ${cfg.auditLog ?? `${cfg.root}/audit.jsonl`} only: read that file`);
      const since = sinceOf(opts.since, Date.now());
      const { readNodeAudit } = await import('../vault/nodes/audit-store.js');
      const a = await readNodeAudit(cfg, { node: opts.node, since, tenant: opts.tenant });
      if (opts.json) {
        process.stdout.write(JSON.stringify(a) + '\n');
        return;
      }
      const { formatTable } = await import('../format.js');
      const detail = (l: Record<string, unknown>): string => {
        const parts: string[] = [];
        for (const k of ['code', 'reason', 'ip', 'user', 'snapshot', 'session'] as const) if (l[k] !== undefined && l[k] !== null) parts.push(`${k}=${typeof l[k] === 'string' ? l[k] : JSON.stringify(l[k])}`);
        return parts.join(' ');
      };
      process.stdout.write(`store ${a.store}; nodes ${a.nodes.join(', ') || 'none'}; ${a.segments} segment(s), ${a.lines.length} line(s)${a.unreadable ? `, ${a.unreadable} unreadable (torn by a crash)` : ''}\n`);
      process.stdout.write(formatTable([['TIME', 'NODE', 'EVENT', 'OUTCOME', 'TENANT', 'DETAIL'], ...a.lines.map((l) => [l.time, l.node, String(l.event ?? '-'), String(l.outcome ?? '-'), String(l.tenant ?? '-'), detail(l)])]));
    });
}
