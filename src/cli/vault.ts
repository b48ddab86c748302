import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { configOf } from './context.js';
import { log } from '../log.js';
import type { VaultConfig } from '../config/schema.js';

function vaultConfig(cmd: Command): VaultConfig {
  const { config, path } = configOf(cmd);
  if (!config.vault) throw new KuraError('E_CONFIG', `no vault section in the config${path ? ` (${path})` : ''}; "kura config example" shows one`);
  return config.vault;
}

export function registerVault(program: Command): void {
  const vault = program.command('vault').description("vault mode: the SSH endpoint that keeps tenants' repositories");

  vault
    .command('serve')
    .description('serve the vault protocol over SSH (ssh2) on vault.listen; stops cleanly on SIGTERM')
    .action(async (_opts: object, cmd: Command) => {
      const cfg = vaultConfig(cmd);
      const { serveVault } = await import('../vault/server.js');
      const running = await serveVault(cfg);
      process.stdout.write(JSON.stringify({ listening: `${cfg.listen.host}:${running.port}`, hostKeySha256: running.hostKeySha256 }) + '\n');
      await new Promise<void>((resolve) => {
        const stop = (sig: string) => {
          log().info({ signal: sig }, 'vault stopping');
          resolve();
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
      await running.close();
    });

  vault
    .command('stdio')
    .description('serve the vault protocol on stdin/stdout, for OpenSSH: command="kura vault stdio --tenant X",restrict in authorized_keys')
    .requiredOption('--tenant <tenant>', 'the one tenant this key may act on')
    .option('--role <role>', 'backup, restore or tenant-admin', 'backup')
    .action(async (opts: { tenant: string; role: string }, cmd: Command) => {
      const cfg = vaultConfig(cmd);
      if (!cfg.tenants[opts.tenant]) throw new KuraError('E_CONFIG', `tenant "${opts.tenant}" is not registered under vault.tenants`);
      if (!['backup', 'restore', 'tenant-admin'].includes(opts.role)) throw new KuraError('E_USAGE', `--role must be backup, restore or tenant-admin`);
      const { serveStdio } = await import('../vault/stdio.js');
      await serveStdio(cfg, opts.tenant, opts.role as 'backup');
    });

  for (const [name, what] of [
    ['prune', 'apply retention policies on the vault'],
    ['gc', 'reclaim space of unreferenced chunks on the vault'],
    ['usage', 'per-tenant usage for cost apportioning'],
  ] as const) {
    vault
      .command(name)
      .description(what)
      .allowUnknownOption()
      .allowExcessArguments()
      .action(() => {
        throw new KuraError('E_NOT_IMPLEMENTED', `"kura vault ${name}" (${what}) is not available in this version of kura`);
      });
  }
}
