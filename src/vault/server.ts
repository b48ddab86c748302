import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import type { Connection, Server as SshServer, ServerChannel } from 'ssh2';
import { KuraError } from '../errors.js';
import type { VaultConfig } from '../config/schema.js';
import { log } from '../log.js';
import { authorize, fingerprint, type Role } from './access.js';
import { VaultSession } from './session.js';
import { loadOrCreateHostKey, Vault } from './vault.js';
import { VaultMetrics } from './metrics.js';

const require = createRequire(import.meta.url);
const ssh2 = require('ssh2') as typeof import('ssh2');

export const VAULT_COMMAND = 'kura-vault';

export interface RunningVault {
  port: number;
  hostKeySha256: string;
  close(): Promise<void>;
}

/**
 * `kura vault serve`: an SSH server that only speaks the vault protocol. Public keys map to
 * (tenant, role, networks); the SSH user name is the tenant asked for. Every refused attempt is
 * audited, and a refused or broken session never disturbs the others.
 */
export async function serveVault(cfg: VaultConfig): Promise<RunningVault> {
  const vault = new Vault(cfg);
  const hostKey = loadOrCreateHostKey(cfg, () => ssh2.utils.generateKeyPairSync('ed25519').private);
  const parsedHost = ssh2.utils.parseKey(hostKey);
  if (parsedHost instanceof Error) throw new KuraError('E_CONFIG', `vault host key ${cfg.hostKey ?? 'host_key'} is unreadable: ${parsedHost.message}`);
  const hostKeySha256 = fingerprint((Array.isArray(parsedHost) ? parsedHost[0] : parsedHost).getPublicSSH());
  const lg = log().child({ mode: 'vault' });

  const server: SshServer = new ssh2.Server({ hostKeys: [hostKey], ident: 'kura-vault' }, (client: Connection, info) => {
    const ip = info.ip;
    let granted: { tenant: string; role: Role; key: string; user: string } | null = null;
    client.on('authentication', (ctx) => {
      if (ctx.method !== 'publickey') {
        if (ctx.method !== 'none') vault.audit.write({ event: 'auth', outcome: 'refused', ip, user: ctx.username, code: 'E_AUTH_DENIED', reason: `method ${ctx.method} is not accepted` });
        return ctx.reject(['publickey']);
      }
      const d = authorize({ username: ctx.username, keyAlgo: ctx.key.algo, keyData: ctx.key.data, ip }, cfg.tenants);
      if (!d.ok) {
        vault.audit.write({ event: 'auth', outcome: 'refused', ip, user: ctx.username, key: d.fingerprint, code: d.code, reason: d.reason });
        return ctx.reject();
      }
      if (!ctx.signature) return ctx.accept(); // the client asks whether this key would do
      const pub = ssh2.utils.parseKey(Buffer.concat([Buffer.from(`${ctx.key.algo} `), Buffer.from(ctx.key.data.toString('base64'))]));
      if (pub instanceof Error || (Array.isArray(pub) ? pub[0] : pub).verify(ctx.blob!, ctx.signature, ctx.hashAlgo) !== true) {
        vault.audit.write({ event: 'auth', outcome: 'refused', ip, user: ctx.username, key: d.fingerprint, code: 'E_AUTH_DENIED', reason: 'bad signature' });
        return ctx.reject();
      }
      granted = { tenant: d.tenant, role: d.role, key: d.fingerprint, user: ctx.username };
      ctx.accept();
    });
    client.on('ready', () => {
      const g = granted!;
      client.on('session', (accept) => {
        const session = accept();
        session.on('exec', async (acceptExec, rejectExec, execInfo) => {
          if (execInfo.command !== VAULT_COMMAND) {
            vault.audit.write({ event: 'exec', outcome: 'refused', tenant: g.tenant, ip, key: g.key, code: 'E_FORBIDDEN', reason: `command ${JSON.stringify(execInfo.command.slice(0, 80))} is not the vault protocol` });
            return rejectExec?.();
          }
          const channel: ServerChannel = acceptExec();
          try {
            const repo = await vault.repoOf(g.tenant);
            await new VaultSession(
              { tenant: g.tenant, role: g.role, repo, audit: vault.audit, peer: { ip, user: g.user, key: g.key }, maxFrame: cfg.maxFrame, leaseTtlMs: vault.leaseTtlMs, log: lg },
              channel,
              channel,
            ).run();
            channel.exit(0);
          } catch (e) {
            lg.error({ tenant: g.tenant, err: (e as Error).message }, 'session failed');
            channel.exit(1);
          }
          channel.close();
        });
        session.on('shell', (_a, reject) => {
          vault.audit.write({ event: 'shell', outcome: 'refused', tenant: g.tenant, ip, key: g.key, code: 'E_FORBIDDEN', reason: 'no shell on a vault' });
          reject?.();
        });
      });
    });
    client.on('error', (err: Error) => {
      vault.audit.write({ event: 'connection', outcome: 'error', ip, tenant: granted?.tenant, code: 'E_PROTOCOL', reason: err.message });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(cfg.listen.port, cfg.listen.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  lg.info({ host: cfg.listen.host, port, hostKey: hostKeySha256 }, 'vault listening');
  let metricsServer: { close: () => Promise<void> } | null = null;
  if (cfg.metrics) {
    const metrics = new VaultMetrics();
    vault.audit.observer = (e) => metrics.observe(e);
    const { serveMetrics } = await import('../status/http.js');
    metricsServer = await serveMetrics(cfg.metrics.host, cfg.metrics.port, async () => {
      const stored = await Promise.all(
        Object.keys(cfg.tenants).map(async (tenant) => {
          const c = (await vault.repoOf(tenant)).catalogue.counts();
          return { tenant, storedBytes: c.storedBytes, snapshots: c.snapshots, chunks: c.chunks };
        }),
      );
      return metrics.render(stored);
    });
  }
  return {
    port,
    hostKeySha256,
    close: async () => {
      await metricsServer?.close();
      await new Promise<void>((r) => server.close(() => r()));
      await vault.close();
    },
  };
}
