import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { configOf } from './context.js';
import { log } from '../log.js';
import type { VaultConfig } from '../config/schema.js';
import type { AuditEvent } from '../vault/audit.js';
import os from 'node:os';
import path from 'node:path';
import { registerVaultNodes } from './vault-nodes.js';
import { registerVaultAudit } from './vault-audit.js';
import { hostUsageSources, usageSourcesText } from './vault-node-usage.js';

function vaultConfig(cmd: Command): VaultConfig {
  const { config, path } = configOf(cmd);
  if (!config.vault) throw new KuraError('E_CONFIG', `no vault section in the config${path ? ` (${path})` : ''}; "kura config example" shows one`);
  return config.vault;
}

/** Who runs a command by hand on the vault host (the OS user), for its audit line. */
function osUser(): string {
  try {
    return os.userInfo().username;
  } catch {
    return process.env.USER ?? `uid ${process.getuid?.() ?? '?'}`;
  }
}

/** An audit line of a command run by hand on the vault host: the OS user stands for the person. */
async function auditByHand(cfg: VaultConfig, e: AuditEvent): Promise<void> {
  const { AuditLog } = await import('../vault/audit.js');
  const audit = new AuditLog(cfg.auditLog ?? path.join(cfg.root, 'audit.jsonl'));
  try {
    audit.write({ ...e, by: 'cli', user: osUser(), pid: process.pid });
  } finally {
    audit.close();
  }
}

