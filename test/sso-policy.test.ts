import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { grantsOf, levelAtLeast, stepUpNeeded, type Identity, type SsoPolicy } from '../src/sso/roles.js';
import { TicketKey, TicketRevocations } from '../src/sso/ticket.js';
import { loadTicket, saveTicket } from '../src/sso/ticket-file.js';
import { isKuraError } from '../src/errors.js';

const MFA = 'urn:kura:mfa';
const PWD = 'urn:kura:pwd';
const policy: SsoPolicy = {
  levels: [PWD, MFA],
  tenants: {
    'city-a': { operators: [{ claim: 'groups', value: 'a-restore', role: 'restore' }, { claim: 'groups', value: 'a-admins', role: 'tenant-admin' }] },
    'city-b': { operators: [{ provider: 'pref-saml', claim: 'role', value: 'b-admin', role: 'tenant-admin' }], minLevel: MFA },
  },
  systemAdmins: [{ claim: 'groups', value: 'vault-ops' }],
};
const who = (provider: string, claims: Record<string, unknown>, acr: string | null = PWD): Identity => ({ provider, subject: 'pairwise-123', claims, acr, authTime: 0 });

test('grantsOf: roles per tenant from claims (table)', () => {
  const table: Array<[string, Identity, Record<string, string>, boolean, string[]]> = [
    ['no matching claim', who('oidc', { groups: ['other'] }), {}, false, []],
    ['restore of city-a by a group in a list', who('oidc', { groups: ['x', 'a-restore'] }), { 'city-a': 'restore' }, false, []],
    ['the strongest role wins', who('oidc', { groups: ['a-restore', 'a-admins'] }), { 'city-a': 'tenant-admin' }, false, []],
    ['a single-valued claim', who('oidc', { groups: 'a-admins' }), { 'city-a': 'tenant-admin' }, false, []],
    ['a rule naming another provider does not match', who('oidc', { role: 'b-admin' }, MFA), {}, false, []],
    ['city-b with mfa from its provider', who('pref-saml', { role: ['b-admin'] }, MFA), { 'city-b': 'tenant-admin' }, false, []],
    ['city-b below its minimum level is refused', who('pref-saml', { role: ['b-admin'] }, PWD), {}, false, ['city-b']],
    ['an unknown acr ranks below all levels', who('pref-saml', { role: ['b-admin'] }, 'urn:other'), {}, false, ['city-b']],
    ['system admin is no tenant role', who('oidc', { groups: ['vault-ops'] }), {}, true, []],
  ];
  for (const [name, identity, tenants, systemAdmin, refused] of table) {
    const g = grantsOf(identity, policy);
    assert.deepEqual(g.tenants, tenants, name);
    assert.equal(g.systemAdmin, systemAdmin, name);
    assert.deepEqual(Object.keys(g.refused), refused, name);
  }
});

test('stepUpNeeded: level and age (table)', () => {
  const now = 100 * 60_000;
  const sensitive = { acr: MFA, maxAge: 15 * 60_000 };
  const table: Array<[string, string | null, number, boolean]> = [
    ['mfa, fresh', MFA, now - 60_000, false],
    ['mfa, exactly at the limit', MFA, now - 15 * 60_000, false],
    ['mfa, too old', MFA, now - 16 * 60_000, true],
    ['password only', PWD, now, true],
    ['no acr', null, now, true],
  ];
  for (const [name, acr, authTime, needed] of table) assert.equal(stepUpNeeded({ acr, authTime }, sensitive, policy.levels, now) !== null, needed, name);
  assert.equal(stepUpNeeded({ acr: null, authTime: now }, { maxAge: 60_000 }, [], now), null, 'no level asked: any sign-in');
  assert.equal(levelAtLeast('custom', 'custom', []), true, 'a level outside the list matches itself only');
});

test('tickets: issued, verified, refused when forged, expired, from another vault or revoked', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kura-ticket-'));
  try {
    const key = TicketKey.loadOrCreate(path.join(dir, 'ticket_key'));
    assert.equal(statSync(path.join(dir, 'ticket_key')).mode & 0o777, 0o600);
    assert.equal(TicketKey.loadOrCreate(path.join(dir, 'ticket_key')).id, key.id, 'the key is kept');
    const { token, ticket } = key.issue({ subject: 's', provider: 'oidc', tenants: { 'city-a': 'restore' }, systemAdmin: false, acr: MFA, authTime: 1000, issued: 1000, expires: 5000 });
    assert.deepEqual(key.verify(token, 2000), ticket);
    const codeOf = (f: () => unknown): string => {
      try {
        f();
      } catch (e) {
        return isKuraError(e) ? e.code : 'not coded';
      }
      return 'accepted';
    };
    const [body, sig] = token.slice(4).split('.') as [string, string];
    const altered = Buffer.from(JSON.stringify({ ...ticket, tenants: { 'city-b': 'tenant-admin' } })).toString('base64url');
    assert.equal(codeOf(() => key.verify(`kt1.${altered}.${sig}`, 2000)), 'E_TICKET_INVALID', 'altered payload');
    assert.equal(codeOf(() => key.verify(`kt1.${body}`, 2000)), 'E_TICKET_INVALID', 'no signature');
    assert.equal(codeOf(() => key.verify('garbage', 2000)), 'E_TICKET_INVALID', 'not a ticket');
    const other = TicketKey.fromSeed(Buffer.alloc(32, 7));
    assert.equal(codeOf(() => other.verify(token, 2000)), 'E_TICKET_INVALID', 'another vault');
    assert.equal(codeOf(() => key.verify(token, 5000)), 'E_TICKET_EXPIRED');
    const rev = new TicketRevocations(path.join(dir, 'revoked.jsonl'));
    rev.revoke(ticket.id, Date.now() + 60_000);
    rev.revoke('old', Date.now() - 1);
    assert.equal(codeOf(() => key.verify(token, 2000, new TicketRevocations(path.join(dir, 'revoked.jsonl')).has)), 'E_TICKET_REVOKED', 'revocation survives a restart');
    assert.doesNotMatch(readFileSync(path.join(dir, 'revoked.jsonl'), 'utf8'), /"old"/, 'expired revocations are forgotten');

    const env = { KURA_CONFIG_DIR: path.join(dir, 'cfg') };
    saveTicket('dc-b', token, env);
    assert.equal(statSync(path.join(dir, 'cfg', 'tickets', 'dc-b.json')).mode & 0o777, 0o600);
    assert.equal(statSync(path.join(dir, 'cfg', 'tickets')).mode & 0o777, 0o700);
    assert.equal(loadTicket('dc-b', env)?.ticket.id, ticket.id);
    assert.equal(loadTicket('dc-a', env), null);
    writeFileSync(path.join(dir, 'cfg', 'tickets', 'dc-c.json'), '{');
    assert.equal(codeOf(() => loadTicket('dc-c', env)), 'E_TICKET_INVALID');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
