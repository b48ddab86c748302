import { statSync } from 'node:fs';
import path from 'node:path';
import { KuraError } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import type { VaultConfig } from '../config/schema.js';
import { levelAtLeast } from '../sso/roles.js';
import { TicketKey, TicketRevocations } from '../sso/ticket.js';
import { SYSTEM_USER } from './access.js';
import type { Person, SsoRules } from './rights.js';

/** Where a vault keeps its ticket key and its list of tickets ended by a logout. */
export function ticketKeyFile(cfg: VaultConfig): string {
  return cfg.sso?.ticketKey ?? path.join(cfg.root, 'ticket_key');
}

export function revocationsFile(cfg: VaultConfig): string {
  return path.join(cfg.root, 'tickets-revoked.jsonl');
}

/**
 * The vault's side of operator tickets (vault.sso): its ticket key and revocation list, loaded
 * once per vault process, and what a ticket presented in AUTH makes of a session.
 */
export class OperatorAuthority {
  readonly key: TicketKey;
  private list: TicketRevocations;
  /** size and mtime of the revocation file when last read */
  private seen: string;
  readonly rules: SsoRules;

  private constructor(private readonly cfg: VaultConfig) {
    const sso = cfg.sso!;
    this.key = TicketKey.loadOrCreate(ticketKeyFile(cfg));
    this.list = new TicketRevocations(revocationsFile(cfg));
    this.seen = this.stamp();
    this.rules = { required: sso.required, levels: sso.levels, sensitive: { acr: sso.sensitive.acr, maxAge: parseDuration(sso.sensitive.maxAge)! } };
  }

  private stamp(): string {
    try {
      const st = statSync(revocationsFile(this.cfg));
      return `${st.size}:${st.mtimeMs}`;
    } catch {
      return 'none';
    }
  }

  /**
   * The tickets ended by a logout: read again when the file changed, so that a logout served by
   * another vault process (kura vault stdio next to kura vault serve) holds here too.
   */
  get revocations(): TicketRevocations {
    const now = this.stamp();
    if (now !== this.seen) {
      this.list = new TicketRevocations(revocationsFile(this.cfg));
      this.seen = this.stamp();
    }
    return this.list;
  }

  /** The vault's authority, or null when it has no vault.sso (it then knows SSH keys only). */
  static of(cfg: VaultConfig): OperatorAuthority | null {
    return cfg.sso ? new OperatorAuthority(cfg) : null;
  }

  /**
   * The person a ticket names, acting on a session of `tenant` (SYSTEM_USER: a system
   * session): the ticket must be this vault's, unexpired, not logged out, and grant that
   * tenant (or system administration), at the tenant's minimum sign-in level.
   */
  admit(token: string, tenant: string, now: number): Person {
    const ticket = this.key.verify(token, now, this.revocations.has);
    const who = `${ticket.subject} (${ticket.provider})`;
    if (tenant === SYSTEM_USER) {
      if (!ticket.systemAdmin) throw new KuraError('E_FORBIDDEN', `the ticket of ${who} does not make them system administrator of this vault (vault.sso.systemAdmins)`);
      return { ticket, role: 'system-admin' };
    }
    const role = ticket.tenants[tenant];
    if (role !== 'restore' && role !== 'tenant-admin') {
      const theirs = Object.keys(ticket.tenants);
      throw new KuraError('E_FORBIDDEN', `the ticket of ${who} grants no role on tenant ${tenant}${theirs.length > 0 ? ` (only on ${theirs.join(', ')})` : ''}: one tenant's operator never acts on another's`);
    }
    const min = this.cfg.tenants[tenant]?.minLevel;
    if (min !== undefined && !levelAtLeast(ticket.acr, min, this.rules.levels)) {
      throw new KuraError('E_STEP_UP', `tenant ${tenant} needs sign-in level ${min}; the ticket of ${who} has ${ticket.acr ?? 'none'}: run kura login --from ROUTE --step-up with a provider that reaches it`);
    }
    return { ticket, role };
  }
}

/** The fields an audit line names a person by. */
export function operatorFields(p: Person | null): Record<string, unknown> {
  if (p === null) return {};
  const t = p.ticket;
  return { operator: { subject: t.subject, provider: t.provider, ...(t.display ? { display: t.display } : {}), ticket: t.id, role: p.role } };
}
