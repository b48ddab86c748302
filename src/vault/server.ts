import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import type { Writable } from 'node:stream';
import path from 'node:path';
import type { Connection, Server as SshServer, ServerChannel } from 'ssh2';
import { KuraError } from '../errors.js';
import type { KuraConfig, VaultConfig } from '../config/schema.js';
import { VaultRouting, vaultRoutingMetrics } from './forward.js';
import { log } from '../log.js';
import { SYSTEM_USER, authorize, fingerprint, type Role } from './access.js';
import { VaultSession } from './session.js';
import { prepareVaultStorage, Vault } from './vault.js';
import { renderStoreMetrics } from '../store/wrappers.js';
import { loadOrCreateHostKey } from './hostkey.js';
import { VaultMetrics } from './metrics.js';
import { OperatorEndpoint } from './operator/endpoint.js';
import { quotaOf } from './maintenance.js';
import { Notifier, type NotificationsConfig } from '../notify/notifier.js';
import { watchVault } from './alerts.js';
import type { VaultNode } from './nodes/node.js';
import { encodeFrame, Frame } from '../protocol/frames.js';

const require = createRequire(import.meta.url);
const ssh2 = require('ssh2') as typeof import('ssh2');
const STOP_GRACE_MS = 10_000; // how long a stopping vault lets sessions finish the frame they are on
const LINGER_MS = 1000; // how long a closing connection may take to say goodbye before its socket goes

export const VAULT_COMMAND = 'kura-vault';

export interface RunningVault {
  port: number;
  hostKeySha256: string;
  /** the operator endpoint's URL (vault.sso), where kura login sends people */
  operatorUrl?: string | undefined;
  close(): Promise<void>;
}

/**
 * `kura vault serve`: an SSH server that only speaks the vault protocol. Public keys map to
 * (tenant, role, networks); the SSH user name is the tenant asked for. Every refused attempt is
 * audited, and a refused or broken session never disturbs the others.
 */
