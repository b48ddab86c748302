import type { OperatorTicket, TenantRole } from './ticket.js';

/**
 * Who a signed-in person may be, from what their identity provider asserted: pure functions,
 * no I/O (table tests in test/sso-policy.test.ts).
 *
 * - A claim rule matches when the identity's claim (an OIDC claim such as `groups`, a SAML
 *   attribute) equals the rule's value or, for a list, contains it; a rule naming a provider
 *   matches only identities from that provider.
 * - Per tenant the strongest matching role wins (tenant-admin over restore). A tenant whose
 *   `minLevel` the sign-in does not reach is not granted, and the reason is kept for the audit.
 * - `systemAdmin` is for the vault itself and never implies a tenant role.
 */
export interface ClaimMatch {
  provider?: string | undefined;
  claim: string;
  value: string;
}

export interface OperatorRule extends ClaimMatch {
  role: TenantRole;
}

export interface SsoPolicy {
  /** authentication levels (acr values), weakest first; an acr not listed ranks below all of them */
  levels: readonly string[];
  tenants: Readonly<Record<string, { operators: readonly OperatorRule[]; minLevel?: string | undefined }>>;
  systemAdmins: readonly ClaimMatch[];
}

export interface Identity {
  provider: string;
  /** SAML persistent NameID or OIDC (pairwise) `sub` */
  subject: string;
  claims: Readonly<Record<string, unknown>>;
  acr: string | null;
  /** ms since the epoch */
  authTime: number;
  display?: Record<string, string>;
}

export interface Grants {
  tenants: Record<string, TenantRole>;
  systemAdmin: boolean;
  /** tenants a rule matched but the sign-in's level was too low for: tenant → reason */
  refused: Record<string, string>;
}

const ROLE_RANK: Record<TenantRole, number> = { restore: 1, 'tenant-admin': 2 };

export function claimMatches(identity: Identity, m: ClaimMatch): boolean {
  if (m.provider !== undefined && m.provider !== identity.provider) return false;
  const v = identity.claims[m.claim];
  if (Array.isArray(v)) return v.some((x) => String(x) === m.value);
  return v !== undefined && v !== null && String(v) === m.value;
}

/** Rank of an acr in `levels` (0 for none or unknown, 1 for the weakest listed, …). */
export function levelRank(acr: string | null, levels: readonly string[]): number {
  return acr === null ? 0 : levels.indexOf(acr) + 1;
}

export function levelAtLeast(acr: string | null, min: string, levels: readonly string[]): boolean {
  const need = levelRank(min, levels);
  return need === 0 ? acr === min : levelRank(acr, levels) >= need;
}

export function grantsOf(identity: Identity, policy: SsoPolicy): Grants {
  const tenants: Record<string, TenantRole> = {};
  const refused: Record<string, string> = {};
  for (const [tenant, t] of Object.entries(policy.tenants)) {
    let best: TenantRole | null = null;
    for (const rule of t.operators) {
      if (claimMatches(identity, rule) && (best === null || ROLE_RANK[rule.role] > ROLE_RANK[best])) best = rule.role;
    }
    if (best === null) continue;
    if (t.minLevel !== undefined && !levelAtLeast(identity.acr, t.minLevel, policy.levels)) {
      refused[tenant] = `tenant ${tenant} needs sign-in level ${t.minLevel}; provider ${identity.provider} asserted ${identity.acr ?? 'none'}`;
      continue;
    }
    tenants[tenant] = best;
  }
  return { tenants, systemAdmin: policy.systemAdmins.some((m) => claimMatches(identity, m)), refused };
}

export interface Sensitive {
  /** the level a sensitive operation needs (an acr of `levels`); none: any level */
  acr?: string | undefined;
  /** how recent the authentication must be, in ms */
  maxAge: number;
}

/**
 * Whether a ticket's sign-in is strong and recent enough for a sensitive operation (restore,
 * delete, prune, unprotect, key operations); if not, the reason, for an E_STEP_UP refusal that
 * tells the person to run `kura login --step-up`.
 */
export function stepUpNeeded(ticket: Pick<OperatorTicket, 'acr' | 'authTime'>, sensitive: Sensitive, levels: readonly string[], now: number): string | null {
  if (sensitive.acr !== undefined && !levelAtLeast(ticket.acr, sensitive.acr, levels)) {
    return `this operation needs sign-in level ${sensitive.acr}; the ticket has ${ticket.acr ?? 'none'}`;
  }
  const age = now - ticket.authTime;
  if (age > sensitive.maxAge) return `this operation needs a sign-in within the last ${Math.round(sensitive.maxAge / 60_000)} min; the last was ${Math.round(age / 60_000)} min ago`;
  return null;
}
