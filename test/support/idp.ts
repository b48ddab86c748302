import { createHash, randomBytes } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { inflateRawSync } from 'node:zlib';
import { exportJWK, generateKeyPair, SignJWT, type JWK } from 'jose';
import * as samlify from 'samlify';

/**
 * Identity providers for the SSO tests, real ones on loopback: oidc-provider (its own login page:
 * login/password, then an OTP step that yields the mfa level; pairwise subjects), a SAML IdP
 * (samlify signing real assertions, behind a tiny HTTP server with its own login page), and a
 * test-controlled OIDC issuer that signs bad ID tokens with jose.
 */
export const PWD = 'urn:kura:pwd';
export const MFA = 'urn:kura:mfa';

export interface TestUser {
  password: string;
  otp: string;
  claims: Record<string, unknown>;
}

export const USERS: Record<string, TestUser> = {
  alice: { password: 'alice-pw', otp: '246810', claims: { name: 'Alice Admin', email: 'alice@city-a.example', groups: ['city-a-admins', 'staff'] } },
  bob: { password: 'bob-pw', otp: '135790', claims: { name: 'Bob Restorer', email: 'bob@city-a.example', groups: ['city-a-restore'] } },
};

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title: string, body: string) => `<!doctype html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head><body><h1>${esc(title)}</h1>${body}</body></html>`;
const loginForm = (action: string, title: string) =>
  page(title, `<form method="post" action="${esc(action)}"><input id="login" name="login"><input id="password" name="password" type="password"><button id="submit" type="submit">Sign in</button></form>`);
const otpForm = (action: string) => page('One-time code', `<form method="post" action="${esc(action)}"><input id="otp" name="otp"><button id="submit" type="submit">Verify</button></form>`);

async function formOf(req: IncomingMessage): Promise<URLSearchParams> {
  const parts: Buffer[] = [];
  for await (const c of req as AsyncIterable<Buffer>) parts.push(c);
  return new URLSearchParams(Buffer.concat(parts).toString('utf8'));
}

