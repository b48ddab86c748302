import { createHash } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';

/**
 * Who may act on which tenant: pure functions, no I/O (table-driven tests in test/access.test.ts).
 * A key belongs to a tenant with a role and the networks it may connect from; the SSH user name
 * is the tenant it asks for. Anything else is refused with a reason for the audit log.
 */
export type Role = 'backup' | 'restore' | 'tenant-admin' | 'system-admin';

/**
 * The SSH user name of a system session: not a tenant's (tenant names cannot begin with "_").
 * Its keys are vault.system.clients; it serves the vault's own frames (USAGE) and reaches no
 * tenant's repository.
 */
export const SYSTEM_USER = '_system';

export interface ClientRule {
  key: string; // OpenSSH public key line
  role: Role;
  networks: string[];
}

export interface TenantRules {
  [tenant: string]: { clients: ClientRule[] };
}

export interface AuthAttempt {
  username: string;
  keyAlgo: string;
  keyData: Buffer; // the public key blob (SSH wire format)
  ip: string;
}

export type AuthDecision =
  | { ok: true; tenant: string; role: Role; fingerprint: string }
  | { ok: false; code: 'E_AUTH_DENIED' | 'E_TENANT_MISMATCH'; reason: string; fingerprint: string };

export function keyBlobOf(line: string): { algo: string; data: Buffer } | null {
  const m = /^(\S+)\s+([A-Za-z0-9+/=]+)/.exec(line.trim());
  if (!m) return null;
  return { algo: m[1]!, data: Buffer.from(m[2]!, 'base64') };
}

/** "SHA256:<base64 without padding>", as ssh-keygen -lf prints it. */
export function fingerprint(keyData: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(keyData).digest('base64').replace(/=+$/, '');
}

function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((acc, p) => (acc << 8) + Number(p), 0) >>> 0;
}

function ipv6ToBigInt(ip: string): bigint {
  let s = ip;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const n = ipv4ToInt(v4[1]!);
    s = s.slice(0, -v4[1]!.length) + `${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
  }
  const [head, tail] = s.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((acc, g) => (acc << 16n) + BigInt(parseInt(g || '0', 16)), 0n);
}

/** Whether `ip` lies in `cidr`; IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) match IPv4 networks. */
export function ipInNetwork(ip: string, cidr: string): boolean {
  const [net, bitsText] = cidr.split('/') as [string, string];
  const bits = Number(bitsText);
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  const addr = mapped ? mapped[1]! : ip;
  if (isIPv4(net) && isIPv4(addr)) {
    if (bits === 0) return true;
    const mask = bits >= 32 ? 0xffffffff : (0xffffffff << (32 - bits)) >>> 0;
    return (ipv4ToInt(addr) & mask) >>> 0 === (ipv4ToInt(net) & mask) >>> 0;
  }
  if (isIPv6(net) && isIPv6(ip)) {
    if (bits === 0) return true;
    const shift = BigInt(128 - bits);
    return ipv6ToBigInt(ip) >> shift === ipv6ToBigInt(net) >> shift;
  }
  return false;
}

export function authorize(a: AuthAttempt, tenants: TenantRules, system: { clients: Array<Omit<ClientRule, 'role'>> } = { clients: [] }): AuthDecision {
  const fp = fingerprint(a.keyData);
  if (a.username === SYSTEM_USER) {
    const sys = system.clients.find((c) => {
      const k = keyBlobOf(c.key);
      return k !== null && k.algo === a.keyAlgo && k.data.equals(a.keyData);
    });
    if (!sys) return { ok: false, code: 'E_AUTH_DENIED', reason: 'key is not a system administrator\'s (vault.system.clients)', fingerprint: fp };
    if (!sys.networks.some((n) => ipInNetwork(a.ip, n))) {
      return { ok: false, code: 'E_AUTH_DENIED', reason: `address ${a.ip} is outside the key's networks (${sys.networks.join(', ')})`, fingerprint: fp };
    }
    return { ok: true, tenant: SYSTEM_USER, role: 'system-admin', fingerprint: fp };
  }
  const owners: Array<{ tenant: string; rule: ClientRule }> = [];
  for (const [tenant, t] of Object.entries(tenants)) {
    for (const rule of t.clients) {
      const k = keyBlobOf(rule.key);
      if (k && k.algo === a.keyAlgo && k.data.equals(a.keyData)) owners.push({ tenant, rule });
    }
  }
  if (owners.length === 0) return { ok: false, code: 'E_AUTH_DENIED', reason: 'unknown key', fingerprint: fp };
  const mine = owners.find((o) => o.tenant === a.username);
  if (!mine) {
    return { ok: false, code: 'E_TENANT_MISMATCH', reason: `key of tenant ${owners.map((o) => o.tenant).join(',')} asked for tenant "${a.username}"`, fingerprint: fp };
  }
  if (!mine.rule.networks.some((n) => ipInNetwork(a.ip, n))) {
    return { ok: false, code: 'E_AUTH_DENIED', reason: `address ${a.ip} is outside the key's networks (${mine.rule.networks.join(', ')})`, fingerprint: fp };
  }
  return { ok: true, tenant: mine.tenant, role: mine.rule.role, fingerprint: fp };
}

/**
 * What a request frame asks of the session's role (each frame's entry in src/vault/frames/
 * names one): `any` role, `tenant` (any role of a tenant's session, not a system session),
 * `backup` (backup or tenant-admin), `restore` (restore or tenant-admin),
 * `tenant-admin` alone, or `system-admin` alone (a system session: the vault's own frames; a
 * system administrator reaches no tenant's frames).
 */
export type FrameRight = 'any' | 'tenant' | Role;

export function roleMay(role: Role, right: FrameRight): boolean {
  if (right === 'any') return true;
  if (right === 'tenant') return role !== 'system-admin';
  if (role === 'system-admin' || right === 'system-admin') return role === right;
  return role === right || role === 'tenant-admin';
}
