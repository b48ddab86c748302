import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { ChildProcess } from 'node:child_process';
import puppeteer, { type Browser } from 'puppeteer-core';
import { kuraAsync, spawnKura } from './support/cli.js';
import { agentConfig, freePort, sshKey, startVault, vaultSession, type VaultProcess } from './support/vault.js';
import { MFA, PWD, SamlIdp, authnRequestOf, samlKeys, startBadIssuer, startOidcProvider, startSamlIdp, type BadToken, type RunningIdp } from './support/idp.js';
import { Frame, jsonOf } from '../src/protocol/frames.js';
import { TicketKey } from '../src/sso/ticket.js';
import { loadTicket } from '../src/sso/ticket-file.js';
import { KuraError } from '../src/errors.js';

/**
 * Sign-in (issue 18) end to end with real components on loopback: `kura vault serve` with its
 * operator endpoint, oidc-provider, a samlify SAML IdP, a test issuer of bad ID tokens, Debian's
 * chromium driven by puppeteer-core, and `kura login --from ROUTE` as a process.
 */
const CHROMIUM = process.env.KURA_CHROMIUM ?? '/usr/bin/chromium';

let dir: string;
let vault: VaultProcess;
let browser: Browser;
let op: RunningIdp;
let saml: Awaited<ReturnType<typeof startSamlIdp>>;
let bad: Awaited<ReturnType<typeof startBadIssuer>>;
let otherIdp: SamlIdp;
let agentCfg: string;
let machineKey: string;
let base: string;

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'kura-sso-'));
  const key = sshKey(dir, 'machine');
  machineKey = key.private;
  const ssoPort = await freePort();
  base = `http://127.0.0.1:${ssoPort}`;
  const [keys, otherKeys] = await Promise.all([samlKeys(dir, 'idp'), samlKeys(dir, 'other-idp')]);
  writeFileSync(path.join(dir, 'idp.crt'), keys.cert);
  op = await startOidcProvider({ clientId: 'kura-vault', redirectUri: `${base}/sso/oidc/callback` });
  bad = await startBadIssuer({ clientId: 'kura-vault' });
  saml = await startSamlIdp({ keys, spEntityId: `${base}/sso/saml/metadata`, acs: `${base}/sso/saml/acs` });
  otherIdp = new SamlIdp({ entityId: saml.idp.entityId, keys: otherKeys, ssoUrl: saml.ssoUrl, spEntityId: `${base}/sso/saml/metadata`, acs: `${base}/sso/saml/acs` });
  const top =
    `modules:\n  sso:\n` +
    `    - { type: oidc, name: oidc, issuer: "${op.url}", clientId: kura-vault }\n` +
    `    - { type: saml, name: saml, entryPoint: "${saml.ssoUrl}", idpIssuer: "${saml.idp.entityId}", idpCert: ${path.join(dir, 'idp.crt')}, display: [displayName, mail] }\n` +
    `    - { type: oidc, name: badop, issuer: "${bad.url}", clientId: kura-vault }\n`;
  const sso =
    `  sso:\n    listen: { host: 127.0.0.1, port: ${ssoPort} }\n    ticketTtl: 1h\n    loginTimeout: 2m\n` +
    `    levels: ["${PWD}", "${MFA}"]\n    sensitive: { acr: "${MFA}", maxAge: 15m }\n`;
  const tenants =
    `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n      retention: { keepLast: 5 }\n      operators:\n` +
    `        - { claim: groups, value: city-a-admins, role: tenant-admin }\n        - { provider: saml, claim: memberOf, value: city-a-admins, role: tenant-admin }\n` +
    `    city-b:\n      operators:\n        - { claim: groups, value: city-b-admins, role: tenant-admin }\n` +
    `    city-c:\n      minLevel: "${MFA}"\n      operators:\n        - { provider: oidc, claim: groups, value: staff, role: restore }\n`;
  vault = await startVault(dir, tenants, sso, top);
  assert.equal(vault.operatorUrl, base);
  agentCfg = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private });
  browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'], userDataDir: path.join(dir, 'chromium') });
});

