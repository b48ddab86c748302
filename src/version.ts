import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { embeddedManifest, addonEvents, fromCheckoutBundle } from './sea/embedded.js';

/**
 * What `kura --version --json` reports, from the single executable's manifest (written by
 * scripts/package.mjs from the same functions) or, in a checkout, from package.json, git and
 * node_modules. Format versions come from the modules that read and write those formats.
 */

/** The libraries inside kura whose versions an operator may need to know (security notices). */
export const REPORTED_LIBRARIES = ['better-sqlite3', 'zstd-napi', 'ssh2', 'cpu-features', '@napi-rs/blake-hash', 'ink', 'react', 'commander', 'zod', 'yaml', 'pino', 'node-cron', 'nodemailer'] as const;

/** The checkout root (dist/src/version.js → ../..); meaningless inside the executable. */
const checkoutRoot = () => path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

function readJson(file: string): Record<string, unknown> {
  return JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
}

/** kura's own version: cheap, for `kura --version`. */
export function kuraVersion(): string {
  const m = embeddedManifest();
  return m ? m.kura : String(readJson(path.join(checkoutRoot(), 'package.json')).version);
}

/** The commit a checkout is at, and whether its tracked files differ from it ("unknown" without git). */
export function checkoutCommit(root = checkoutRoot()): { commit: string; dirty: boolean } {
  const head = spawnSync('git', ['-C', root, 'rev-parse', 'HEAD'], { encoding: 'utf8' });
  if (head.status !== 0) return { commit: 'unknown', dirty: false };
  const status = spawnSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' });
  return { commit: head.stdout.trim(), dirty: status.status !== 0 || status.stdout.trim() !== '' };
}

/** Versions of REPORTED_LIBRARIES as installed in a checkout's node_modules. */
export function checkoutLibraries(root = checkoutRoot()): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of REPORTED_LIBRARIES) {
    try {
      out[name] = String(readJson(path.join(root, 'node_modules', name, 'package.json')).version);
    } catch {
      out[name] = 'absent';
    }
  }
  return out;
}

export interface VersionReport {
  kura: string;
  commit: string;
  dirty: boolean;
  executable: 'single' | 'checkout';
  /** how the code was loaded: embedded in the executable, a checkout's dist/kura.cjs, or its modules one by one */
  code: 'embedded' | 'bundle' | 'modules';
  formats: {
    repository: { reads: number[]; writes: number };
    snapshot: { reads: number[]; writes: number };
    catalogue: { reads: number[]; writes: number };
    keyFile: { reads: number[]; writes: number };
    protocol: { vault: { oldest: number; newest: number }; relay: { oldest: number; newest: number } };
  };
  node: Record<string, string>;
  libraries: Record<string, string>;
  native: Record<string, string>;
}

const upTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

export async function versionReport(): Promise<VersionReport> {
  const m = embeddedManifest();
  const require = createRequire(import.meta.url);
  const zstd = require('zstd-napi/binding.js') as typeof import('zstd-napi/binding.js');
  const [{ REPO_FORMAT }, { SNAPSHOT_FORMAT, READABLE_FORMATS }, { SCHEMA_VERSION }, frames, { nativeAddon }, { default: Database }] = await Promise.all([
    import('./repository/repository.js'),
    import('./repository/snapshot.js'),
    import('./repository/catalogue.js'),
    import('./protocol/frames.js'),
    import('./native.js'),
    import('better-sqlite3'),
  ]);
  // loading the libraries is part of the report: in the executable it proves the embedded addons load
  const db = new Database(':memory:');
  const sqlite = (db.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v;
  db.close();
  const ours = nativeAddon() !== null;
  const { commit, dirty } = m ? { commit: m.commit, dirty: m.builtFrom.dirty } : checkoutCommit();
  return {
    kura: kuraVersion(),
    commit,
    dirty,
    executable: m ? 'single' : 'checkout',
    code: m ? 'embedded' : fromCheckoutBundle() ? 'bundle' : 'modules',
    formats: {
      repository: { reads: [REPO_FORMAT], writes: REPO_FORMAT },
      snapshot: { reads: [...READABLE_FORMATS].sort(), writes: SNAPSHOT_FORMAT },
      catalogue: { reads: upTo(SCHEMA_VERSION), writes: SCHEMA_VERSION },
      keyFile: { reads: [1], writes: 1 },
      protocol: { vault: { oldest: frames.OLDEST_PROTOCOL, newest: frames.PROTOCOL_VERSION }, relay: { oldest: frames.OLDEST_RELAY_PROTOCOL, newest: frames.PROTOCOL_VERSION } },
    },
    node: { node: process.versions.node, v8: process.versions.v8, uv: process.versions.uv, openssl: process.versions.openssl, zlib: process.versions.zlib, napi: process.versions.napi ?? 'unknown', modules: process.versions.modules },
    libraries: { ...(m ? m.libraries : checkoutLibraries()), sqlite, zstd: zstd.versionString() },
    native: {
      kura: ours ? 'loaded' : process.env.KURA_NATIVE === '0' ? 'disabled (KURA_NATIVE=0)' : 'absent (TypeScript fallback)',
      ...Object.fromEntries(addonEvents.map((e) => [e.addon, `${e.event} ${e.file}`])),
    },
  };
}
