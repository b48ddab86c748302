import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { kura, kuraJson, kuraOk, tempDir, type RunResult } from './support/cli.js';
import { agentConfig, sshKey, startVault, vaultSession, type SshKey, type VaultProcess } from './support/vault.js';
import { Frame, jsonOf } from '../src/protocol/frames.js';
import { TicketKey, type OperatorTicket } from '../src/sso/ticket.js';
import { saveTicket } from '../src/sso/ticket-file.js';
import type { KuraError } from '../src/errors.js';

/**
 * The authorization half of single sign-on, on a real vault process over real SSH: operator
 * tickets are minted from the vault's own ticket key file (what a sign-in issues with); the
 * sign-in itself (identity providers, browser) has its own tests.
 */
const PWD = 'urn:kura:pwd';
const MFA = 'urn:kura:mfa';
const HOUR = 3600_000;

interface World {
  dir: string;
  vault: VaultProcess;
  key: TicketKey;
  relayA: SshKey;
  adminA: SshKey;
  adminB: SshKey;
  sys: SshKey;
  cfg: string;
  /** the environment of an operator whose tickets live in `tickets` */
  env(tickets: string): Record<string, string>;
  mint(over?: Partial<OperatorTicket>): string;
  snapshots: string[];
}

async function world(t: { after: (fn: () => unknown) => void }): Promise<World> {
  const dir = tempDir(t);
  const relayA = sshKey(dir, 'relay-a');
  const adminA = sshKey(dir, 'admin-a');
  const adminB = sshKey(dir, 'admin-b');
  const sys = sshKey(dir, 'sys');
  const vault = await startVault(
    dir,
    `    city-a:\n      clients:\n        - key: ${relayA.public}\n        - key: ${adminA.public}\n          role: tenant-admin\n      retention: { keepLast: 1 }\n` +
      `    city-b:\n      clients:\n        - key: ${adminB.public}\n          role: tenant-admin\n      retention: { keepLast: 1 }\n`,
    `  sso:\n    listen: { host: 127.0.0.1, port: 0 }\n    required: true\n    levels: ['${PWD}', '${MFA}']\n    sensitive: { acr: '${MFA}', maxAge: 15m }\n  system:\n    clients:\n      - key: ${sys.public}\n`,
    // the tickets here are minted from the vault's key; the provider is never asked
    `modules:\n  sso:\n    - { type: oidc, name: corp-oidc, issuer: "http://127.0.0.1:9/", clientId: kura-vault }\n`,
  );
  t.after(() => vault.stop());
  const key = TicketKey.loadOrCreate(path.join(vault.root, 'ticket_key'));
  const cfg = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: relayA.private });
  const env = (tickets: string) => ({ KURA_CONFIG: cfg, KURA_CONFIG_DIR: path.join(dir, tickets) });
  // the relay (a machine) sends with its key alone although the vault requires sign-in for operators
  kuraOk(['repo', 'init'], { env: env('nobody') });
  const snapshots: string[] = [];
  for (const night of [1, 2]) {
    const f = path.join(dir, `juki-${night}.sql`);
    writeFileSync(f, randomBytes(200_000));
    snapshots.push(kuraJson<{ id: string }>(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { env: env('nobody') }).id);
  }
  kuraOk(['relay', 'once'], { env: env('nobody') });
  const mint = (over: Partial<OperatorTicket> = {}) => {
    const now = Date.now();
    return key.issue({ subject: 'pairwise-7f3a', provider: 'corp-oidc', display: { name: 'Aiko Tanaka' }, tenants: { 'city-a': 'tenant-admin' }, systemAdmin: false, acr: MFA, authTime: now, issued: now, expires: now + 8 * HOUR, ...over }).token;
  };
  return { dir, vault, key, relayA, adminA, adminB, sys, cfg, env, mint, snapshots };
}

/** An operator's ticket directory holding `token` for route peer-dc. */
function loggedIn(w: World, name: string, token: string): Record<string, string> {
  const env = w.env(name);
  mkdirSync(env.KURA_CONFIG_DIR!, { recursive: true });
  saveTicket('peer-dc', token, { KURA_CONFIG_DIR: env.KURA_CONFIG_DIR });
  return env;
}

