import { KuraError, isKuraError } from '../../errors.js';
import { Frame } from '../../protocol/frames.js';
import { decodeTicket } from '../../sso/ticket.js';
import { SYSTEM_USER } from '../access.js';
import type { VaultSession } from '../session.js';

/**
 * AUTH: the person acting on this session, by an operator ticket this vault signed (kura login).
 * The SSH key still says which machine; from now on every frame must be allowed by both the
 * key's role and the person's role on the session's tenant, and audit lines name the person.
 */
export async function auth(s: VaultSession, b: { ticket: string }): Promise<void> {
  const operators = s.ctx.vault?.operators ?? null;
  try {
    if (!operators) throw new KuraError('E_FORBIDDEN', 'this vault has no vault.sso: it takes no operator tickets (use an SSH key with the role you need)');
    if (s.person) throw new KuraError('E_PROTOCOL', `this session already acts for ${s.person.ticket.subject} (${s.person.ticket.provider}): open a new session for another ticket`);
    s.person = operators.admit(b.ticket, s.ctx.tenant, Date.now());
  } catch (e) {
    // who the refused ticket claims to be (unverified: it may be forged), for the investigation
    let claimed: Record<string, unknown> = {};
    try {
      const t = decodeTicket(b.ticket);
      claimed = { claimed: { subject: t.subject, provider: t.provider, ticket: t.id, vault: t.vault } };
    } catch {
      // not even a ticket's shape
    }
    const code = isKuraError(e) ? e.code : 'E_INTERNAL';
    s.audit({ event: 'operator-auth', outcome: 'refused', code, reason: (e as Error).message, ...s.ctx.peer, ...claimed });
    throw e;
  }
  const t = s.person.ticket;
  s.audit({ event: 'operator-auth', acr: t.acr, authTime: new Date(t.authTime).toISOString(), expires: new Date(t.expires).toISOString(), ...s.ctx.peer });
  return s.send(Frame.AUTH_OK, { subject: t.subject, provider: t.provider, role: s.person.role, systemAdmin: s.ctx.tenant === SYSTEM_USER, expires: t.expires });
}

/** LOGOUT: end the session's ticket (revoked until it would have expired, in every session). */
export async function logout(s: VaultSession): Promise<void> {
  const operators = s.ctx.vault?.operators ?? null;
  if (!s.person || !operators) throw new KuraError('E_TICKET_MISSING', 'LOGOUT on a session without an operator ticket: send AUTH first (kura logout --from ROUTE does)');
  const t = s.person.ticket;
  operators.revocations.revoke(t.id, t.expires);
  s.audit({ event: 'logout' });
  s.person = null;
  s.steppedUp = false;
  return s.send(Frame.LOGGED_OUT, { id: t.id });
}