function listen(server: http.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

async function closeServer(server: http.Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
}

export interface RunningIdp {
  url: string;
  close(): Promise<void>;
}

/** oidc-provider on loopback with kura's vault as a public client (PKCE), pairwise subjects and acr pwd/mfa. */
export async function startOidcProvider(o: { clientId: string; redirectUri: string }): Promise<RunningIdp> {
  const { default: Provider } = await import('oidc-provider');
  const server = http.createServer();
  const port = await listen(server);
  const issuer = `http://127.0.0.1:${port}`;
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid: 'op-1', alg: 'RS256', use: 'sig' };
  const provider = new Provider(issuer, {
    clients: [{ client_id: o.clientId, token_endpoint_auth_method: 'none', redirect_uris: [o.redirectUri], grant_types: ['authorization_code'], response_types: ['code'], subject_type: 'pairwise' }],
    subjectTypes: ['public', 'pairwise'],
    pairwiseIdentifier: async (_ctx: unknown, accountId: string, client: { sectorIdentifier: string }) => createHash('sha256').update(`${client.sectorIdentifier}|${accountId}|pairwise-salt`).digest('base64url'),
    acrValues: [PWD, MFA],
    claims: { openid: ['sub', 'acr', 'amr', 'auth_time', 'groups'], profile: ['name'], email: ['email'] },
    conformIdTokenClaims: false,
    findAccount: async (_ctx: unknown, id: string) => (USERS[id] ? { accountId: id, claims: async () => ({ sub: id, ...USERS[id]!.claims }) } : undefined),
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx: unknown, i: { uid: string }) => `/interaction/${i.uid}` },
    jwks: { keys: [jwk] },
    cookies: { keys: [randomBytes(16).toString('hex')] },
    ttl: { Session: 3600, Grant: 3600, Interaction: 600, AuthorizationCode: 60, IdToken: 300, AccessToken: 300 },
  });
  const passed = new Map<string, string>(); // interaction uid → account that gave its password
  const finish = (req: IncomingMessage, res: ServerResponse, result: object, merge = false) => provider.interactionFinished(req, res, result, { mergeWithLastSubmission: merge });
  const callback = provider.callback();
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const m = /^\/interaction\/([^/?]+)(\/(login|otp))?/.exec(req.url ?? '');
    if (!m) return callback(req, res);
    void (async () => {
      const details = await provider.interactionDetails(req, res);
      const uid = m[1]!;
      if (details.prompt.name === 'consent') {
        const grant = details.grantId ? await provider.Grant.find(details.grantId) : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
        const d = details.prompt.details;
        if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
        if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
        for (const [indicator, scopes] of Object.entries((d.missingResourceScopes ?? {}) as Record<string, string[]>)) grant.addResourceScope(indicator, scopes.join(' '));
        const grantId = await grant.save();
        return finish(req, res, { consent: details.grantId ? {} : { grantId } }, true);
      }
      const wantsMfa = String(details.params.acr_values ?? '').split(' ').includes(MFA);
      if (m[3] === 'login' && req.method === 'POST') {
        const f = await formOf(req);
        const user = USERS[f.get('login') ?? ''];
        if (!user || user.password !== f.get('password')) return void res.writeHead(200, { 'content-type': 'text/html' }).end(loginForm(`/interaction/${uid}/login`, 'Wrong login or password'));
        if (!wantsMfa) return finish(req, res, { login: { accountId: f.get('login'), acr: PWD, amr: ['pwd'] } });
        passed.set(uid, f.get('login')!);
        return void res.writeHead(200, { 'content-type': 'text/html' }).end(otpForm(`/interaction/${uid}/otp`));
      }
      if (m[3] === 'otp' && req.method === 'POST') {
        const f = await formOf(req);
        const account = passed.get(uid);
        if (!account || USERS[account]!.otp !== f.get('otp')) return void res.writeHead(200, { 'content-type': 'text/html' }).end(otpForm(`/interaction/${uid}/otp`));
        passed.delete(uid);
        return finish(req, res, { login: { accountId: account, acr: MFA, amr: ['pwd', 'otp'] } });
      }
      res.writeHead(200, { 'content-type': 'text/html' }).end(loginForm(`/interaction/${uid}/login`, 'Test OP: sign in'));
    })().catch((e: Error) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`interaction failed: ${e.message}`);
    });
  });
  return { url: issuer, close: () => closeServer(server) };
}

// ---------------------------------------------------------------- SAML

export interface SamlKeys {
  key: string;
  cert: string;
}

