import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { kuraAsync } from './cli.js';
import type { Rgw } from './rgw.js';
import { serveVaultConfig } from './routing.js';
import type { SshKey, VaultProcess } from './vault.js';
import { waitFor } from './proc.js';
import type { NodesView } from '../../src/vault/nodes/view.js';

/** Vault nodes sharing a bucket on the test gateway (vault.node), each started as a real `kura vault serve`. */
export const NODE_TENANTS = ['city-a', 'city-b', 'city-c'];

export function tenantsYaml(key: SshKey, tenants = NODE_TENANTS): string {
  return tenants.map((t) => `    ${t}:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`).join('');
}

/** A node's config file and root under `dir`; `extra` is more of the vault section (indented two spaces). */
export function nodeConfig(dir: string, rgw: Rgw, id: string, bucket: string, key: SshKey, o: { ttl?: string; extra?: string; tenants?: string } = {}): { root: string; config: string } {
  const root = path.join(dir, id);
  mkdirSync(root, { recursive: true });
  const config = path.join(dir, `${id}.yaml`);
  writeFileSync(
    config,
    `vault:\n  listen: { host: 127.0.0.1, port: 0 }\n  root: ${root}\n  leaseTtl: 1h\n  storage:\n    type: s3\n    endpoint: ${rgw.endpoint}\n    bucket: ${bucket}\n    prefix: "dc-a/"\n  node: { id: ${id}, leaseTtl: ${o.ttl ?? '3s'} }\n${o.extra ?? ''}  tenants:\n${o.tenants ?? tenantsYaml(key)}`,
  );
  return { root, config };
}

export async function startNode(dir: string, rgw: Rgw, id: string, bucket: string, key: SshKey, o: { ttl?: string; extra?: string; tenants?: string; prefix?: string[]; env?: Record<string, string> } = {}): Promise<VaultProcess> {
  return serveVaultConfig(nodeConfig(dir, rgw, id, bucket, key, o), { ...(o.prefix ? { prefix: o.prefix } : {}), ...(o.env ? { env: o.env } : {}) });
}

export async function nodesView(configFile: string): Promise<NodesView> {
  const r = await kuraAsync(['vault', 'nodes', '--json', '--config', configFile]);
  if (r.status !== 0) throw new Error(`kura vault nodes: ${r.stderr}`);
  return JSON.parse(r.out) as NodesView;
}

/** Holder of each tenant (live leases only). */
export async function holders(configFile: string): Promise<Record<string, string | null>> {
  const v = await nodesView(configFile);
  return Object.fromEntries(v.tenants.map((t) => [t.tenant, t.state === 'held' ? t.holder : null]));
}

export async function waitForHolders(configFile: string, want: (h: Record<string, string | null>) => boolean, what: string, timeoutMs = 30_000): Promise<Record<string, string | null>> {
  let last: Record<string, string | null> = {};
  await waitFor(what, async () => want((last = await holders(configFile))), timeoutMs, 300);
  return last;
}

/** An agent (and relay) of `tenant` whose route lists `endpoints` in that order. */
export function agentConfigFor(dir: string, tenant: string, key: SshKey, endpoints: Array<{ port: number; hostKeySha256: string; node?: string }>, name = `agent-${tenant}.yaml`): string {
  const file = path.join(dir, name);
  writeFileSync(
    file,
    `tenant: ${tenant}
repository:
  path: ${path.join(dir, `repo-${tenant}`)}
relay:
  pollInterval: 1s
  backoff: { initial: 200ms, max: 1s }
  keepalive: 1s
  connectTimeout: 3s
  deadAfter: 5s
  batchBytes: 1048576
modules:
  routing:
    type: static
    routes:
      peer-dc:
        endpoints:
${endpoints.map((e) => `          - { host: 127.0.0.1, port: ${e.port}, hostKeySha256: "${e.hostKeySha256}"${e.node ? `, node: ${e.node}` : ''} }\n`).join('')}        clientKey: ${key.private}
`,
  );
  return file;
}
