import { accessSync, constants } from 'node:fs';
import type { KuraConfig } from './schema.js';
import { uncarriedRoutes } from '../relay/route-policy.js';
import { moduleOf, modulesOf } from '../modules/registry.js';

/**
 * What a config names beyond its own shape: routes named by sources, and the key, password and
 * certificate files it points at. A pure function of the config and a file probe, so `config
 * check` and every daemon's start say the same thing, each error naming its exact path.
 */
export interface ReferenceIssue {
  path: string;
  message: string;
}


/** References inside the config: they hold or not whatever the host. */
export function configReferences(cfg: KuraConfig): ReferenceIssue[] {
  const out: ReferenceIssue[] = [];
  const routes = Object.keys(moduleOf(cfg, 'routing').routes);
  for (const [name, src] of Object.entries(cfg.sources)) {
    src.routes.forEach((r, i) => {
      if (!routes.includes(r)) out.push({ path: `sources.${name}.routes[${i}]`, message: `names route "${r}", which is not in modules.routing.routes (known: ${routes.join(', ') || 'none'})` });
    });
    for (const r of uncarriedRoutes(name, src.routes, moduleOf(cfg, 'routing').routes)) {
      out.push({ path: `sources.${name}.routes`, message: `names route "${r}", whose sources do not include "${name}": add it to modules.routing.routes.${r}.sources or drop the route here` });
    }
  }
  for (const [r, route] of Object.entries(moduleOf(cfg, 'routing').routes)) {
    if (route.every && route.schedule) out.push({ path: `modules.routing.routes.${r}`, message: 'give either every or schedule, not both' });
    (route.sources ?? []).forEach((s, i) => {
      if (!cfg.sources[s] && Object.keys(cfg.sources).length > 0) out.push({ path: `modules.routing.routes.${r}.sources[${i}]`, message: `names source "${s}", which is not in sources` });
    });
  }
  if (cfg.vault) {
    const vroutes = Object.keys(moduleOf({ modules: { routing: cfg.vault.routes } }, 'routing').routes);
    for (const [t, tenant] of Object.entries(cfg.vault.tenants)) {
      tenant.forward.forEach((r, i) => {
        if (!vroutes.includes(r)) out.push({ path: `vault.tenants.${t}.forward[${i}]`, message: `names route "${r}", which is not in vault.routes.routes (known: ${vroutes.join(', ') || 'none'})` });
      });
      if (tenant.movedTo && !vroutes.includes(tenant.movedTo)) out.push({ path: `vault.tenants.${t}.movedTo`, message: `names route "${tenant.movedTo}", which is not in vault.routes.routes (known: ${vroutes.join(', ') || 'none'})` });
    }
  }
  return out;
}

export type FileProbe = (file: string) => string | null;

/** null when `file` can be read by this process, else why not. */
export const readableFile: FileProbe = (file) => {
  try {
    accessSync(file, constants.R_OK);
    return null;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not readable by this user' : (e as Error).message;
  }
};

/** The files a config points at that this host must be able to read (given which roles run here). */
export function fileReferences(cfg: KuraConfig, probe: FileProbe = readableFile, roles: { agent?: boolean; relay?: boolean; vault?: boolean } = { agent: true, relay: true, vault: true }): ReferenceIssue[] {
  const files: Array<[string, string | undefined, string]> = [];
  if (roles.agent || roles.relay) {
    files.push(['repository.passphraseFile', cfg.repository?.passphraseFile, 'the repository passphrase file'], ['repository.keyFile', cfg.repository?.keyFile, 'the repository key file']);
  }
  if (roles.agent) for (const [name, src] of Object.entries(cfg.sources)) if ('passwordFile' in src) files.push([`sources.${name}.passwordFile`, src.passwordFile, 'the database password file']);
  if (roles.relay) {
    for (const [name, route] of Object.entries(moduleOf(cfg, 'routing').routes)) files.push([`modules.routing.routes.${name}.clientKey`, route.clientKey, "this host's SSH private key"]);
  }
  if (roles.vault && cfg.vault) {
    for (const [name, route] of Object.entries(moduleOf({ modules: { routing: cfg.vault.routes } }, 'routing').routes)) files.push([`vault.routes.routes.${name}.clientKey`, route.clientKey, "the vault's SSH private key for forwarding"]);
    const sso = cfg.vault.sso;
    if (sso) {
      files.push(['vault.sso.tls.cert', sso.tls?.cert, "the operator endpoint's certificate"], ['vault.sso.tls.key', sso.tls?.key, "the operator endpoint's private key"]);
      const many = Array.isArray(cfg.modules.sso);
      modulesOf(cfg, 'sso').forEach((m, i) => {
        for (const f of m.provider?.files ?? []) files.push([`modules.sso${many ? `[${i}]` : ''}.${f.option}`, f.file, f.what]);
      });
    }
  }
  const email = (cfg.notifications as unknown as { email?: Array<{ passwordFile?: string; caFile?: string }> }).email ?? [];
  email.forEach((e, i) => {
    files.push([`notifications.email[${i}].passwordFile`, e.passwordFile, 'the SMTP password file'], [`notifications.email[${i}].caFile`, e.caFile, 'the SMTP CA file']);
  });
  const out: ReferenceIssue[] = [];
  for (const [where, file, what] of files) {
    if (!file) continue;
    const why = probe(file);
    if (why) out.push({ path: where, message: `${what} ${file} ${why}` });
  }
  return out;
}

export function formatReferenceIssues(issues: readonly ReferenceIssue[]): string[] {
  return issues.map((i) => `${i.path}: ${i.message}`);
}
