import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import Database from 'better-sqlite3';
import { KURA, ROOT, kuraAsync, type RunResult } from './cli.js';
import { startVault, type SshKey, type VaultProcess } from './vault.js';

/** Fast relay timings for a vault that forwards (top level of its config file). */
export const FAST_RELAY = `relay:\n  pollInterval: 1s\n  backoff: { initial: 200ms, max: 1s }\n  keepalive: 1s\n  connectTimeout: 3s\n  deadAfter: 5s\n  batchBytes: 1048576\n`;

/** vault.routes with one route `name` to a vault at `port`. */
export function vaultRoutes(name: string, port: number, hostKeySha256: string, key: SshKey, extra = ''): string {
  return `  routes:\n    type: static\n    routes:\n      ${name}:\n        endpoints:\n          - host: 127.0.0.1\n            port: ${port}\n            hostKeySha256: "${hostKeySha256}"\n        clientKey: ${key.private}\n${extra}`;
}

/** A vault in a directory of its own under `dir`. */
export async function vaultIn(dir: string, name: string, tenantsYaml: string, extra = '', top = ''): Promise<VaultProcess> {
  const d = path.join(dir, name);
  mkdirSync(d, { recursive: true });
  return startVault(d, tenantsYaml, extra, top);
}

export async function ok(p: Promise<RunResult>, what: string): Promise<RunResult> {
  const r = await p;
  if (r.status !== 0) throw new Error(`${what}: exit ${r.status}: ${r.stderr.slice(-3000)}`);
  return r;
}

/** Read a catalogue without disturbing its writers. */
export function readCatalogue<T>(repoDir: string, fn: (db: Database.Database) => T): T {
  const db = new Database(path.join(repoDir, 'catalogue.sqlite'), { readonly: true, fileMustExist: true });
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

/** The unsent queue entries of a repository (a vault tenant's or the agent's), per route. */
export function unsent(repoDir: string, route?: string): number {
  return readCatalogue(repoDir, (db) => {
    const has = db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'queue'`).get();
    if (!has) return 0;
    return route
      ? (db.prepare('SELECT count(*) AS n FROM queue WHERE sent IS NULL AND route = ?').get(route) as { n: number }).n
      : (db.prepare('SELECT count(*) AS n FROM queue WHERE sent IS NULL').get() as { n: number }).n;
  });
}

/** Snapshot IDs a repository holds, in the order they arrived (a vault tenant: received seq). */
export function received(repoDir: string): string[] {
  if (!existsSync(path.join(repoDir, 'catalogue.sqlite'))) return [];
  return readCatalogue(repoDir, (db) => {
    // a vault creates the catalogue on the tenant's first session: its tables may not be there yet
    if (!db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'received'`).get()) return [];
    return (db.prepare('SELECT snapshot FROM received ORDER BY seq').all() as Array<{ snapshot: string }>).map((r) => r.snapshot);
  });
}

export async function kuraJsonLines<T>(args: string[], env: Record<string, string | undefined> = {}): Promise<T[]> {
  const r = await ok(kuraAsync([...args, '--json'], { env }), `kura ${args.join(' ')}`);
  return r.out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as T);
}

/**
 * (Re)start `kura vault serve` on a config file as it is (`edit` may change it first), keeping
 * the port the vault had: relays pointed at it reach the new process. `prefix` runs the vault
 * under another program (faketime).
 */
export async function serveVaultConfig(v: { root: string; config: string; port?: number }, opts: { edit?: (yaml: string) => string; prefix?: string[]; env?: Record<string, string> } = {}): Promise<VaultProcess> {
  let yaml = readFileSync(v.config, 'utf8');
  if (v.port) yaml = yaml.replace(/listen: \{ host: 127\.0\.0\.1, port: \d+ \}/, `listen: { host: 127.0.0.1, port: ${v.port} }`);
  if (opts.edit) yaml = opts.edit(yaml);
  writeFileSync(v.config, yaml);
  const argv = [...(opts.prefix ?? []), process.execPath, KURA, 'vault', 'serve', '--config', v.config];
  // under a wrapper (faketime forks the command and does not pass signals on) the vault gets a
  // process group of its own, and stop() signals the group: wrapper and vault
  const grouped = Boolean(opts.prefix?.length);
  const child = spawn(argv[0]!, argv.slice(1), { cwd: ROOT, env: { ...process.env, KURA_LOG_FORMAT: 'json', ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'], detached: grouped });
  let err = '';
  let gone = false;
  child.once('close', () => (gone = true));
  child.stderr!.on('data', (d) => (err += d));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`vault exited ${code}: ${err}`)));
  });
  const info = JSON.parse(line) as { listening: string; hostKeySha256: string };
  return {
    child,
    port: Number(info.listening.split(':')[1]),
    hostKeySha256: info.hostKeySha256,
    root: v.root,
    config: v.config,
    stop: async () => {
      if (grouped) {
        if (gone) return;
        const closed = once(child, 'close');
        try {
          process.kill(-child.pid!, 'SIGTERM');
        } catch {
          // the group is gone already
        }
        await closed;
      } else if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await once(child, 'exit');
      }
    },
    audit: () =>
      readFileSync(path.join(v.root, 'audit.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

/** A process that speaks SSH like a vault and answers every HELLO with a MOVED of the given kind (unsigned, or signed by another key). */
export async function fakeMovedVault(kind: 'unsigned' | 'other-key' | 'forged', to: { host: string; port: number }): Promise<{ port: number; hostKeySha256: string; stop: () => Promise<void> }> {
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fake-moved-vault.js');
  const child = spawn(process.execPath, [script, kind, to.host, String(to.port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`fake vault exited ${code}`)));
  });
  const info = JSON.parse(line) as { port: number; hostKeySha256: string };
  return {
    ...info,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await once(child, 'exit');
      }
    },
  };
}