function refused(r: RunResult, code: string, what: string, message?: RegExp): void {
  assert.equal(r.status, 77, `${what}: exit 77 (${r.stderr})`);
  assert.match(r.stderr, new RegExp(code), what);
  if (message) assert.match(r.stderr, message, what);
}

async function authRefusal(w: World, token: string, keyFile: string, tenant = 'city-a'): Promise<KuraError> {
  const conn = await vaultSession(w.vault, keyFile, tenant);
  try {
    await conn.request(Frame.AUTH, { ticket: token }, Frame.AUTH_OK);
  } catch (e) {
    return e as KuraError;
  } finally {
    conn.close();
  }
  throw new Error('AUTH was accepted');
}

test('tickets forged, expired, for another tenant or replayed after logout: each a coded refusal and an audit line, and the vault keeps serving', async (t) => {
  const w = await world(t);
  const other = TicketKey.fromSeed(randomBytes(32));
  const now = Date.now();
  const forged = other.issue({ subject: 'mallory', provider: 'corp-oidc', tenants: { 'city-a': 'tenant-admin' }, systemAdmin: true, acr: MFA, authTime: now, issued: now, expires: now + HOUR }).token;
  const good = w.mint();
  const tampered = good.replace(/^kt1\.[^.]+/, `kt1.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(good.split('.')[1]!, 'base64url').toString()), systemAdmin: true })).toString('base64url')}`);
  const cases: Array<[string, string, string, string]> = [
    ['forged (signed by another key)', forged, 'E_TICKET_INVALID', 'mallory'],
    ['altered (systemAdmin set after signing)', tampered, 'E_TICKET_INVALID', 'pairwise-7f3a'],
    ['expired', w.mint({ authTime: now - 10 * HOUR, issued: now - 10 * HOUR, expires: now - HOUR }), 'E_TICKET_EXPIRED', 'pairwise-7f3a'],
    ['for another tenant', w.mint({ tenants: { 'city-b': 'tenant-admin' } }), 'E_FORBIDDEN', 'pairwise-7f3a'],
    ['garbage', 'kt1.bm90.aXQ', 'E_TICKET_INVALID', ''],
  ];
  for (const [what, token, code, claimed] of cases) {
    const e = await authRefusal(w, token, w.adminA.private);
    assert.equal(e.code, code, what);
    const line = w.vault.audit().filter((l) => l.event === 'operator-auth' && l.outcome === 'refused').at(-1)!;
    assert.equal(line.code, code, `${what}: audited`);
    if (claimed) assert.equal((line.claimed as { subject: string }).subject, claimed, `${what}: the audit line says who the ticket claims to be`);
    // the vault keeps serving
    const conn = await vaultSession(w.vault, w.relayA.private);
    assert.equal(jsonOf<unknown[]>(await conn.request(Frame.LIST, {}, Frame.LIST_REPLY)).length, 2, `${what}: the vault still serves`);
    conn.close();
  }

  // logged in: kura snapshots --from presents the ticket; kura logout ends it at the vault
  const env = loggedIn(w, 'aiko', good);
  kuraOk(['snapshots', '--from', 'peer-dc', '--identity', w.adminA.private], { env });
  const out = kuraOk(['logout', '--from', 'peer-dc', '--identity', w.adminA.private], { env }).out;
  assert.match(out, /pairwise-7f3a \(corp-oidc\) for route peer-dc ended at the vault; removed from this machine/);
  assert.match(kuraOk(['logout', '--from', 'peer-dc'], { env }).out, /no operator ticket saved/);
  const replay = await authRefusal(w, good, w.adminA.private);
  assert.equal(replay.code, 'E_TICKET_REVOKED', 'replayed after logout');
  const audit = w.vault.audit();
  const logout = audit.find((l) => l.event === 'logout')!;
  assert.equal((logout.operator as { subject: string }).subject, 'pairwise-7f3a');
  assert.equal(audit.filter((l) => l.event === 'operator-auth' && l.code === 'E_TICKET_REVOKED').length, 1);
  const conn = await vaultSession(w.vault, w.relayA.private);
  assert.equal(jsonOf<unknown[]>(await conn.request(Frame.LIST, {}, Frame.LIST_REPLY)).length, 2, 'the vault still serves');
  conn.close();
});