/** A self-signed RSA certificate (openssl) for an IdP's signing key. */
export async function samlKeys(dir: string, name: string): Promise<SamlKeys> {
  const { execFileSync } = await import('node:child_process');
  const { readFileSync } = await import('node:fs');
  const key = `${dir}/${name}.key`;
  const cert = `${dir}/${name}.crt`;
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${name}`], { stdio: 'ignore' });
  return { key: readFileSync(key, 'utf8'), cert: readFileSync(cert, 'utf8') };
}

export interface AssertionSpec {
  inResponseTo: string;
  nameId: string;
  attributes?: Record<string, string[]>;
  acr?: string;
  /** defaults: the SP's own values */
  audience?: string;
  recipient?: string;
  destination?: string;
  /** ms from now; negative: already expired */
  validFor?: number;
  issuer?: string;
}

/** The SAML IdP side: builds responses as samlify signs them (assertion signed), or unsigned. */
export class SamlIdp {
  readonly entityId: string;
  private readonly idp: ReturnType<typeof samlify.IdentityProvider>;
  private readonly sp: ReturnType<typeof samlify.ServiceProvider>;

  constructor(
    readonly o: { entityId: string; keys: SamlKeys; ssoUrl: string; spEntityId: string; acs: string; signWhole?: boolean },
  ) {
    this.entityId = o.entityId;
    this.idp = samlify.IdentityProvider({
      entityID: o.entityId,
      privateKey: o.keys.key,
      signingCert: o.keys.cert,
      wantAuthnRequestsSigned: false,
      nameIDFormat: ['urn:oasis:names:tc:SAML:2.0:nameid-format:persistent'],
      singleSignOnService: [{ Binding: samlify.Constants.namespace.binding.redirect, Location: o.ssoUrl }],
    });
    this.sp = samlify.ServiceProvider({ entityID: o.spEntityId, wantAssertionsSigned: !o.signWhole, assertionConsumerService: [{ Binding: samlify.Constants.namespace.binding.post, Location: o.acs }] });
  }

  xml(a: AssertionSpec): string {
    const now = new Date();
    const until = new Date(now.getTime() + (a.validFor ?? 5 * 60_000)).toISOString();
    const issued = a.validFor !== undefined && a.validFor < 0 ? new Date(now.getTime() + a.validFor - 60_000).toISOString() : now.toISOString();
    const id = `_${randomBytes(16).toString('hex')}`;
    const aid = `_${randomBytes(16).toString('hex')}`;
    const attrs = Object.entries(a.attributes ?? {})
      .map(([k, vs]) => `<saml:Attribute Name="${esc(k)}" NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:basic">${vs.map((v) => `<saml:AttributeValue xsi:type="xs:string">${esc(v)}</saml:AttributeValue>`).join('')}</saml:Attribute>`)
      .join('');
    const issuer = a.issuer ?? this.entityId;
    return (
      `<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="${id}" Version="2.0" IssueInstant="${issued}" Destination="${esc(a.destination ?? this.o.acs)}" InResponseTo="${esc(a.inResponseTo)}">` +
      `<saml:Issuer>${esc(issuer)}</saml:Issuer><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>` +
      `<saml:Assertion xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="${aid}" Version="2.0" IssueInstant="${issued}">` +
      `<saml:Issuer>${esc(issuer)}</saml:Issuer><saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent">${esc(a.nameId)}</saml:NameID>` +
      `<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer"><saml:SubjectConfirmationData NotOnOrAfter="${until}" Recipient="${esc(a.recipient ?? this.o.acs)}" InResponseTo="${esc(a.inResponseTo)}"/></saml:SubjectConfirmation></saml:Subject>` +
      `<saml:Conditions NotBefore="${issued}" NotOnOrAfter="${until}"><saml:AudienceRestriction><saml:Audience>${esc(a.audience ?? this.o.spEntityId)}</saml:Audience></saml:AudienceRestriction></saml:Conditions>` +
      `<saml:AuthnStatement AuthnInstant="${issued}" SessionIndex="${aid}"><saml:AuthnContext><saml:AuthnContextClassRef>${esc(a.acr ?? PWD)}</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>` +
      (attrs ? `<saml:AttributeStatement>${attrs}</saml:AttributeStatement>` : '') +
      `</saml:Assertion></samlp:Response>`
    );
  }

  /** A response as the IdP sends it: base64, the assertion (signWhole: the response) signed with this IdP's key. */
  async signed(a: AssertionSpec): Promise<string> {
    const xml = this.xml(a);
    const r = await this.idp.createLoginResponse(this.sp, { extract: { request: { id: a.inResponseTo } } } as never, 'post', {}, { customTagReplacement: () => ({ id: 'x', context: xml }) } as never);
    return (r as { context: string }).context;
  }

  unsigned(a: AssertionSpec): string {
    return Buffer.from(this.xml(a)).toString('base64');
  }
}

