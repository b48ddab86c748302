import { createHash, createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { appendFileSync, closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { KuraError } from '../errors.js';

/**
 * Operator tickets: what a vault hands a person after a sign-in at an identity provider, and what
 * the person's commands present (AUTH frame) on each SSH session. The SSH key says which machine;
 * the ticket says which person, with which roles, signed in how strongly and when.
 *
 * Token: `kt1.<base64url(JSON payload)>.<base64url(Ed25519 signature)>`; the signature covers
 * `kura-ticket-v1.` followed by the payload part. The key is the vault's own ticket key
 * (`<vault.root>/ticket_key`, 32 random bytes made on first use), never the SSH host key.
 */
export type TenantRole = 'restore' | 'tenant-admin';

export interface OperatorTicket {
  v: 1;
  /** random ticket id: the unit of logout (revocation) and of the audit trail */
  id: string;
  /** key id of the vault that issued it (a ticket of another vault is refused) */
  vault: string;
  /** the person as the provider names them: a SAML persistent NameID or an OIDC (pairwise) `sub` */
  subject: string;
  /** name of the identity provider (an entry of modules.sso) */
  provider: string;
  /** display attributes the provider released (e.g. name, email), for the audit log only */
  display?: Record<string, string>;
  /** roles per tenant, from the provider's claims (vault.tenants.<t>.operators) */
  tenants: Record<string, TenantRole>;
  /** system administrator of the vault: tenants, quotas, usage, maintenance; never contents */
  systemAdmin: boolean;
  /** the authentication context the provider asserted (OIDC `acr`, SAML AuthnContextClassRef) */
  acr: string | null;
  /** when the person authenticated at the provider (ms since the epoch) */
  authTime: number;
  issued: number;
  expires: number;
}

const PREFIX = 'kt1.';
const SIGNED = 'kura-ticket-v1.';
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');

export class TicketKey {
  readonly id: string;
  private constructor(
    private readonly privateKey: KeyObject,
    private readonly publicKey: KeyObject,
  ) {
    const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url');
    this.id = createHash('sha256').update(raw).digest('base64url').slice(0, 16);
  }

  static fromSeed(seed: Buffer): TicketKey {
    if (seed.length !== 32) throw new KuraError('E_CONFIG', 'a ticket key is 32 bytes');
    const priv = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: 'der', type: 'pkcs8' });
    return new TicketKey(priv, createPublicKey(priv));
  }

  /** The vault's ticket key: kept across restarts (tickets outlive them); made on first use. */
  static loadOrCreate(file: string): TicketKey {
    if (!existsSync(file)) {
      mkdirSync(path.dirname(file), { recursive: true });
      try {
        writeFileSync(file, randomBytes(32), { mode: 0o600, flag: 'wx' });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
    const seed = readFileSync(file);
    if (seed.length !== 32) throw new KuraError('E_CONFIG', `the ticket key ${file} is not 32 bytes: restore it from backup, or delete it (every ticket issued so far becomes invalid)`);
    return TicketKey.fromSeed(seed);
  }

  issue(t: Omit<OperatorTicket, 'v' | 'id' | 'vault'>): { token: string; ticket: OperatorTicket } {
    const ticket: OperatorTicket = { v: 1, id: randomBytes(16).toString('base64url'), vault: this.id, ...t };
    const body = Buffer.from(JSON.stringify(ticket)).toString('base64url');
    const sig = sign(null, Buffer.from(SIGNED + body), this.privateKey).toString('base64url');
    return { token: `${PREFIX}${body}.${sig}`, ticket };
  }

  /**
   * The ticket a token carries, if this vault signed it, it has not expired and it was not
   * revoked. Every refusal is a coded error that says what to do.
   */
  verify(token: string, now: number, revoked: (id: string) => boolean = () => false): OperatorTicket {
    const parts = typeof token === 'string' && token.startsWith(PREFIX) ? token.slice(PREFIX.length).split('.') : [];
    if (parts.length !== 2) throw new KuraError('E_TICKET_INVALID', 'the operator ticket is malformed: sign in again with kura login');
    const [body, sig] = parts as [string, string];
    let ok = false;
    try {
      ok = verify(null, Buffer.from(SIGNED + body), this.publicKey, Buffer.from(sig, 'base64url'));
    } catch {
      ok = false;
    }
    if (!ok) throw new KuraError('E_TICKET_INVALID', 'the operator ticket was not signed by this vault (forged, altered, or issued by another vault): sign in again with kura login');
    const ticket = decodeTicket(token);
    if (ticket.vault !== this.id) throw new KuraError('E_TICKET_INVALID', 'the operator ticket was issued by another vault: sign in at this one with kura login');
    if (now >= ticket.expires) throw new KuraError('E_TICKET_EXPIRED', `the operator ticket expired at ${new Date(ticket.expires).toISOString()}: sign in again with kura login`, { expires: ticket.expires });
    if (revoked(ticket.id)) throw new KuraError('E_TICKET_REVOKED', 'the operator ticket was ended by a logout: sign in again with kura login');
    return ticket;
  }
}

/** The payload of a token, unverified (for the operator's own display: kura login --show). */
export function decodeTicket(token: string): OperatorTicket {
  const body = typeof token === 'string' && token.startsWith(PREFIX) ? token.slice(PREFIX.length).split('.')[0] : undefined;
  let t: OperatorTicket | null = null;
  try {
    t = JSON.parse(Buffer.from(body ?? '', 'base64url').toString('utf8')) as OperatorTicket;
  } catch {
    t = null;
  }
  if (
    !t || t.v !== 1 || typeof t.id !== 'string' || typeof t.vault !== 'string' || typeof t.subject !== 'string' || typeof t.provider !== 'string' ||
    typeof t.tenants !== 'object' || t.tenants === null || typeof t.systemAdmin !== 'boolean' || typeof t.authTime !== 'number' ||
    typeof t.issued !== 'number' || typeof t.expires !== 'number'
  ) {
    throw new KuraError('E_TICKET_INVALID', 'the operator ticket is malformed: sign in again with kura login');
  }
  return t;
}

/**
 * Tickets ended by a logout before their expiry (`<vault.root>/tickets-revoked.jsonl`, one
 * `{id, expires}` line each, fsynced). Entries are forgotten once the ticket would have expired.
 */
export class TicketRevocations {
  private readonly ids = new Map<string, number>();

  constructor(private readonly file: string) {
    if (!existsSync(file)) return;
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      try {
        const e = JSON.parse(line) as { id?: unknown; expires?: unknown };
        if (typeof e.id === 'string' && typeof e.expires === 'number') this.ids.set(e.id, e.expires);
      } catch {
        // a torn last line (crash while appending): that logout is lost with it; the ticket still expires
      }
    }
    const now = Date.now();
    const live = [...this.ids].filter(([, expires]) => expires > now);
    if (live.length < this.ids.size) {
      this.ids.clear();
      for (const [id, expires] of live) this.ids.set(id, expires);
      const tmp = `${file}.tmp`;
      writeFileSync(tmp, live.map(([id, expires]) => JSON.stringify({ id, expires }) + '\n').join(''), { mode: 0o600 });
      const fd = openSync(tmp, 'r');
      fsyncSync(fd);
      closeSync(fd);
      renameSync(tmp, file);
    }
  }

  has = (id: string): boolean => this.ids.has(id);

  revoke(id: string, expires: number): void {
    if (this.ids.has(id)) return;
    mkdirSync(path.dirname(this.file), { recursive: true });
    appendFileSync(this.file, JSON.stringify({ id, expires }) + '\n', { mode: 0o600 });
    const fd = openSync(this.file, 'r');
    fsyncSync(fd);
    closeSync(fd);
    this.ids.set(id, expires);
  }
}