export function registerVault(program: Command): void {
  const vault = program.command('vault').description("vault mode: the SSH endpoint that keeps tenants' repositories");

  vault
    .command('serve')
    .description('serve the vault protocol over SSH (ssh2) on vault.listen; stops cleanly on SIGTERM')
    .action(async (_opts: object, cmd: Command) => {
      const cfg = vaultConfig(cmd);
      const { serveVault } = await import('../vault/server.js');
      const { config: full, path: cfgPath } = configOf(cmd);
      const { checkFiles } = await import('../config/load.js');
      checkFiles(full, { vault: true }, cfgPath);
      const running = await serveVault(cfg, { timeZone: full.timezone, notifications: full.notifications, host: full.host, config: full });
      process.stdout.write(JSON.stringify({ listening: `${cfg.listen.host}:${running.port}`, hostKeySha256: running.hostKeySha256, ...(running.operatorUrl ? { operator: running.operatorUrl } : {}) }) + '\n');
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

  registerVaultNodes(vault, vaultConfig);
  registerVaultAudit(vault, vaultConfig);

  vault
    .command('stdio')
    .description('serve the vault protocol on stdin/stdout, for OpenSSH: command="kura vault stdio --tenant X",restrict in authorized_keys')
    .requiredOption('--tenant <tenant>', 'the one tenant this key may act on')
    .option('--role <role>', 'backup, restore or tenant-admin', 'backup')
    .action(async (opts: { tenant: string; role: string }, cmd: Command) => {
      const cfg = vaultConfig(cmd);
      if (!cfg.tenants[opts.tenant]) throw new KuraError('E_CONFIG', `tenant "${opts.tenant}" is not registered under vault.tenants`);
      if (cfg.node) throw new KuraError('E_CONFIG', `vault.node is set: tenants are served only by "kura vault serve" nodes holding their leases, not by "kura vault stdio"; point the route's endpoints at the nodes`);
      if (!['backup', 'restore', 'tenant-admin'].includes(opts.role)) throw new KuraError('E_USAGE', `--role must be backup, restore or tenant-admin`);
      const { serveStdio } = await import('../vault/stdio.js');
      const full = configOf(cmd).config;
      await serveStdio(cfg, opts.tenant, opts.role as 'backup', full.notifications, full.host, full.timezone);
    });

  const tenantsOpt = (c: Command) => c.option('--tenant <tenant...>', 'only these tenants (default: all)');
  const selectTenants = async (cfg: VaultConfig, only?: string[]) => {
    const { vaultTenants } = await import('../vault/maintenance.js');
    const all = vaultTenants(cfg);
    for (const t of only ?? []) if (!all.includes(t)) throw new KuraError('E_USAGE', `tenant "${t}" is not registered under vault.tenants and has no repository under ${cfg.root}/tenants`);
    return only?.length ? only : all;
  };

  for (const [name, what] of [
    ['prune', "apply retention (vault.tenants.<t>.retention, per-source overrides) to tenants' repositories; protected snapshots are kept"],
    ['gc', "reclaim the space of chunks no snapshot and no live session uses, in tenants' repositories (safe while relays upload)"],
  ] as const) {
    tenantsOpt(vault.command(name))
      .description(what)
      .option('--dry-run', 'show what would be removed without removing anything')
      .option('--json', 'one JSON line per tenant')
      .action(async (opts: { tenant?: string[]; dryRun?: boolean; json?: boolean }, cmd: Command) => {
        const cfg = vaultConfig(cmd);
        const { openTenantRepo, maintainTenant } = await import('../vault/maintenance.js');
        // vault nodes: a tenant's prune and gc run only under its lease, held by this host's node (deletes fenced by it)
        const { openHeldTenant } = await import('../vault/nodes/held.js');
        const elsewhere: string[] = [];
        const { printPrune, printGc, timeZoneOf } = await import('./prune.js');
        const { Notifier } = await import('../notify/notifier.js');
        const { maintenanceFailed } = await import('../notify/jobs.js');
        const full = configOf(cmd).config;
        const notifier = new Notifier(full.notifications, 'vault', cfg.root, full.host);
        let problems = 0;
        try {
          for (const tenant of await selectTenants(cfg, opts.tenant)) {
            const repo = await (cfg.node && !opts.dryRun ? openHeldTenant(cfg, tenant) : openTenantRepo(cfg, tenant)).catch((e: unknown) => {
              if (e instanceof KuraError && e.code === 'E_REPO_NOT_FOUND') return null;
              if (e instanceof KuraError && e.code === 'E_TENANT_ELSEWHERE' && !opts.tenant?.length) {
                elsewhere.push(tenant);
                return null;
              }
              throw e;
            });
            if (!repo) continue;
            try {
              const r = await maintainTenant(repo, cfg, tenant, { prune: name === 'prune', gc: name === 'gc', dryRun: Boolean(opts.dryRun), timeZone: timeZoneOf(full) }).catch(async (e: KuraError) => {
                if (!opts.dryRun) notifier.emit(maintenanceFailed(`vault ${name}`, e, { tenant }));
                await auditByHand(cfg, { event: name, outcome: 'error', tenant, dryRun: Boolean(opts.dryRun), code: e.code ?? 'E_INTERNAL', reason: e.message });
                throw e;
              });
              await auditByHand(cfg, {
                event: name,
                outcome: 'ok',
                tenant,
                dryRun: Boolean(opts.dryRun),
                ...(r.prune ? { kept: r.prune.kept, removed: r.prune.removed, snapshots: r.prune.decisions.filter((d) => !d.keep).map((d) => d.id) } : {}),
                ...(r.gc ? { chunksRemoved: r.gc.chunksRemoved, bytesFreed: r.gc.bytesFreed, problems: r.gc.problems.length } : {}),
              });
              problems += r.gc?.problems.length ?? 0;
              if (opts.json) process.stdout.write(JSON.stringify({ ok: true, ...r }) + '\n');
              else if (r.prune) printPrune(r.prune, `tenant ${tenant}:\n`);
              else if (r.gc) printGc(r.gc, `tenant ${tenant}: `);
            } finally {
              repo.close();
            }
          }
          if (elsewhere.length > 0 && !opts.json) process.stdout.write(`held by other vault nodes (run ${name} there): ${elsewhere.join(', ')}\n`);
          if (problems > 0) {
            const e = new KuraError('E_CHECK_FAILED', `gc met ${problems} damaged pack(s); their chunks were kept. Run "kura check --repo" on the tenant's repository`, { reported: true });
            notifier.emit(maintenanceFailed('vault gc', e, {}));
            throw e;
          }
        } finally {
          await notifier.flush();
          await notifier.close();
        }
      });
  }

  tenantsOpt(vault.command('check'))
    .description("verify tenants' repositories without their keys: structure, and with --read-data every referenced blob against the digest recorded when it was written (a scrub); --repair quarantines damaged blobs, so the next relay that sends their chunks stores them anew")
    .option('--read-data', 'read every referenced blob and verify it against its digest (and its pack against its ID)')
    .option('--repair', 'quarantine the damaged blobs found and mark the snapshots they damage')
    .option('--json', 'one JSON line per tenant')
    .action(async (opts: { tenant?: string[]; readData?: boolean; repair?: boolean; json?: boolean }, cmd: Command) => {
      const cfg = vaultConfig(cmd);
      const { openTenantRepo } = await import('../vault/maintenance.js');
      const { check } = await import('../checker/check.js');
      const { printCheck } = await import('./check.js');
      const { Vault } = await import('../vault/vault.js');
      const v = new Vault(cfg);
      const failed: string[] = [];
      try {
        for (const tenant of await selectTenants(cfg, opts.tenant)) {
          const repo = await openTenantRepo(cfg, tenant).catch((e: unknown) => {
            if (e instanceof KuraError && e.code === 'E_REPO_NOT_FOUND') return null;
            throw e;
          });
          if (!repo) continue;
          try {
            const report = await check(repo, { readData: Boolean(opts.readData), repair: Boolean(opts.repair) });
            if (!report.ok) failed.push(tenant);
            v.audit.write({
              event: 'check',
              outcome: report.ok ? 'ok' : 'error',
              tenant,
              readData: Boolean(opts.readData),
              problems: report.problems.length,
              damagedSnapshots: report.damagedSnapshots,
              quarantined: report.quarantined.map((q) => q.chunk),
              user: process.env.USER ?? 'cli',
            });
            if (opts.json) process.stdout.write(JSON.stringify({ tenant, ...report }) + '\n');
            else printCheck(report, `tenant ${tenant}: `);
          } finally {
            repo.close();
          }
        }
      } finally {
        await v.close();
      }
      if (failed.length > 0) throw new KuraError('E_CHECK_FAILED', `check found problems in tenant(s) ${failed.join(', ')}; see above${opts.repair ? '' : ' (--repair quarantines damaged blobs)'}`, { reported: opts.json });
    });

  tenantsOpt(vault.command('status'))
    .description("per tenant: the newest snapshot of each source, each forwarding route's state, deliveries and RPO exposure (vault.tenants.<t>.forward), and the clocks of the peers seen at HELLO (a skew over vault.maxClockSkew warns)")
    .option('--json', 'one JSON line per tenant')
    .action(async (opts: { tenant?: string[]; json?: boolean }, cmd: Command) => {
      const cfg = vaultConfig(cmd);
      const { openTenantRepo } = await import('../vault/maintenance.js');
      const { routeStatusOf } = await import('../vault/forward.js');
      const { routingRecords } = await import('../relay/transfer-log.js');
      const { clockSkewed } = await import('../relay/route-policy.js');
      const { parseDuration } = await import('../config/duration.js');
      const { formatAge } = await import('../format.js');
      const maxSkew = parseDuration(cfg.maxClockSkew) ?? 2000;
      const now = Date.now();
      for (const tenant of await selectTenants(cfg, opts.tenant)) {
        const repo = await openTenantRepo(cfg, tenant).catch((e: unknown) => {
          if (e instanceof KuraError && e.code === 'E_REPO_NOT_FOUND') return null;
          throw e;
        });
        if (!repo) continue;
        try {
          const st = routeStatusOf(tenant, repo, cfg.tenants[tenant]?.forward ?? []);
          const clocks = routingRecords(repo.catalogue).clocks().map((c) => ({ ...c, skewed: clockSkewed(c.offsetMs, c.rttMs, maxSkew) }));
          const warnings = clocks.filter((c) => c.skewed).map((c) => `clock of ${c.peer} (${c.hop}) is ${(c.offsetMs / 1000).toFixed(1)} s off this vault's (max ${(maxSkew / 1000).toFixed(1)} s): check NTP`);
          if (opts.json) {
            process.stdout.write(JSON.stringify({ ...st, movedTo: cfg.tenants[tenant]?.movedTo ?? null, clocks, warnings }) + '\n');
            continue;
          }
          const w = (x: string) => process.stdout.write(x + '\n');
          w(`tenant ${tenant}${cfg.tenants[tenant]?.movedTo ? ` (moved to ${cfg.tenants[tenant]!.movedTo})` : ''}`);
          for (const n of st.newest) w(`  newest ${n.source}: ${n.endTime.replace('T', ' ').slice(0, 19)}`);
          for (const r of st.routes) {
            w(`  forward ${r.route}: ${r.state}${r.lastError ? ` (${r.lastError})` : ''}`);
            for (const x of r.sources) w(`    ${x.source.padEnd(16)} newest delivered ${(x.newestSent ?? 'none yet').replace('T', ' ').slice(0, 19)}  exposed ${x.newestSent ? formatAge(Math.max(0, (now - Date.parse(x.newestSent)) / 1000)) : '-'}  queued ${x.pending}`);
          }
          for (const c of clocks) w(`  clock ${c.hop}: ${(c.offsetMs / 1000).toFixed(2)} s${c.skewed ? '  SKEWED' : ''}`);
          for (const x of warnings) w(`  warning: ${x}`);
        } finally {
          repo.close();
        }
      }
    });

  vault
    .command('usage')
    .description('per-tenant usage for apportioning shared costs: stored, logical and received bytes, snapshots, chunks, quota, share; bytes over the wire and sent for restores, transfer share')
    .option('--period <yyyy-mm>', 'month of "received" and the wire bytes (UTC; or a year, or a day), default: the current one')
    .option('--json', 'print one JSON object')
    .option('--from <route>', "ask the vault of this route, on a system session (SSH user _system, a key of its vault.system.clients; a system administrator's ticket from kura login when it requires one)")
    .option('--identity <file>', "with --from: SSH private key for the vault (default: the route's clientKey)")
    .action(async (opts: { period?: string; json?: boolean; from?: string; identity?: string }, cmd: Command) => {
      const period = opts.period ?? new Date().toISOString().slice(0, 7);
      if (!/^\d{4}(-\d{2}(-\d{2})?)?$/.test(period)) throw new KuraError('E_USAGE', `--period must look like 2026-11 (or 2026, or 2026-11-23), not "${period}"`);
      let u: import('../vault/maintenance.js').VaultUsage;
      if (opts.from) {
        const { withRoute } = await import('../restorer/remote.js');
        const { Frame, jsonOf } = await import('../protocol/frames.js');
        u = await withRoute(configOf(cmd).config, { from: opts.from, identity: opts.identity, system: true }, async (conn) => jsonOf(await conn.request(Frame.USAGE, { period }, Frame.USAGE_REPLY)));
      } else {
        const { vaultUsage } = await import('../vault/maintenance.js');
        const cfg = vaultConfig(cmd);
        u = await vaultUsage(cfg, period, await hostUsageSources(cfg));
      }
      if (opts.json) {
        process.stdout.write(JSON.stringify(u) + '\n');
        return;
      }
      const { formatBytes, formatTable } = await import('../format.js');
      const rows = [['TENANT', 'STORED', 'LOGICAL', 'SNAPSHOTS', 'CHUNKS', `RECEIVED ${period}`, 'QUOTA', 'SHARE', 'WIRE IN', 'WIRE OUT', 'RESTORED', 'XFER SHARE']];
      for (const t of u.tenants) {
        rows.push([
          t.tenant,
          formatBytes(t.storedBytes),
          formatBytes(t.logicalBytes),
          String(t.snapshots),
          String(t.chunks),
          formatBytes(t.receivedBytes),
          t.quota === null ? '-' : `${formatBytes(t.quota)} (${((100 * t.storedBytes) / t.quota).toFixed(0)}%)`,
          `${t.sharePercent.toFixed(1)}%`,
          formatBytes(t.wireInBytes),
          formatBytes(t.wireOutBytes),
          formatBytes(t.restoreBytes),
          `${t.transferSharePercent.toFixed(1)}%`,
        ]);
      }
      process.stdout.write(formatTable(rows));
      process.stdout.write(`total stored ${formatBytes(u.totalStoredBytes)} (${u.totalStoredBytes} bytes); over the wire in ${period} ${formatBytes(u.totalWireBytes)} (${u.totalWireBytes} bytes)\n`);
      process.stdout.write('shares: SHARE of the stored bytes, XFER SHARE of the wire bytes in + out (every protocol frame; RESTORED is the part sent for restores)\n');
      process.stdout.write(usageSourcesText(u));
      process.stdout.write('rounding: tenths of a percent by largest remainder: each tenant gets the floor of its exact part, the tenths left go to the largest remainders (equal ones: the tenant listed first), so each column adds up to exactly 100.0%; exact bytes in --json\n');
    });

  for (const on of [true, false]) {
    vault
      .command(on ? 'protect' : 'unprotect')
      .description(on ? "protect a tenant's snapshot from pruning (long-term hold)" : "lift a tenant's snapshot's hold")
      .requiredOption('--tenant <tenant>', 'tenant owning the snapshot')
      .argument('<snapshot>', 'snapshot ID or unique prefix')
      .action(async (ref: string, opts: { tenant: string }, cmd: Command) => {
        const cfg = vaultConfig(cmd);
        const { openTenantRepo } = await import('../vault/maintenance.js');
        const { setProtected } = await import('../retention/protect.js');
        const repo = await openTenantRepo(cfg, opts.tenant);
        try {
          const id = repo.resolveSnapshot(ref);
          const changed = await setProtected(repo, id, on);
          await auditByHand(cfg, { event: on ? 'protect' : 'unprotect', outcome: 'ok', tenant: opts.tenant, snapshot: id, changed });
          process.stdout.write(`snapshot ${id} of tenant ${opts.tenant} ${changed ? (on ? 'is now protected' : 'is no longer protected') : on ? 'was already protected' : 'was not protected'}\n`);
        } finally {
          repo.close();
        }
      });
  }
}
