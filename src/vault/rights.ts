import type { ErrorCode } from '../errors.js';
import { stepUpNeeded, type Sensitive } from '../sso/roles.js';
import type { OperatorTicket, TenantRole } from '../sso/ticket.js';
import { roleMay, type FrameRight, type Role } from './access.js';

/**
 * Whether a session may send a frame: pure functions, no I/O (table tests in
 * test/vault-rights.test.ts). The session loop asks them in one place for every frame.
 *
 * - The SSH key's role must allow the frame (keyRefusal): the key says which machine.
 * - With an operator ticket (AUTH), the person's role on the session's tenant must allow it
 *   too: a frame passes only when both do.
 * - Without a ticket, `vault.sso.required` refuses operator frames (those whose right is
 *   restore, tenant-admin or system-admin): E_SSO_REQUIRED. Backup frames and frames any role
 *   may send (LIST, STATS, ...) keep working with keys alone: relays are machines.
 * - A ticket that expires while its session is open is refused from then on (E_TICKET_EXPIRED).
 * - A sensitive frame (restore reads, DELETE, PRUNE applied, PROTECT lifting a hold) needs a
 *   ticket whose sign-in is strong and recent enough (vault.sso.sensitive): E_STEP_UP. A frame
 *   that `continues` (GET_CHUNKS) passes in a session that already passed that check, so a
 *   restore longer than sensitive.maxAge is not cut off half way.
 */
export type PersonRole = TenantRole | 'system-admin';

export interface Person {
  ticket: OperatorTicket;
  role: PersonRole;
}

export interface SsoRules {
  required: boolean;
  sensitive: Sensitive;
  levels: readonly string[];
}

export interface RightsInput {
  keyRole: Role;
  tenant: string;
  person: Person | null;
  /** vault.sso, or null when the vault has none */
  sso: SsoRules | null;
  now: number;
  /** this session passed a step-up check already */
  steppedUp: boolean;
}

export interface FrameAsk {
  name: string;
  right: FrameRight;
  sensitive: boolean;
  continues?: boolean | undefined;
}

export interface Refusal {
  code: Extract<ErrorCode, 'E_FORBIDDEN' | 'E_SSO_REQUIRED' | 'E_STEP_UP' | 'E_TICKET_EXPIRED'>;
  message: string;
}

/** Frames that are a person's act (restore, administration): all but backup frames and those any role may send. */
export const isOperatorFrame = (right: FrameRight): boolean => right !== 'any' && right !== 'tenant' && right !== 'backup';

export function keyRefusal(keyRole: Role, tenant: string, f: Pick<FrameAsk, 'name' | 'right'>): Refusal | null {
  if (roleMay(keyRole, f.right)) return null;
  if (keyRole === 'system-admin') return { code: 'E_FORBIDDEN', message: `a system session may not ${f.name}: a system administrator acts on the vault (USAGE), never on a tenant's snapshots or chunks` };
  if (f.right === 'system-admin') return { code: 'E_FORBIDDEN', message: `${f.name} is a system administrator's frame: open a system session (SSH user _system, a key of vault.system.clients)` };
  return { code: 'E_FORBIDDEN', message: `role ${keyRole} of tenant ${tenant} may not ${f.name}; use a key registered with a role that may (restore or tenant-admin to read, backup or tenant-admin to send)` };
}

export function personOf(p: Person): string {
  return `${p.ticket.subject} (${p.ticket.provider})`;
}

export function operatorRefusal(a: RightsInput, f: FrameAsk): Refusal | null {
  if (a.person === null) {
    if (a.sso?.required && isOperatorFrame(f.right)) {
      return { code: 'E_SSO_REQUIRED', message: `${f.name} on this vault needs a signed-in operator (vault.sso.required), not an SSH key alone: run kura login --from ROUTE, then repeat the command` };
    }
    return null;
  }
  // a ticket that expires while its session is open ends there (a restore under way reads on)
  if (a.now >= a.person.ticket.expires && !(f.continues && a.steppedUp)) {
    return { code: 'E_TICKET_EXPIRED', message: `the operator ticket of ${personOf(a.person)} expired at ${new Date(a.person.ticket.expires).toISOString()}: sign in again with kura login --from ROUTE` };
  }
  if (!roleMay(a.person.role, f.right)) {
    const where = a.person.role === 'system-admin' ? 'system administrator of the vault' : `${a.person.role} of tenant ${a.tenant}`;
    return { code: 'E_FORBIDDEN', message: `${personOf(a.person)} is ${where} and may not ${f.name}: both the SSH key's role and the person's must allow it` };
  }
  if (f.sensitive && !(f.continues && a.steppedUp) && a.sso !== null) {
    const why = stepUpNeeded(a.person.ticket, a.sso.sensitive, a.sso.levels, a.now);
    if (why !== null) return { code: 'E_STEP_UP', message: `${f.name} is a sensitive operation: ${why}. Run kura login --from ROUTE --step-up, then repeat the command` };
  }
  return null;
}