/** What an HTTP-Redirect AuthnRequest asks: its ID, RelayState, ForceAuthn and requested context. */
export function authnRequestOf(url: string): { id: string; relayState: string | null; forceAuthn: boolean; acr: string | null; acs: string | null } {
  const u = new URL(url);
  const xml = inflateRawSync(Buffer.from(u.searchParams.get('SAMLRequest') ?? '', 'base64')).toString('utf8');
  return {
    id: /\sID="([^"]+)"/.exec(xml)?.[1] ?? '',
    relayState: u.searchParams.get('RelayState'),
    forceAuthn: /ForceAuthn="true"/.test(xml),
    acr: /AuthnContextClassRef[^>]*>([^<]+)</.exec(xml)?.[1] ?? null,
    acs: /AssertionConsumerServiceURL="([^"]+)"/.exec(xml)?.[1] ?? null,
  };
}

/** A SAML IdP web server: /sso (HTTP-Redirect AuthnRequest) → its login page (→ OTP when mfa is asked) → auto-posted response. */
export async function startSamlIdp(o: { keys: SamlKeys; spEntityId: string; acs: string; entityId?: string }): Promise<RunningIdp & { idp: SamlIdp; ssoUrl: string }> {
  const server = http.createServer();
  const port = await listen(server);
  const url = `http://127.0.0.1:${port}`;
  const idp = new SamlIdp({ entityId: o.entityId ?? `${url}/metadata`, keys: o.keys, ssoUrl: `${url}/sso`, spEntityId: o.spEntityId, acs: o.acs });
  const flows = new Map<string, { req: ReturnType<typeof authnRequestOf>; account?: string }>();
  const html = (res: ServerResponse, body: string) => void res.writeHead(200, { 'content-type': 'text/html' }).end(body);
  const post = async (res: ServerResponse, flow: { req: ReturnType<typeof authnRequestOf> }, account: string, acr: string) => {
    const u = USERS[account]!;
    const b64 = await idp.signed({ inResponseTo: flow.req.id, nameId: `p-${createHash('sha256').update(`saml|${account}`).digest('hex').slice(0, 24)}`, acr, attributes: { displayName: [String(u.claims.name)], mail: [String(u.claims.email)], memberOf: u.claims.groups as string[] } });
    html(res, page('Signing in', `<form method="post" action="${esc(o.acs)}"><input type="hidden" name="SAMLResponse" value="${esc(b64)}"><input type="hidden" name="RelayState" value="${esc(flow.req.relayState ?? '')}"><noscript><button>Continue</button></noscript></form><script>document.forms[0].submit()</script>`));
  };
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const u = new URL(req.url ?? '/', url);
      if (u.pathname === '/sso' && req.method === 'GET') {
        const flow = randomBytes(12).toString('hex');
        flows.set(flow, { req: authnRequestOf(u.toString()) });
        return html(res, loginForm(`/login/${flow}`, 'Test SAML IdP: sign in'));
      }
      const m = /^\/(login|otp)\/([0-9a-f]+)$/.exec(u.pathname);
      const flow = m ? flows.get(m[2]!) : undefined;
      if (!m || !flow || req.method !== 'POST') return void res.writeHead(404).end();
      const f = await formOf(req);
      if (m[1] === 'login') {
        const user = USERS[f.get('login') ?? ''];
        if (!user || user.password !== f.get('password')) return html(res, loginForm(`/login/${m[2]}`, 'Wrong login or password'));
        if (flow.req.acr !== MFA) return post(res, flow, f.get('login')!, PWD);
        flow.account = f.get('login')!;
        return html(res, otpForm(`/otp/${m[2]}`));
      }
      if (!flow.account || USERS[flow.account]!.otp !== f.get('otp')) return html(res, otpForm(`/otp/${m[2]}`));
      flows.delete(m[2]!);
      return post(res, flow, flow.account, MFA);
    })().catch((e: Error) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`IdP failed: ${e.message}`);
    });
  });
  return { url, ssoUrl: `${url}/sso`, idp, close: () => closeServer(server) };
}

// ---------------------------------------------------------------- bad OIDC tokens

