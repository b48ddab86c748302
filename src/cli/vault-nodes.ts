import type { Command } from 'commander';
import type { VaultConfig } from '../config/schema.js';

/** `kura vault nodes [--json]`: which node holds which tenant, lease ages, each node's load. */
export function registerVaultNodes(vault: Command, vaultConfig: (cmd: Command) => VaultConfig): void {
  vault
    .command('nodes')
    .description('vault nodes sharing vault.storage: which node holds which tenant, lease ages (by the store\'s clock), each node\'s load (tenants, sessions) and each tenant\'s placement order')
    .option('--json', 'print one JSON object')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const cfg = vaultConfig(cmd);
      const { nodesView } = await import('../vault/nodes/view.js');
      const v = await nodesView(cfg);
      if (opts.json) {
        process.stdout.write(JSON.stringify(v) + '\n');
        return;
      }
      const { formatTable } = await import('../format.js');
      const age = (ms: number | null) => (ms === null ? '-' : `${(ms / 1000).toFixed(0)} s`);
      process.stdout.write(`store ${v.store}\n`);
      process.stdout.write(formatTable([['NODE', 'LISTEN', 'STATE', 'SEEN', 'TENANTS', 'SESSIONS'], ...v.nodes.map((n) => [n.node, n.listen, n.live ? 'live' : 'gone', `${age(n.ageMs)} ago`, String(n.tenants.length), String(n.sessions)])]));
      process.stdout.write('\n');
      process.stdout.write(
        formatTable([
          ['TENANT', 'HOLDER', 'LEASE', 'RENEWED', 'TTL', 'PREFERENCE'],
          ...v.tenants.map((t) => [t.tenant, t.holder ?? '-', t.state, t.leaseAgeMs === null ? '-' : `${age(t.leaseAgeMs)} ago`, t.ttlMs === null ? '-' : age(t.ttlMs), t.preference.join(' > ') || '-']),
        ]),
      );
    });
}