after(async () => {
  await browser?.close();
  await vault?.stop();
  await Promise.all([op?.close(), saml?.close(), bad?.close()]);
  rmSync(dir, { recursive: true, force: true });
});

const configDir = () => path.join(dir, 'operator');
const ticketKey = () => TicketKey.loadOrCreate(path.join(vault.root, 'ticket_key'));

/** `kura login` as a process: resolves with its URL and code as soon as it prints them, and with its end. */
function login(args: string[]): { child: ChildProcess; prompt: Promise<{ url: string; code: string }>; done: Promise<{ status: number; out: string; err: string }> } {
  const child = spawnKura(['login', '--config', agentCfg, '--from', 'peer-dc', '--json', ...args], { KURA_CONFIG_DIR: configDir() });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  const prompt = new Promise<{ url: string; code: string }>((resolve, reject) => {
    child.stderr!.on('data', (d) => {
      err += d;
      const m = /Open (\S+) in a browser[\s\S]*the code (\S+)\./.exec(err);
      if (m) resolve({ url: m[1]!, code: m[2]! });
    });
    child.once('exit', () => reject(new Error(`kura login ended before printing a URL: ${err}`)));
  });
  const done = new Promise<{ status: number; out: string; err: string }>((resolve) => child.once('close', (code) => resolve({ status: code ?? -1, out, err })));
  return { child, prompt, done };
}

async function signInPage(url: string, steps: (page: import('puppeteer-core').Page) => Promise<void>): Promise<string> {
  const page = await browser.newPage();
  try {
    await page.goto(url);
    await steps(page);
    await page.waitForSelector('#result', { timeout: 10_000 });
    return await page.$eval('#result', (e) => e.textContent ?? '');
  } finally {
    await page.close();
  }
}

async function typeAndSubmit(page: import('puppeteer-core').Page, fields: Record<string, string>): Promise<void> {
  for (const [id, v] of Object.entries(fields)) await page.type(`#${id}`, v);
  await Promise.all([page.waitForNavigation(), page.click('#submit')]);
}

function auditLines(login: string) {
  return vault.audit().filter((e) => e.event === 'sso-login' && e.login === login);
}

