import { test } from 'node:test';
import assert from 'node:assert/strict';
import { authorize, keyBlobOf, SYSTEM_USER } from '../src/vault/access.js';
import { keyRefusal, operatorRefusal, type Person, type SsoRules } from '../src/vault/rights.js';
import type { OperatorTicket } from '../src/sso/ticket.js';
import type { FrameRight, Role } from '../src/vault/access.js';

const PWD = 'urn:kura:pwd';
const MFA = 'urn:kura:mfa';
const NOW = 1_800_000_000_000;
const MIN = 60_000;
const sso: SsoRules = { required: false, levels: [PWD, MFA], sensitive: { acr: MFA, maxAge: 15 * MIN } };
const required: SsoRules = { ...sso, required: true };
const ticket = (acr: string | null, ageMin: number): OperatorTicket => ({
  v: 1, id: 't1', vault: 'v', subject: 'pairwise-1', provider: 'idp', tenants: { 'city-a': 'tenant-admin' }, systemAdmin: false, acr, authTime: NOW - ageMin * MIN, issued: NOW - ageMin * MIN, expires: NOW + 60 * MIN,
});
const person = (role: Person['role'], acr: string | null = MFA, ageMin = 1): Person => ({ ticket: ticket(acr, ageMin), role });

test('keyRefusal: the SSH key\'s role; a system session reaches no tenant frame and a tenant key no system frame (table)', () => {
  const table: Array<[Role, FrameRight, string | null]> = [
    ['backup', 'backup', null],
    ['backup', 'restore', 'E_FORBIDDEN'],
    ['restore', 'restore', null],
    ['tenant-admin', 'tenant-admin', null],
    ['tenant-admin', 'restore', null],
    ['tenant-admin', 'system-admin', 'E_FORBIDDEN'],
    ['system-admin', 'system-admin', null],
    ['system-admin', 'any', null],
    ['system-admin', 'tenant', 'E_FORBIDDEN'],
    ['backup', 'tenant', null],
    ['system-admin', 'restore', 'E_FORBIDDEN'],
    ['system-admin', 'tenant-admin', 'E_FORBIDDEN'],
    ['system-admin', 'backup', 'E_FORBIDDEN'],
  ];
  for (const [role, right, code] of table) assert.equal(keyRefusal(role, 'city-a', { name: 'X', right })?.code ?? null, code, `${role} for ${right}`);
});