export type BadToken = 'ok' | 'no-role' | 'wrong-issuer' | 'alg-none' | 'expired' | 'wrong-nonce' | 'wrong-audience' | 'hs256';

/** A test-controlled OIDC issuer: discovery, JWKS, an authorize endpoint that answers at once, and a token endpoint handing out the ID token `mode` says. */
export async function startBadIssuer(o: { clientId: string }): Promise<RunningIdp & { mode: BadToken }> {
  const server = http.createServer();
  const port = await listen(server);
  const issuer = `http://127.0.0.1:${port}`;
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const pub: JWK = { ...(await exportJWK(publicKey)), kid: 'bad-1', alg: 'RS256', use: 'sig' };
  const codes = new Map<string, string>(); // code → nonce
  const state = { mode: 'ok' as BadToken };
  const token = async (nonce: string): Promise<string> => {
    const now = Math.floor(Date.now() / 1000);
    const claims = { nonce: state.mode === 'wrong-nonce' ? 'not-the-nonce' : nonce, acr: PWD, auth_time: now, groups: state.mode === 'no-role' ? ['visitors'] : ['city-a-admins'], name: 'Mallory' };
    if (state.mode === 'alg-none') {
      const b = (x: object) => Buffer.from(JSON.stringify(x)).toString('base64url');
      return `${b({ alg: 'none', typ: 'JWT' })}.${b({ ...claims, iss: issuer, aud: o.clientId, sub: 'mallory', iat: now, exp: now + 300 })}.`;
    }
    if (state.mode === 'hs256') {
      return new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setIssuer(issuer).setAudience(o.clientId).setSubject('mallory').setIssuedAt(now).setExpirationTime(now + 300).sign(new TextEncoder().encode(JSON.stringify(pub)));
    }
    const t = new SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', kid: 'bad-1' })
      .setIssuer(state.mode === 'wrong-issuer' ? 'http://127.0.0.1:1/evil' : issuer)
      .setAudience(state.mode === 'wrong-audience' ? 'someone-else' : o.clientId)
      .setSubject('mallory')
      .setIssuedAt(state.mode === 'expired' ? now - 3600 : now)
      .setExpirationTime(state.mode === 'expired' ? now - 1800 : now + 300);
    return t.sign(privateKey);
  };
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const u = new URL(req.url ?? '/', issuer);
      const json = (x: unknown) => void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(x));
      if (u.pathname === '/.well-known/openid-configuration') return json({ issuer, authorization_endpoint: `${issuer}/authorize`, token_endpoint: `${issuer}/token`, jwks_uri: `${issuer}/jwks`, id_token_signing_alg_values_supported: ['RS256'] });
      if (u.pathname === '/jwks') return json({ keys: [pub] });
      if (u.pathname === '/authorize') {
        const code = randomBytes(12).toString('hex');
        codes.set(code, u.searchParams.get('nonce') ?? '');
        const back = new URL(u.searchParams.get('redirect_uri')!);
        back.searchParams.set('code', code);
        back.searchParams.set('state', u.searchParams.get('state') ?? '');
        return void res.writeHead(302, { location: back.toString() }).end();
      }
      if (u.pathname === '/token' && req.method === 'POST') {
        const f = await formOf(req);
        const nonce = codes.get(f.get('code') ?? '');
        if (nonce === undefined || !f.get('code_verifier')) return void res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"invalid_grant"}');
        codes.delete(f.get('code')!);
        return json({ access_token: 'x', token_type: 'Bearer', id_token: await token(nonce) });
      }
      res.writeHead(404).end();
    })().catch((e: Error) => {
      if (!res.headersSent) res.writeHead(500);
      res.end(e.message);
    });
  });
  return {
    url: issuer,
    get mode() {
      return state.mode;
    },
    set mode(m: BadToken) {
      state.mode = m;
    },
    close: () => closeServer(server),
  };
}