describe('kura login through real identity providers and a real browser', () => {
  let firstAuthTime = 0;

  it('OIDC: the page shows the code and the providers; oidc-provider\'s own login page; a saved, working ticket', async () => {
    const l = login([]);
    const { url, code } = await l.prompt;
    const result = await signInPage(url, async (page) => {
      assert.equal(await page.$eval('#code', (e) => e.textContent), code);
      await Promise.all([page.waitForNavigation(), page.click('#provider-oidc')]);
      await page.waitForSelector('#login');
      await typeAndSubmit(page, { login: 'alice', password: 'alice-pw' });
    });
    assert.match(result, /Signed in as Alice Admin \(tenant-admin of city-a\)/);
    const r = await l.done;
    assert.equal(r.status, 0, r.err);
    const printed = JSON.parse(r.out) as { ok: boolean; file: string };
    assert.equal(statSync(printed.file).mode & 0o777, 0o600);
    const saved = loadTicket('peer-dc', { KURA_CONFIG_DIR: configDir() })!;
    const t = ticketKey().verify(saved.token, Date.now());
    assert.equal(t.provider, 'oidc');
    assert.notEqual(t.subject, 'alice', 'the pairwise sub is the subject, not the account name');
    assert.deepEqual(t.tenants, { 'city-a': 'tenant-admin' });
    assert.equal(t.systemAdmin, false);
    assert.equal(t.acr, PWD);
    assert.equal(t.display?.name, 'Alice Admin');
    firstAuthTime = t.authTime;
    const [line] = auditLines(code);
    assert.equal(line?.outcome, 'ok');
    assert.equal(line?.subject, t.subject);
    assert.deepEqual(line?.roles, { 'city-a': 'tenant-admin' });
    assert.equal(line?.ticket, t.id);
    assert.match(String((line?.refusedTenants as Record<string, string>)['city-c']), /needs sign-in level urn:kura:mfa/, 'below city-c\'s minimum level: not granted there');
  });

  it('with that password-only ticket, kura prune --from may look (dry run) but applying is refused E_STEP_UP, audited with the person', async () => {
    const env = { KURA_CONFIG_DIR: configDir() };
    const dry = await kuraAsync(['prune', '--config', agentCfg, '--from', 'peer-dc', '--dry-run', '--json'], { env });
    assert.equal(dry.status, 0, dry.stderr);
    const apply = await kuraAsync(['prune', '--config', agentCfg, '--from', 'peer-dc'], { env });
    assert.equal(apply.status, 77, apply.stderr);
    assert.match(apply.stderr, /E_STEP_UP: .*kura login --from peer-dc --step-up/);
    const t = ticketKey().verify(loadTicket('peer-dc', env)!.token, Date.now());
    const refusal = vault.audit().find((e) => e.code === 'E_STEP_UP' && (e.operator as { subject?: string } | undefined)?.subject === t.subject);
    assert.ok(refusal, 'the step-up refusal names the person');
  });

  it('OIDC step-up: a fresh sign-in with the OTP step yields the mfa level', async () => {
    await new Promise((r) => setTimeout(r, 1100)); // auth_time has a resolution of seconds
    const l = login(['--step-up', '--provider', 'oidc']);
    const { url } = await l.prompt;
    const result = await signInPage(url, async (page) => {
      await page.waitForSelector('#login'); // max_age=0 / prompt=login: the provider asks again despite its session
      await typeAndSubmit(page, { login: 'alice', password: 'alice-pw' });
      await page.waitForSelector('#otp');
      await typeAndSubmit(page, { otp: '246810' });
    });
    assert.match(result, /Signed in/);
    const r = await l.done;
    assert.equal(r.status, 0, r.err);
    const t = ticketKey().verify(loadTicket('peer-dc', { KURA_CONFIG_DIR: configDir() })!.token, Date.now());
    assert.equal(t.acr, MFA);
    assert.ok(t.authTime > firstAuthTime, 'a fresh authentication time');
    assert.deepEqual(t.tenants, { 'city-a': 'tenant-admin', 'city-c': 'restore' }, 'the mfa level reaches city-c\'s minimum');
  });

  it('after kura login --step-up the same prune applies, and its audit line names the person (pairwise subject, provider, display name, ticket)', async () => {
    const env = { KURA_CONFIG_DIR: configDir() };
    const r = await kuraAsync(['prune', '--config', agentCfg, '--from', 'peer-dc', '--json'], { env });
    assert.equal(r.status, 0, r.stderr);
    const t = ticketKey().verify(loadTicket('peer-dc', env)!.token, Date.now());
    const line = vault.audit().find((e) => e.event === 'prune' && e.outcome === 'ok' && (e.operator as { ticket?: string } | undefined)?.ticket === t.id);
    assert.ok(line, 'a prune line with the ticket');
    assert.deepEqual(line.operator, { subject: t.subject, provider: 'oidc', display: t.display, ticket: t.id, role: 'tenant-admin' });
  });

  it('SAML: the IdP\'s own login page, a signed assertion posted to the ACS, a saved working ticket; step-up asks for mfa', async () => {
    const l = login(['--provider', 'saml']);
    const { url, code } = await l.prompt;
    const result = await signInPage(url, async (page) => {
      await page.waitForSelector('#login');
      await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), typeAndSubmit(page, { login: 'alice', password: 'alice-pw' })]);
    });
    assert.match(result, /Signed in as p-[0-9a-f]+|Signed in/);
    const r = await l.done;
    assert.equal(r.status, 0, r.err);
    const t = ticketKey().verify(loadTicket('peer-dc', { KURA_CONFIG_DIR: configDir() })!.token, Date.now());
    assert.equal(t.provider, 'saml');
    assert.match(t.subject, /^p-[0-9a-f]{24}$/, 'the persistent NameID is the subject');
    assert.deepEqual(t.tenants, { 'city-a': 'tenant-admin' });
    assert.equal(t.acr, PWD);
    assert.deepEqual(t.display, { displayName: 'Alice Admin', mail: 'alice@city-a.example' });
    assert.equal(auditLines(code)[0]?.outcome, 'ok');

    const s = login(['--provider', 'saml', '--step-up']);
    const stepped = await signInPage((await s.prompt).url, async (page) => {
      await page.waitForSelector('#login');
      await typeAndSubmit(page, { login: 'alice', password: 'alice-pw' });
      await page.waitForSelector('#otp');
      await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), typeAndSubmit(page, { otp: '246810' })]);
    });
    assert.match(stepped, /Signed in/);
    assert.equal((await s.done).status, 0);
    const t2 = ticketKey().verify(loadTicket('peer-dc', { KURA_CONFIG_DIR: configDir() })!.token, Date.now());
    assert.equal(t2.acr, MFA);
    assert.ok(t2.authTime >= t.authTime);
  });

  it('serves its SAML service-provider metadata for registration with an IdP', async () => {
    const res = await fetch(`${base}/sso/saml/metadata`);
    assert.equal(res.status, 200);
    const xml = await res.text();
    assert.match(xml, new RegExp(`entityID="${base}/sso/saml/metadata"`));
    assert.match(xml, new RegExp(`Location="${base}/sso/saml/acs"`));
    assert.match(xml, /nameid-format:persistent/);
  });
});