test('operatorRefusal: both roles, sso.required, step-up (table)', () => {
  type Row = [string, Role, Person | null, SsoRules | null, FrameRight, boolean, boolean, string | null];
  const table: Row[] = [
    // without a ticket
    ['bare key, no vault.sso: restore as before', 'restore', null, null, 'restore', true, false, null],
    ['bare key, sso not required', 'restore', null, sso, 'restore', true, false, null],
    ['bare key, sso required: restore refused', 'restore', null, required, 'restore', true, false, 'E_SSO_REQUIRED'],
    ['bare key, sso required: PROTECT refused', 'tenant-admin', null, required, 'tenant-admin', false, false, 'E_SSO_REQUIRED'],
    ['bare key, sso required: USAGE refused', 'system-admin', null, required, 'system-admin', false, false, 'E_SSO_REQUIRED'],
    ['bare key, sso required: a relay still sends', 'backup', null, required, 'backup', false, false, null],
    ['bare key, sso required: LIST still answered', 'backup', null, required, 'any', false, false, null],
    // both roles must allow
    ['restore person, tenant-admin key: no PRUNE', 'tenant-admin', person('restore'), sso, 'tenant-admin', false, false, 'E_FORBIDDEN'],
    ['restore person, tenant-admin key: restore', 'tenant-admin', person('restore'), sso, 'restore', true, false, null],
    ['restore person on a backup key: no sending as that person', 'backup', person('restore'), sso, 'backup', false, false, 'E_FORBIDDEN'],
    ['tenant-admin person: PRUNE dry run', 'tenant-admin', person('tenant-admin', PWD), required, 'tenant-admin', false, false, null],
    ['system-admin person: USAGE', 'system-admin', person('system-admin', PWD), required, 'system-admin', false, false, null],
    ['system-admin person: no restore', 'system-admin', person('system-admin'), required, 'restore', true, false, 'E_FORBIDDEN'],
    // step-up
    ['sensitive with mfa 1 min ago', 'tenant-admin', person('tenant-admin', MFA, 1), sso, 'tenant-admin', true, false, null],
    ['sensitive with a password only', 'tenant-admin', person('tenant-admin', PWD, 1), sso, 'tenant-admin', true, false, 'E_STEP_UP'],
    ['sensitive with no acr', 'tenant-admin', person('tenant-admin', null, 1), sso, 'tenant-admin', true, false, 'E_STEP_UP'],
    ['sensitive with mfa 20 min ago', 'tenant-admin', person('tenant-admin', MFA, 20), sso, 'tenant-admin', true, false, 'E_STEP_UP'],
    ['not sensitive with mfa 20 min ago', 'tenant-admin', person('tenant-admin', MFA, 20), sso, 'tenant-admin', false, false, null],
    ['a ticket that expired during the session', 'tenant-admin', { ...person('tenant-admin'), ticket: { ...ticket(MFA, 1), expires: NOW } }, sso, 'any', false, false, 'E_TICKET_EXPIRED'],
  ];
  for (const [what, keyRole, p, rules, right, sensitive, steppedUp, code] of table) {
    const r = operatorRefusal({ keyRole, tenant: 'city-a', person: p, sso: rules, now: NOW, steppedUp }, { name: 'X', right, sensitive });
    assert.equal(r?.code ?? null, code, what);
    if (code === 'E_STEP_UP') assert.match(r!.message, /kura login --from ROUTE --step-up/, what);
    if (code === 'E_SSO_REQUIRED') assert.match(r!.message, /kura login --from ROUTE/, what);
  }
  // a restore that passed the check goes on reading its chunks (continues), a new kind of act does not
  const aged = person('restore', MFA, 20);
  assert.equal(operatorRefusal({ keyRole: 'restore', tenant: 'city-a', person: aged, sso, now: NOW, steppedUp: true }, { name: 'GET_CHUNKS', right: 'restore', sensitive: true, continues: true }), null);
  assert.equal(operatorRefusal({ keyRole: 'restore', tenant: 'city-a', person: aged, sso, now: NOW, steppedUp: true }, { name: 'GET_SNAPSHOT', right: 'restore', sensitive: true })?.code, 'E_STEP_UP');
  assert.equal(operatorRefusal({ keyRole: 'restore', tenant: 'city-a', person: aged, sso, now: NOW, steppedUp: false }, { name: 'GET_CHUNKS', right: 'restore', sensitive: true, continues: true })?.code, 'E_STEP_UP');
});

test('authorize: the reserved user _system takes only vault.system.clients keys, from their networks', () => {
  const sysLine = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7x6Qm2c3lzdGVta2V5c3lzdGVta2V5c3lzdGVtaw== ops';
  const tenantLine = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlbmFudGtleXRlbmFudGtleXRlbmFudGtleXRlbg== a';
  const k = (line: string) => keyBlobOf(line)!;
  const tenants = { 'city-a': { clients: [{ key: tenantLine, role: 'tenant-admin' as const, networks: ['127.0.0.0/8'] }] } };
  const system = { clients: [{ key: sysLine, networks: ['127.0.0.0/8'] }] };
  const at = (line: string, username: string, ip = '127.0.0.1') => authorize({ username, keyAlgo: k(line).algo, keyData: k(line).data, ip }, tenants, system);
  const ok = at(sysLine, SYSTEM_USER);
  assert.ok(ok.ok && ok.role === 'system-admin' && ok.tenant === SYSTEM_USER);
  assert.equal(at(tenantLine, SYSTEM_USER).ok, false, 'a tenant key is no system key');
  assert.equal(at(sysLine, 'city-a').ok, false, 'a system key is no tenant key');
  assert.equal(at(sysLine, SYSTEM_USER, '10.0.0.1').ok, false, 'outside its networks');
});
