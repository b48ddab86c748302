import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import { KuraError } from '../errors.js';
import type { Endpoint } from './connection.js';

const require = createRequire(import.meta.url);
const ssh2 = require('ssh2') as typeof import('ssh2');

/**
 * MOVED: a vault's answer to a tenant's HELLO when the tenant now lives elsewhere. It names the
 * new endpoints (with their pinned host keys) and is signed by the answering vault's SSH host
 * key, so a relay only believes it from the vault it pinned: the routing table moves with the
 * tenant, no agent config changes.
 */
export interface MovedAnswer {
  tenant: string;
  /** the vault.routes route the tenant moved to (for logs) */
  route: string;
  endpoints: Endpoint[];
  issued: string;
  /** the signing host key, "ssh-ed25519 AAAA…" */
  hostKey?: string;
  /** base64 signature of movedSigned(answer) by hostKey */
  signature?: string;
}

/** The bytes a MOVED signature covers: tenant, route, endpoints and time, in a fixed order. */
export function movedSigned(a: Pick<MovedAnswer, 'tenant' | 'route' | 'endpoints' | 'issued'>): Buffer {
  const endpoints = a.endpoints.map((e) => ({ host: e.host, port: e.port, user: e.user ?? null, hostKeySha256: e.hostKeySha256 ?? null }));
  return Buffer.from(JSON.stringify(['kura-moved-v1', a.tenant, a.route, endpoints, a.issued]));
}

/** Sign a MOVED answer with the vault's host key (the PEM/OpenSSH private key text). */
export function signMoved(a: Omit<MovedAnswer, 'hostKey' | 'signature'>, hostKeyPem: string | Buffer): MovedAnswer {
  const parsed = ssh2.utils.parseKey(hostKeyPem);
  if (parsed instanceof Error) throw new KuraError('E_CONFIG', `the vault host key cannot sign MOVED answers: ${parsed.message}`);
  const key = Array.isArray(parsed) ? parsed[0]! : parsed;
  const pub = key.getPublicSSH();
  return { ...a, hostKey: `${key.type} ${pub.toString('base64')}`, signature: key.sign(movedSigned(a)).toString('base64') };
}

function fingerprintOf(blob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(blob).digest('base64').replace(/=+$/, '');
}

/**
 * Believe a MOVED answer only when it is signed by the host key pinned for the endpoint that
 * gave it (the key SSH just verified). Anything else is E_HOST_KEY: unsigned, signed by another
 * key, a broken signature, or no pin to check against.
 */
export function verifyMoved(a: MovedAnswer, pinned: string | undefined, where: string): { signedBy: string } {
  if (!pinned) throw new KuraError('E_HOST_KEY', `the vault at ${where} answered MOVED, but its host key is not pinned (hostKeySha256): a routing change is only taken from a pinned vault`);
  if (!a.hostKey || !a.signature) throw new KuraError('E_HOST_KEY', `the vault at ${where} answered an unsigned MOVED for tenant ${a.tenant}; refused (a moved tenant is announced signed by the vault's host key)`);
  const m = /^(\S+) ([A-Za-z0-9+/=]+)$/.exec(a.hostKey.trim());
  const blob = m ? Buffer.from(m[2]!, 'base64') : Buffer.alloc(0);
  const signedBy = fingerprintOf(blob);
  if (signedBy.replace(/=+$/, '') !== pinned.trim().replace(/=+$/, '')) {
    throw new KuraError('E_HOST_KEY', `the MOVED answer from ${where} is signed by ${signedBy}, not by the pinned host key ${pinned}; refused`);
  }
  const pub = ssh2.utils.parseKey(a.hostKey);
  const key = pub instanceof Error ? null : Array.isArray(pub) ? pub[0]! : pub;
  let ok = false;
  try {
    ok = key !== null && Array.isArray(a.endpoints) && key.verify(movedSigned(a), Buffer.from(a.signature, 'base64')) === true;
  } catch {
    ok = false;
  }
  if (!ok) throw new KuraError('E_HOST_KEY', `the MOVED answer from ${where} does not carry a valid signature of the pinned host key ${pinned}; refused`);
  if (a.endpoints.length === 0 || a.endpoints.some((e) => typeof e.host !== 'string' || !Number.isInteger(e.port))) throw new KuraError('E_PROTOCOL', `the MOVED answer from ${where} names no usable endpoint`);
  return { signedBy };
}