test('a tenant-admin of city-a prunes city-a remotely (dry run, step-up, apply), deletes and unprotects with the person audited, and is refused on city-b', async (t) => {
  const w = await world(t);
  const as = { identity: ['--identity', w.adminA.private] };
  // a password-only sign-in may look (dry run) but not apply
  const weak = loggedIn(w, 'weak', w.mint({ acr: PWD }));
  const dry = kuraJson<{ dryRun: boolean; removed: number; decisions: Array<{ id: string; keep: boolean }> }>(['prune', '--from', 'peer-dc', '--dry-run', ...as.identity], { env: weak });
  assert.equal(dry.dryRun, true);
  assert.equal(dry.removed, 1, 'keepLast 1 of 2: one would go');
  assert.equal(dry.decisions.find((d) => !d.keep)!.id, w.snapshots[0]);
  refused(kura(['prune', '--from', 'peer-dc', ...as.identity], { env: weak }), 'E_STEP_UP', 'prune with a password-only ticket', /kura login --from peer-dc --step-up/);
  // an mfa sign-in of an hour ago is too old (sensitive.maxAge 15m)
  const old = loggedIn(w, 'old', w.mint({ authTime: Date.now() - HOUR }));
  refused(kura(['prune', '--from', 'peer-dc', ...as.identity], { env: old }), 'E_STEP_UP', 'prune with an old ticket', /within the last 15 min/);
  refused(kura(['restore', '--from', 'peer-dc', w.snapshots[1]!, '--to', path.join(w.dir, 'r0'), ...as.identity], { env: old }), 'E_STEP_UP', 'restore with an old ticket');
  // after kura login --step-up: a fresh mfa ticket
  const fresh = loggedIn(w, 'fresh', w.mint());
  const applied = kuraJson<{ dryRun: boolean; removed: number }>(['prune', '--from', 'peer-dc', ...as.identity], { env: fresh });
  assert.equal(applied.removed, 1);
  const left = kuraJson<Array<{ id: string }>>(['snapshots', '--from', 'peer-dc', ...as.identity], { env: fresh });
  assert.deepEqual(left.map((s) => s.id), [w.snapshots[1]]);
  kuraOk(['restore', '--from', 'peer-dc', w.snapshots[1]!, '--to', path.join(w.dir, 'r1'), ...as.identity], { env: fresh });

  // protected: DELETE refused with a clear code; unprotect (sensitive) needs the step-up too
  kuraOk(['protect', '--from', 'peer-dc', w.snapshots[1]!, ...as.identity], { env: weak });
  refused(kura(['delete', '--from', 'peer-dc', w.snapshots[1]!.slice(0, 12), ...as.identity], { env: fresh }), 'E_SNAPSHOT_PROTECTED', 'delete of a protected snapshot', /lift the hold first/);
  refused(kura(['unprotect', '--from', 'peer-dc', w.snapshots[1]!, ...as.identity], { env: weak }), 'E_STEP_UP', 'unprotect with a password-only ticket');
  kuraOk(['unprotect', '--from', 'peer-dc', w.snapshots[1]!, ...as.identity], { env: fresh });
  assert.match(kuraOk(['delete', '--from', 'peer-dc', w.snapshots[1]!.slice(0, 12), ...as.identity], { env: fresh }).out, /deleted from the vault of route peer-dc/);
  assert.deepEqual(kuraJson<unknown[]>(['snapshots', '--from', 'peer-dc', ...as.identity], { env: fresh }), []);

  // city-a's tenant-admin on city-b: the ticket grants nothing there (with city-b's own key)
  const onB = kura(['prune', '--from', 'peer-dc', '--dry-run', '--tenant', 'city-b', '--identity', w.adminB.private], { env: fresh });
  refused(onB, 'E_FORBIDDEN', 'city-a ticket on city-b', /grants no role on tenant city-b \(only on city-a\)/);
  // and a restore-only person cannot prune even with a tenant-admin key
  const reader = loggedIn(w, 'reader', w.mint({ subject: 'pairwise-reader', tenants: { 'city-a': 'restore' } }));
  refused(kura(['prune', '--from', 'peer-dc', '--dry-run', ...as.identity], { env: reader }), 'E_FORBIDDEN', 'restore person, tenant-admin key', /both the SSH key's role and the person's/);

  // by hand on the vault host: audited with the OS user
  kuraOk(['vault', 'prune', '--config', w.vault.config, '--tenant', 'city-a']);
  kuraOk(['vault', 'gc', '--config', w.vault.config, '--tenant', 'city-a']);

  const audit = w.vault.audit();
  const acts = audit.filter((l) => ['prune', 'delete', 'protect', 'unprotect', 'get-snapshot'].includes(String(l.event)) && l.outcome === 'ok');
  for (const l of acts.filter((x) => x.by !== 'cli')) {
    const op = l.operator as { subject: string; provider: string; ticket: string; display?: { name: string } } | undefined;
    assert.ok(op, `${String(l.event)}: names the person`);
    assert.equal(op.provider, 'corp-oidc');
    assert.ok(op.ticket, `${String(l.event)}: with the ticket id`);
    assert.equal(op.display?.name, 'Aiko Tanaka');
  }
  assert.deepEqual(
    [...new Set(acts.filter((x) => x.by !== 'cli').map((l) => l.event))].sort(),
    ['delete', 'get-snapshot', 'protect', 'prune', 'unprotect'],
    'every kind of operator action was audited',
  );
  const byHand = audit.filter((l) => l.by === 'cli');
  assert.deepEqual(byHand.map((l) => l.event), ['prune', 'gc']);
  for (const l of byHand) assert.ok(typeof l.user === 'string' && l.user.length > 0, 'with the OS user');
  const steps = audit.filter((l) => l.code === 'E_STEP_UP');
  assert.ok(steps.length >= 4, 'step-up refusals are audited');
  for (const l of steps) assert.ok((l.operator as { subject?: string }).subject, 'with the person refused');
});

