import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import type { LoadedConfig } from '../config/load.js';
import { DEFAULT_TENANT, hasConfigFile } from '../config/path.js';
import { Repository, type KeySource, type RepoLocation } from '../repository/repository.js';
import { createLogger } from '../log.js';

export interface RepoOptions {
  repo?: string;
  vaultTenant?: string;
  passphraseFile?: string;
  keyFile?: string;
  json?: boolean;
}

/** Options every repository command takes; --repo may come from the config instead. */
export function withRepoOptions(cmd: Command): Command {
  return cmd
    .option('--repo <dir>', 'repository directory (default: repository.path from the config)')
    .option('--vault-tenant <tenant>', 'the repository of this vault tenant (vault.root and vault.storage from the config), opened without keys')
    .option('--passphrase-file <file>', 'file holding the repository passphrase (or set KURA_PASSPHRASE)')
    .option('--key-file <file>', 'key file from "kura repo init --key-file" or "kura key export" (or set KURA_KEY_FILE)');
}

export function globalsOf(cmd: Command): { config?: string; debug?: boolean } {
  return cmd.optsWithGlobals() as { config?: string; debug?: boolean };
}

const require = createRequire(import.meta.url);
/**
 * The config loader, loaded when a command first needs the config: its YAML parser and schema
 * take ~0.1 s to load, a tenth of a nightly backup given --repo. (require() of an ES module:
 * Node 20.19 or later, as package.json's engines say.)
 */
export const configLoader = (): typeof import('../config/load.js') => require('../config/load.js') as typeof import('../config/load.js');

let cachedConfig: LoadedConfig | null = null;
export function configOf(cmd: Command): LoadedConfig {
  if (!cachedConfig) {
    cachedConfig = configLoader().loadConfig(globalsOf(cmd).config);
    if (!process.env.KURA_LOG_LEVEL) createLogger(cachedConfig.config.logging.level);
  }
  return cachedConfig;
}

/** The tenant a command works for when not given one: the config's, without loading it if there is none. */
export function tenantOf(cmd: Command): string {
  return hasConfigFile(globalsOf(cmd).config) ? configOf(cmd).config.tenant : DEFAULT_TENANT;
}

export function repoPathOf(cmd: Command, opts: RepoOptions): string {
  if (opts.repo) return opts.repo;
  if (opts.vaultTenant) {
    const loc = repoLocationOf(cmd, opts);
    return typeof loc === 'string' ? loc : loc.dir;
  }
  const { config, path } = configOf(cmd);
  if (config.repository?.path) return config.repository.path;
  throw new KuraError('E_USAGE', `no repository given: pass --repo DIR or set repository.path in the config${path ? ` (${path})` : ''}`);
}

/**
 * The repository a command works on: --repo DIR (a directory), or the config's repository (a
 * directory, or a bucket with repository.path holding the catalogue).
 */
export function repoLocationOf(cmd: Command, opts: RepoOptions): RepoLocation {
  if (opts.repo) return opts.repo;
  if (opts.vaultTenant) {
    const vault = configOf(cmd).config.vault;
    if (!vault) throw new KuraError('E_USAGE', '--vault-tenant needs a config with a vault section');
    // required here, not imported: agent commands never load the vault's code
    const { tenantLocation } = require('../vault/vault.js') as typeof import('../vault/vault.js');
    return tenantLocation(vault, opts.vaultTenant);
  }
  const repo = configOf(cmd).config.repository;
  if (repo && repo.type !== 'fs') return { dir: repo.path, storage: repo };
  return repoPathOf(cmd, opts);
}

/** The directory seal workers may write packs into themselves: a local repository's, else none. */
export function directRootOf(loc: RepoLocation): string | null {
  return typeof loc === 'string' ? loc : loc.storage.type === 'fs' ? loc.dir : null;
}

function readSecretFile(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (e) {
    throw new KuraError('E_KEY_MISSING', `cannot read ${what} ${file}: ${(e as Error).message}`);
  }
}

export function keySourceOf(cmd: Command, opts: RepoOptions): KeySource {
  const repoCfg = opts.repo ? undefined : configOf(cmd).config.repository;
  const keyFile = opts.keyFile ?? process.env.KURA_KEY_FILE ?? repoCfg?.keyFile;
  const passFile = opts.passphraseFile ?? repoCfg?.passphraseFile;
  const passphrase = passFile && (opts.passphraseFile || !process.env.KURA_PASSPHRASE) ? readSecretFile(passFile, 'passphrase file') : process.env.KURA_PASSPHRASE;
  return { keyFile, passphrase };
}

export function hasKeySource(k: KeySource): boolean {
  return Boolean(k.keyFile || k.passphrase);
}

export async function openRepo(cmd: Command, opts: RepoOptions, keys: 'required' | 'if-given' | 'none' | 'deferred', how: { rebuildIfMissing?: boolean } = {}): Promise<Repository> {
  const dir = repoLocationOf(cmd, opts);
  // a tenant's repository has no key slots: only a key file given on the command line opens its contents
  const source: KeySource = opts.vaultTenant ? { keyFile: opts.keyFile } : keySourceOf(cmd, opts);
  if (keys === 'none' || (keys === 'if-given' && !hasKeySource(source))) return Repository.open(dir, null, how);
  if (keys === 'deferred') {
    // a missing key source is said at once; a wrong one when the derivation ends (repo.keysReady)
    if (!hasKeySource(source)) throw new KuraError('E_KEY_MISSING', 'the repository key is needed: set KURA_PASSPHRASE, give --passphrase-file, or --key-file');
    return Repository.open(dir, source, { deferKeys: true });
  }
  return Repository.open(dir, source);
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
}

export { formatBytes } from '../format.js';