export async function serveVault(cfg: VaultConfig, opts: { timeZone?: string | undefined; notifications?: NotificationsConfig | undefined; host?: string | undefined; config?: KuraConfig | undefined } = {}): Promise<RunningVault> {
  // a store that would overwrite on a create is refused before anything is served from it
  await prepareVaultStorage(cfg);
  const forwarding = Object.entries(cfg.tenants).filter(([, t]) => t.forward.length > 0).map(([n]) => n);
  if (cfg.node && forwarding.length > 0) throw new KuraError('E_CONFIG', `vault.node: store-and-forward of tenants (vault.tenants.<t>.forward: ${forwarding.join(', ')}) is not supported on vault nodes yet; forward from a single vault, or remove vault.node`);
  const vault = new Vault(cfg);
  // a ticket key that cannot be read stops the vault at start, not at an operator's first AUTH
  const operators = vault.operators;
  const timeZone = opts.timeZone ?? Intl.DateTimeFormat().resolvedOptions().timeZone ?? 'UTC';
  // vault nodes: usage and quotas from the store's listing (whichever node wrote it), not one node's catalogue
  const nodeUsage = cfg.node ? await (await import('./nodes/serve.js')).nodeUsageOf(vault, cfg) : null;
  const notifier = opts.notifications ? new Notifier(opts.notifications, 'vault', cfg.root, opts.host) : null;
  if (notifier) {
    watchVault(vault, cfg, notifier, nodeUsage ? async (t) => (await nodeUsage.quotaBase(t).stored()).bytes : undefined);
    notifier.start();
  }
  const hostKeyFile = cfg.hostKey ?? path.join(cfg.root, 'host_key');
  const hostKey = loadOrCreateHostKey(hostKeyFile);
  const parsedHost = ssh2.utils.parseKey(hostKey);
  if (parsedHost instanceof Error)
    throw new KuraError('E_CONFIG', `vault host key ${hostKeyFile} is unreadable: ${parsedHost.message} (give vault.hostKey an OpenSSH or PEM private key without passphrase, or move the file away to have a new one made; clients pinning the old fingerprint must then be updated)`);
  const hostKeySha256 = fingerprint((Array.isArray(parsedHost) ? parsedHost[0] : parsedHost).getPublicSSH());
  const lg = log().child({ mode: 'vault' });
  const routing = new VaultRouting(vault, cfg, hostKey, { config: opts.config, notifier });
  const operator = cfg.sso ? await startOperatorEndpoint(cfg, opts.config, vault, lg) : null;

  let stopping = false;
  let node: VaultNode | null = null;
  const clients = new Set<Connection>();
  const sessions = new Map<VaultSession, Promise<void>>();
  const server: SshServer = new ssh2.Server({ hostKeys: [hostKey], ident: 'kura-vault' }, (client: Connection, info) => {
    clients.add(client);
    client.once('close', () => clients.delete(client));
    // small frames (WANT, FLUSHED, COMMITTED) must not wait for Nagle's delayed ACK: ~40 ms each
    (client as Connection & { setNoDelay(on: boolean): void }).setNoDelay(true); // (missing from the typings)
    const ip = info.ip;
    let granted: { tenant: string; role: Role; key: string; user: string } | null = null;
    client.on('authentication', (ctx) => {
      if (ctx.method !== 'publickey') {
        if (ctx.method !== 'none') vault.audit.write({ event: 'auth', outcome: 'refused', ip, user: ctx.username, code: 'E_AUTH_DENIED', reason: `method ${ctx.method} is not accepted` });
        return ctx.reject(['publickey']);
      }
      const d = authorize({ username: ctx.username, keyAlgo: ctx.key.algo, keyData: ctx.key.data, ip }, cfg.tenants, cfg.system);
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
      // a vault speaks one protocol on exec channels; everything else SSH can ask for is refused and audited
      const refuse = (event: string, asked: string, reject?: () => void) => {
        vault.audit.write({ event, outcome: 'refused', tenant: g.tenant, ip, key: g.key, user: g.user, code: 'E_FORBIDDEN', reason: `${asked} is not offered by a vault` });
        reject?.();
      };
      client.on('tcpip', (_accept, reject, info) => refuse('port-forward', `forwarding to ${info.destIP}:${info.destPort}`, reject));
      client.on('openssh.streamlocal', (_accept, reject, info) => refuse('port-forward', `forwarding to socket ${info.socketPath}`, reject));
      client.on('request', (_accept, reject, name, info) => refuse('port-forward', `global request ${name}${info && 'bindPort' in info ? ` (${info.bindAddr}:${info.bindPort})` : ''}`, reject));
      client.on('session', (accept) => {
        const session = accept();
        session.on('pty', (_a, reject) => refuse('pty', 'a terminal (pty)', reject));
        session.on('x11', (_a, reject) => refuse('x11', 'X11 forwarding', reject));
        session.on('auth-agent', (_a, reject) => refuse('agent-forward', 'agent forwarding', reject));
        session.on('sftp', (_a, reject) => refuse('sftp', 'the sftp subsystem', reject));
        session.on('subsystem', (_a, reject, info) => refuse('subsystem', `subsystem ${JSON.stringify(info.name.slice(0, 40))}`, reject));
        session.on('exec', async (acceptExec, rejectExec, execInfo) => {
          if (execInfo.command !== VAULT_COMMAND) {
            vault.audit.write({ event: 'exec', outcome: 'refused', tenant: g.tenant, ip, key: g.key, code: 'E_FORBIDDEN', reason: `command ${JSON.stringify(execInfo.command.slice(0, 80))} is not the vault protocol` });
            return rejectExec?.();
          }
          const channel: ServerChannel = acceptExec();
          // vault nodes on a shared store: the tenant is served here only under its lease
          if (node && g.tenant !== SYSTEM_USER) {
            try {
              await node.claim(g.tenant);
            } catch (e) {
              const err = e instanceof KuraError ? e : new KuraError('E_IO', (e as Error).message);
              vault.audit.write({ event: 'session-refused', outcome: 'refused', tenant: g.tenant, ip, key: g.key, code: err.code, reason: err.message });
              channel.write(encodeFrame(Frame.ERROR, { code: err.code, message: err.message, ...(err.details?.holder ? { holder: err.details.holder } : {}) }));
              channel.exit(1);
              channel.close();
              return;
            }
          }
          try {
            const repo = g.tenant === SYSTEM_USER ? await vault.systemRepo() : await vault.repoOf(g.tenant);
            const s = new VaultSession(
              {
                tenant: g.tenant,
                role: g.role,
                repo,
                audit: vault.audit,
                peer: { ip, user: g.user, key: g.key },
                maxFrame: cfg.maxFrame,
                leaseTtlMs: vault.leaseTtlMs,
                quota: quotaOf(cfg, g.tenant),
                stored: nodeUsage && g.tenant !== SYSTEM_USER ? nodeUsage.quotaBase(g.tenant) : undefined,
                slots: vault.slots,
                log: lg,
                budget: vault.memory,
                routing,
                vault: { cfg, timeZone, operators, usage: nodeUsage?.sources },
                operator: operator ?? undefined,
                transport: (client as Connection & { _sock?: Writable })._sock, // (not in the typings)
              },
              channel,
              channel,
            );
            if (stopping) s.stop();
            const running = s.run().finally(() => sessions.delete(s));
            sessions.set(s, running);
            await running;
            channel.exit(0);
          } catch (e) {
            lg.error({ tenant: g.tenant, err: (e as Error).message }, 'session failed');
            channel.exit(1);
          }
          channel.close();
        });
        session.on('shell', (_a, reject) => refuse('shell', 'a shell', reject));
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
  if (cfg.node) {
    const { startNode } = await import('./nodes/serve.js');
    node = await startNode(vault, cfg, {
      listen: `${cfg.listen.host}:${port}`,
      sessionsOf: (tenant) => [...sessions].filter(([s]) => s.ctx.tenant === tenant).map(([s, done]) => ({ fail: (e: unknown) => s.fail(e), done })),
      sessionCount: () => sessions.size,
      log: lg,
    }).catch(async (e: unknown) => {
      // a node that cannot reach its leases serves nothing: the listener goes, the process ends
      await new Promise((r) => server.close(() => r(null)));
      await vault.close();
      throw e;
    });
  }
  lg.info({ host: cfg.listen.host, port, hostKey: hostKeySha256 }, 'vault listening');
  let metricsServer: { close: () => Promise<void> } | null = null;
  if (cfg.metrics) {
    const metrics = new VaultMetrics();
    vault.audit.subscribe((e) => metrics.observe(e));
    const { serveMetrics } = await import('../status/http.js');
    metricsServer = await serveMetrics(cfg.metrics.host, cfg.metrics.port, async () => {
      const stored = await Promise.all(
        (node ? node.holding() : Object.keys(cfg.tenants)).map(async (tenant) => {
          const c = (await vault.repoOf(tenant)).catalogue.counts();
          return { tenant, storedBytes: c.storedBytes, snapshots: c.snapshots, chunks: c.chunks };
        }),
      );
      const m = vault.memory;
      return metrics.render(stored, { heldBytes: m.total(), peakBytes: m.peak, limitBytes: m.limits.totalBytes, sessions: m.sessions }) + (await vaultRoutingMetrics(vault, cfg)) + renderStoreMetrics();
    });
  }
  const maintenance = cfg.maintenance ? await scheduleMaintenance(vault, cfg, lg, opts.timeZone, () => node?.holding() ?? null) : null;
  await routing.start();
  return {
    port,
    hostKeySha256,
    operatorUrl: operator?.base,
    close: async () => {
      stopping = true;
      await operator?.close();
      await maintenance?.stop();
      await routing.stop();
      await metricsServer?.close();
      // no new connections; open sessions end after the frame they are handling (their flushed
      // batches are durable, a relay resends the rest), within the grace; then the connections
      // are closed, and after a second their sockets are destroyed whatever the line does: a
      // black-holed client never acknowledges a goodbye, and an open socket keeps the process alive
      const deadline = Date.now() + STOP_GRACE_MS;
      const until = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, Math.min(ms, deadline - Date.now()))).unref());
      const closed = new Promise<void>((r) => server.close(() => r()));
      const ended = () => Promise.allSettled(sessions.values());
      for (const s of sessions.keys()) s.stop();
      await Promise.race([ended(), until(STOP_GRACE_MS)]);
      for (const c of clients) c.end();
      await Promise.race([closed, new Promise((r) => setTimeout(r, LINGER_MS).unref())]);
      for (const c of clients) (c as Connection & { _sock?: { destroy(): void } })._sock?.destroy(); // (ssh2 has no destroy() on a server connection)
      // sessions cut off just now finish their bookkeeping (durable batches, pack leases) before the catalogues close
      await Promise.race([ended(), new Promise((r) => setTimeout(r, Math.max(LINGER_MS, deadline - Date.now())).unref())]);
      await notifier?.close();
      // the leases go last, once the sessions ended: another node takes the tenants at once
      await node?.stop();
      await vault.close();
    },
  };
}

/** vault.sso: the operator endpoint where people sign in (kura login), closed again if the vault cannot start. */
async function startOperatorEndpoint(cfg: VaultConfig, full: KuraConfig | undefined, vault: Vault, lg: ReturnType<typeof log>): Promise<OperatorEndpoint> {
  if (!full) throw new KuraError('E_CONFIG', 'vault.sso needs the whole config (modules.sso names the identity providers)');
  const op = new OperatorEndpoint({ ...full, vault: cfg }, vault.audit);
  const port = await op.start();
  lg.info({ url: op.base, port, providers: [...op.providers.keys()] }, 'operator endpoint listening (kura login)');
  return op;
}

/**
 * vault.maintenance: prune and then gc every tenant on a cron schedule, inside the serving
 * process (on the same catalogue connections as the sessions: every GC transaction is
 * synchronous, so sessions only ever see before or after). A run still going at the next tick
 * is logged, not doubled.
 */
async function scheduleMaintenance(vault: Vault, cfg: VaultConfig, lg: ReturnType<typeof log>, tz: string | undefined, held: () => string[] | null): Promise<{ stop: () => Promise<void> }> {
  const cron = (await import('node-cron')).default;
  const { maintainTenant, vaultTenants } = await import('./maintenance.js');
  const timeZone = tz ?? Intl.DateTimeFormat().resolvedOptions().timeZone ?? 'UTC';
  let running: Promise<void> | null = null;
  const runAll = async () => {
    // a vault node maintains only the tenants it holds, under their leases (deletes are fenced)
    for (const tenant of held() ?? vaultTenants(cfg)) {
      try {
        const repo = await vault.repoOf(tenant);
        const r = await maintainTenant(repo, cfg, tenant, { prune: true, gc: cfg.maintenance!.gc, dryRun: false, timeZone });
        vault.audit.write({ event: 'maintenance', outcome: 'ok', tenant, removedSnapshots: r.prune?.removed ?? 0, chunksRemoved: r.gc?.chunksRemoved ?? 0, bytesFreed: r.gc?.bytesFreed ?? 0 });
        lg.info({ tenant, removedSnapshots: r.prune?.removed, chunksRemoved: r.gc?.chunksRemoved, bytesFreed: r.gc?.bytesFreed }, 'scheduled prune and gc done');
      } catch (e) {
        const code = (e as { code?: string }).code ?? 'E_INTERNAL';
        vault.audit.write({ event: 'maintenance', outcome: 'error', tenant, code, reason: (e as Error).message });
        lg.error({ tenant, code }, `scheduled prune and gc failed: ${(e as Error).message}`);
      }
    }
  };
  const task = cron.schedule(cfg.maintenance!.schedule, () => {
    if (running) {
      lg.warn({}, 'scheduled prune and gc: the previous run is still going; this tick is skipped');
      return;
    }
    running = runAll().finally(() => (running = null));
  });
  return {
    stop: async () => {
      await task.stop();
      await running;
    },
  };
}