/** A sign-in started over SSH the way kura login does, followed up to the provider's URL. */
async function begin(provider: string, stepUp = false) {
  const conn = await vaultSession(vault, machineKey);
  const u = jsonOf<{ url: string; code: string }>(await conn.request(Frame.LOGIN_BEGIN, { provider, stepUp }, Frame.LOGIN_URL));
  let at = u.url;
  for (let i = 0; i < 2; i++) {
    const res = await fetch(at, { redirect: 'manual' });
    assert.equal(res.status, 302, `${at} answered ${res.status}`);
    at = res.headers.get('location')!;
  }
  const wait = conn.request(Frame.LOGIN_WAIT, {}, Frame.TICKET).then(
    (f) => ({ ok: true as const, ticket: jsonOf<{ token: string }>(f) }),
    (e: KuraError) => ({ ok: false as const, error: e }),
  );
  return { conn, code: u.code, idpUrl: at, wait };
}

async function expectRefused(b: Awaited<ReturnType<typeof begin>>, res: Response, reason: RegExp): Promise<void> {
  assert.ok(res.status === 403 || res.status === 400, `status ${res.status}`);
  const w = await b.wait;
  b.conn.close();
  assert.equal(w.ok, false, 'no ticket');
  if (!w.ok) {
    assert.equal(w.error.code, 'E_SSO_FAILED');
    assert.match(w.error.message, reason);
  }
  const lines = auditLines(b.code);
  assert.equal(lines.length, 1);
  assert.equal(lines[0]!.outcome, 'refused');
  assert.equal(lines[0]!.code, 'E_SSO_FAILED');
  assert.match(String(lines[0]!.reason), reason);
  assert.equal((await fetch(`${base}/healthz`)).status, 200, 'the vault keeps serving');
}

