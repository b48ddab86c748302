import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { KURA, ROOT } from './cli.js';
import { VaultConnection } from '../../src/relay/connection.js';

export interface SshKey {
  private: string; // path
  public: string; // the OpenSSH public key line
}

/** A fresh ed25519 key pair made by OpenSSH's ssh-keygen. */
export function sshKey(dir: string, name: string): SshKey {
  const file = path.join(dir, name);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `${name}@test`, '-f', file]);
  return { private: file, public: readFileSync(`${file}.pub`, 'utf8').trim() };
}

export interface VaultProcess {
  child: ChildProcess;
  port: number;
  hostKeySha256: string;
  /** the operator endpoint (vault.sso), when configured */
  operatorUrl?: string | undefined;
  root: string;
  config: string;
  stop(): Promise<void>;
  audit(): Array<Record<string, unknown>>;
}

/** `kura vault serve` as a real process, on an ephemeral loopback port. */
export async function startVault(dir: string, tenantsYaml: string, extra = '', top = ''): Promise<VaultProcess> {
  const root = path.join(dir, 'vault');
  const config = path.join(dir, 'vault.yaml');
  writeFileSync(config, `${top}vault:\n  listen: { host: 127.0.0.1, port: 0 }\n  root: ${root}\n  leaseTtl: 1h\n${extra}  tenants:\n${tenantsYaml}`);
  const child = spawn(process.execPath, [KURA, 'vault', 'serve', '--config', config], { cwd: ROOT, env: { ...process.env, KURA_LOG_FORMAT: 'json' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`vault exited ${code}: ${err}`)));
  });
  const info = JSON.parse(line) as { listening: string; hostKeySha256: string; operator?: string };
  return {
    child,
    port: Number(info.listening.split(':')[1]),
    hostKeySha256: info.hostKeySha256,
    operatorUrl: info.operator,
    root,
    config,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await once(child, 'exit');
      }
    },
    audit: () =>
      readFileSync(path.join(root, 'audit.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

/** An agent/relay config: local repository, one route to `port`, fast back-off for tests. */
export function agentConfig(dir: string, opts: { port: number; hostKeySha256?: string; key: string; tenant?: string; user?: string; extraRoute?: string; name?: string; extraTop?: string; extraRelay?: string }): string {
  const file = path.join(dir, opts.name ?? 'agent.yaml');
  writeFileSync(
    file,
    `tenant: ${opts.tenant ?? 'city-a'}
${opts.extraTop ?? ''}repository:
  path: ${path.join(dir, 'repo')}
relay:
  pollInterval: 1s
  backoff: { initial: 200ms, max: 1s }
  keepalive: 1s
  connectTimeout: 3s
  batchBytes: 1048576
${opts.extraRelay ?? ''}modules:
  routing:
    type: static
    routes:
      peer-dc:
        endpoints:
          - host: 127.0.0.1
            port: ${opts.port}
${opts.user ? `            user: ${opts.user}\n` : ''}${opts.hostKeySha256 ? `            hostKeySha256: "${opts.hostKeySha256}"\n` : ''}        clientKey: ${opts.key}
${opts.extraRoute ?? ''}`,
  );
  return file;
}

export async function freePort(): Promise<number> {
  const net = await import('node:net');
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as import('node:net').AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** A protocol session with `vault` as tenant city-a, straight to its port (no relay). */
export function vaultSession(vault: VaultProcess, privateKeyFile: string, tenant = 'city-a', protocol?: number): Promise<VaultConnection> {
  return VaultConnection.open([{ host: '127.0.0.1', port: vault.port, hostKeySha256: vault.hostKeySha256 }], {
    route: 'test',
    tenant,
    protocol,
    privateKey: readFileSync(privateKeyFile),
    keepaliveMs: 5000,
    readyTimeoutMs: 5000,
  });
}