test('system administrator: usage of every tenant on a system session, never a tenant\'s snapshots or chunks', async (t) => {
  const w = await world(t);
  const admin = loggedIn(w, 'ops', w.mint({ subject: 'pairwise-ops', tenants: {}, systemAdmin: true }));
  const u = kuraJson<{ tenants: Array<{ tenant: string; snapshots: number; quota: number | null }> }>(['vault', 'usage', '--from', 'peer-dc', '--identity', w.sys.private], { env: admin });
  assert.deepEqual(u.tenants.map((x) => x.tenant), ['city-a', 'city-b']);
  assert.equal(u.tenants[0]!.snapshots, 2);
  // a bare system key on a vault that requires sign-in
  refused(kura(['vault', 'usage', '--from', 'peer-dc', '--identity', w.sys.private], { env: w.env('nobody') }), 'E_SSO_REQUIRED', 'usage without a ticket', /kura login --from peer-dc/);
  // a tenant's ticket on a system session, a system key as a tenant, a tenant key as system
  refused(kura(['vault', 'usage', '--from', 'peer-dc', '--identity', w.sys.private], { env: loggedIn(w, 'a-admin', w.mint()) }), 'E_FORBIDDEN', 'tenant-admin ticket on a system session', /system administrator/);
  assert.equal(kura(['vault', 'usage', '--from', 'peer-dc', '--identity', w.adminA.private], { env: admin }).status, 77, 'a tenant key cannot open a system session');
  // the system-admin ticket on a tenant's session is refused at AUTH
  assert.equal((await authRefusal(w, w.mint({ subject: 'pairwise-ops', tenants: {}, systemAdmin: true }), w.adminA.private)).code, 'E_FORBIDDEN');
  // on a system session: no GET_SNAPSHOT, no GET_CHUNKS, no PRUNE, no DELETE, whatever the ticket
  const token = w.mint({ subject: 'pairwise-ops', tenants: {}, systemAdmin: true });
  const frames: Array<[string, number, object | Buffer]> = [
    ['GET_SNAPSHOT', Frame.GET_SNAPSHOT, { id: w.snapshots[0]! }],
    ['GET_CHUNKS', Frame.GET_CHUNKS, Buffer.alloc(32)],
    ['PRUNE', Frame.PRUNE, { dryRun: false }],
    ['DELETE', Frame.DELETE, { id: w.snapshots[0]! }],
  ];
  for (const [name, type, body] of frames) {
    const conn = await vaultSession(w.vault, w.sys.private, '_system');
    assert.equal(jsonOf<{ role: string }>(await conn.request(Frame.AUTH, { ticket: token }, Frame.AUTH_OK)).role, 'system-admin');
    await assert.rejects(conn.request(type, body, Frame.SNAPSHOT), (e: KuraError) => e.code === 'E_FORBIDDEN' && /never on a tenant's snapshots or chunks/.test(e.message), name);
    conn.close();
  }
  const audit = w.vault.audit();
  const refusedLines = audit.filter((l) => l.event === 'session-refused' && l.tenant === '_system' && l.code === 'E_FORBIDDEN');
  assert.ok(refusedLines.length >= 4, 'each refusal audited');
  for (const l of refusedLines.slice(-4)) assert.equal((l.operator as { subject: string }).subject, 'pairwise-ops', 'naming the person');
  const usage = audit.filter((l) => l.event === 'usage' && l.outcome === 'ok');
  assert.equal(usage.length, 1);
  assert.equal((usage[0]!.operator as { role: string }).role, 'system-admin');
  // the tenants' data is where it was
  assert.equal(kuraJson<unknown[]>(['snapshots', '--from', 'peer-dc', '--identity', w.adminA.private], { env: w.env('nobody') }).length, 2);
  // a hold set by hand on the vault host is audited with the OS user
  kuraOk(['vault', 'protect', '--config', w.vault.config, '--tenant', 'city-a', w.snapshots[0]!]);
  const hand = w.vault.audit().filter((l) => l.event === 'protect' && l.by === 'cli');
  assert.equal(hand.length, 1);
  assert.equal(hand[0]!.snapshot, w.snapshots[0]);
  assert.ok(typeof hand[0]!.user === 'string' && (hand[0]!.user as string).length > 0);
  // the system administrator's logout ends the ticket on a system session (it names no tenant)
  assert.match(kuraOk(['logout', '--from', 'peer-dc', '--identity', w.sys.private], { env: admin }).out, /pairwise-ops \(corp-oidc\) for route peer-dc ended at the vault/);
  const after = await vaultSession(w.vault, w.sys.private, '_system');
  await assert.rejects(after.request(Frame.AUTH, { ticket: w.mint({ subject: 'pairwise-ops', tenants: {}, systemAdmin: true }) }, Frame.AUTH_OK).then(() => after.request(Frame.LOGOUT, {}, Frame.LOGGED_OUT)).then(() => after.request(Frame.LOGOUT, {}, Frame.LOGGED_OUT)), (e: KuraError) => e.code === 'E_TICKET_MISSING', 'LOGOUT twice: the second has no ticket');
  after.close();
});

test('sso.required: a restore with a bare key is refused and audited, while the relay still sends with its key', async (t) => {
  const w = await world(t);
  const env = w.env('nobody');
  refused(kura(['restore', '--from', 'peer-dc', w.snapshots[1]!, '--to', path.join(w.dir, 'r'), '--identity', w.adminA.private], { env }), 'E_SSO_REQUIRED', 'bare-key restore', /kura login --from peer-dc/);
  refused(kura(['protect', '--from', 'peer-dc', w.snapshots[1]!, '--identity', w.adminA.private], { env }), 'E_SSO_REQUIRED', 'bare-key protect');
  const lines = w.vault.audit().filter((l) => l.code === 'E_SSO_REQUIRED');
  assert.equal(lines.length, 2, 'audited');
  assert.match(String(lines[0]!.reason), /GET_SNAPSHOT on this vault needs a signed-in operator/);
  // a third night: the relay sends with its key alone
  const f = path.join(w.dir, 'juki-3.sql');
  writeFileSync(f, randomBytes(100_000));
  kuraJson(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { env });
  kuraOk(['relay', 'once'], { env });
  assert.equal(kuraJson<unknown[]>(['snapshots', '--from', 'peer-dc', '--identity', w.adminA.private], { env }).length, 3);
});