describe('bad answers from identity providers: a coded refusal, an audit line, and the vault keeps serving', () => {
  const acs = () => `${base}/sso/saml/acs`;
  const post = (SAMLResponse: string, RelayState: string) => fetch(acs(), { method: 'POST', body: new URLSearchParams({ SAMLResponse, RelayState }) });
  const alice = { nameId: 'p-alice', attributes: { memberOf: ['city-a-admins'] } };

  const samlCases: Array<[string, (req: ReturnType<typeof authnRequestOf>) => Promise<string> | string, RegExp]> = [
    ['unsigned', (q) => saml.idp.unsigned({ ...alice, inResponseTo: q.id }), /does not verify.*signature/i],
    ['signed by another key', (q) => otherIdp.signed({ ...alice, inResponseTo: q.id }), /does not verify.*signature/i],
    ['wrong issuer', (q) => saml.idp.signed({ ...alice, inResponseTo: q.id, issuer: 'https://other-idp.example/metadata' }), /issued by https:\/\/other-idp/],
    ['wrong audience', (q) => saml.idp.signed({ ...alice, inResponseTo: q.id, audience: 'https://other-sp.example/metadata' }), /audience/i],
    ['wrong recipient', (q) => saml.idp.signed({ ...alice, inResponseTo: q.id, recipient: 'https://other-sp.example/acs' }), /Recipient/],
    ['wrong destination', (q) => saml.idp.signed({ ...alice, inResponseTo: q.id, destination: 'https://other-sp.example/acs' }), /addressed to/],
    ['expired', (q) => saml.idp.signed({ ...alice, inResponseTo: q.id, validFor: -10 * 60_000 }), /expired|NotOnOrAfter|no valid subject confirmation/i],
    ['InResponseTo unknown', () => saml.idp.signed({ ...alice, inResponseTo: '_not-a-request-of-this-vault' }), /did not issue/],
    [
      'signature wrapping (a second, unsigned assertion)',
      async (q) => {
        const good = Buffer.from(await saml.idp.signed({ ...alice, inResponseTo: q.id }), 'base64').toString('utf8');
        const evil = /<saml:Assertion [\s\S]*<\/saml:Assertion>/.exec(saml.idp.xml({ nameId: 'p-mallory', attributes: { memberOf: ['city-a-admins', 'city-b-admins'] }, inResponseTo: q.id }))![0];
        return Buffer.from(good.replace('<saml:Assertion ', `${evil}<saml:Assertion `)).toString('base64');
      },
      /multiple assertions/,
    ],
  ];
  for (const [name, make, reason] of samlCases) {
    it(`SAML: ${name}`, async () => {
      const b = await begin('saml');
      const q = authnRequestOf(b.idpUrl);
      assert.equal(q.acs, acs());
      await expectRefused(b, await post(await make(q), q.relayState!), reason);
    });
  }

  it('SAML: a response replayed on another sign-in', async () => {
    const first = await begin('saml');
    const q = authnRequestOf(first.idpUrl);
    const response = await saml.idp.signed({ ...alice, inResponseTo: q.id });
    assert.equal((await post(response, q.relayState!)).status, 200);
    const w = await first.wait;
    first.conn.close();
    assert.equal(w.ok, true);
    // the same response again: on its own sign-in (finished), and on a new one
    assert.equal((await post(response, q.relayState!)).status, 400);
    const second = await begin('saml');
    await expectRefused(second, await post(response, authnRequestOf(second.idpUrl).relayState!), /did not issue|answered already/);
  });

  it('SAML: a response signed as a whole (the assertion unsigned) is accepted, also without RelayState', async () => {
    const b = await begin('saml');
    const q = authnRequestOf(b.idpUrl);
    const whole = new SamlIdp({ ...saml.idp.o, signWhole: true });
    const xml = Buffer.from(await whole.signed({ ...alice, inResponseTo: q.id }), 'base64').toString('utf8');
    assert.match(xml, /<samlp:Response [^>]*>(?:(?!<saml:Assertion)[\s\S])*<ds:Signature/, 'the response carries the signature');
    const res = await fetch(acs(), { method: 'POST', body: new URLSearchParams({ SAMLResponse: Buffer.from(xml).toString('base64') }) }); // and an IdP that drops RelayState
    assert.equal(res.status, 200);
    const w = await b.wait;
    b.conn.close();
    assert.equal(w.ok, true);
  });

  it('step-up: the vault asks for the level and a fresh sign-in, and checks the answer itself (SAML, OIDC)', async () => {
    const b = await begin('saml', true);
    const q = authnRequestOf(b.idpUrl);
    assert.equal(q.forceAuthn, true);
    assert.equal(q.acr, MFA);
    await expectRefused(b, await post(await saml.idp.signed({ ...alice, inResponseTo: q.id, acr: PWD }), q.relayState!), /step-up needs sign-in level urn:kura:mfa; saml asserted urn:kura:pwd/);

    bad.mode = 'ok'; // the test issuer, like oidc-provider, does not enforce acr_values
    const o = await begin('badop', true);
    const asked = new URL(o.idpUrl).searchParams;
    assert.deepEqual([asked.get('acr_values'), asked.get('max_age'), asked.get('prompt')], [MFA, '0', 'login']);
    await expectRefused(o, await fetch((await fetch(o.idpUrl, { redirect: 'manual' })).headers.get('location')!), /step-up needs sign-in level urn:kura:mfa; badop asserted urn:kura:pwd/);
  });

  const oidcCases: Array<[BadToken, RegExp]> = [
    ['wrong-issuer', /"iss" claim|issuer/i],
    ['alg-none', /does not verify/],
    ['hs256', /does not verify/],
    ['expired', /"exp" claim|expired/i],
    ['wrong-nonce', /nonce/],
    ['wrong-audience', /"aud" claim|audience/i],
  ];
  for (const [mode, reason] of oidcCases) {
    it(`OIDC: ID token ${mode}`, async () => {
      bad.mode = mode;
      const b = await begin('badop');
      const res = await fetch(b.idpUrl, { redirect: 'manual' }); // the test issuer answers at once
      const back = res.headers.get('location')!;
      assert.ok(back.startsWith(`${base}/sso/badop/callback`), back);
      await expectRefused(b, await fetch(back), reason);
    });
  }

  it('OIDC: the test issuer\'s good token is accepted (the refusals above are the bad tokens\' own)', async () => {
    bad.mode = 'ok';
    const b = await begin('badop');
    const back = (await fetch(b.idpUrl, { redirect: 'manual' })).headers.get('location')!;
    assert.equal((await fetch(back)).status, 200);
    const w = await b.wait;
    b.conn.close();
    assert.equal(w.ok, true);
    // and its code cannot be used twice: the callback again is an answer for no open sign-in
    assert.equal((await fetch(back)).status, 400);
  });

  it('a person the claims give no role is refused, and kura login exits 77 with E_SSO_FAILED naming the reason', async () => {
    bad.mode = 'no-role';
    const l = login(['--provider', 'badop']);
    const { url, code } = await l.prompt;
    let at = url;
    for (let i = 0; i < 3; i++) at = (await fetch(at, { redirect: 'manual' })).headers.get('location')!;
    assert.ok(at.startsWith(`${base}/sso/badop/callback`), at);
    assert.equal((await fetch(at)).status, 403);
    const r = await l.done;
    assert.equal(r.status, 77);
    assert.match(r.err, /E_SSO_FAILED: .*mallory, who has no role on this vault/);
    assert.equal(JSON.parse(r.out).error.code, 'E_SSO_FAILED');
    const [line] = auditLines(code);
    assert.equal(line?.outcome, 'refused');
    assert.equal(line?.subject, 'mallory', 'the refusal names the person');
  });

  it('the vault still serves SSH sessions after all of it', async () => {
    const conn = await vaultSession(vault, machineKey);
    try {
      const rows = jsonOf<unknown[]>(await conn.request(Frame.LIST, {}, Frame.LIST_REPLY));
      assert.deepEqual(rows, []);
    } finally {
      conn.close();
    }
  });
});
