import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRemoteJWKSet, jwtVerify, type JWTPayload } from 'jose';
import { z } from 'zod';
import { KuraError } from '../../errors.js';
import type { Identity } from '../../sso/roles.js';
import { registerModule, type IdentityProvider } from '../registry.js';

/**
 * OpenID Connect relying party: discovery, authorization code with PKCE (S256), state and nonce;
 * the ID token is verified with jose against the provider's JWKS (issuer, audience, nonce,
 * expiry, an asymmetric algorithm of the allow-list: never `none`, never HS*). The subject is
 * the `sub` (pairwise when the provider is so configured), the level the `acr` claim (checked
 * here: providers need not enforce acr_values).
 */
const ASYMMETRIC = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;
/** a sign-in's PKCE verifier and nonce are forgotten after this (sign-ins expire long before: vault.sso.loginTimeout) */
const ABANDONED_MS = 24 * 3600_000;
const providerName = z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/, 'a provider name: lower-case letters, digits and dashes');

const options = z.strictObject({
  type: z.literal('oidc'),
  name: providerName.default('oidc').describe('name of this identity provider (in URLs, tickets, audit lines and claim rules)'),
  issuer: z.string().url().describe('the provider\'s issuer URL (its /.well-known/openid-configuration is read)').meta({ examples: ['https://login.example.org/realms/ops'] }),
  clientId: z.string().min(1).describe('the client ID kura is registered with (redirect URI: <vault.sso.publicUrl>/sso/<name>/callback)'),
  clientSecretFile: z.string().optional().describe('file holding the client secret (confidential client); without it kura is a public client with PKCE'),
  scopes: z.array(z.string()).default(['openid', 'profile', 'email']).describe('scopes asked for (openid is always added)'),
  algorithms: z.array(z.enum(ASYMMETRIC)).min(1).default(['RS256', 'PS256', 'ES256', 'EdDSA']).describe('ID token signature algorithms accepted'),
  display: z.array(z.string()).default(['name', 'email']).describe('claims kept in tickets and audit lines as the person\'s display attributes'),
  clockSkew: z.number().int().min(0).max(300).default(30).describe('seconds of clock difference tolerated on exp, iat and auth_time'),
});
type Options = z.infer<typeof options>;

interface Discovery {
  issuer: string;
  authorization_endpoint: string;
  token_endpoint: string;
  jwks_uri: string;
}

const refuse = (name: string, reason: string) => new KuraError('E_SSO_FAILED', `sign-in at ${name} refused: ${reason}`, { provider: name, reason });

class OidcProvider implements IdentityProvider {
  readonly protocol = 'oidc';
  readonly callback = { method: 'GET' as const, path: 'callback' };
  private discovery: Promise<Discovery> | null = null;
  private jwks: ReturnType<typeof createRemoteJWKSet> | null = null;
  private readonly pending = new Map<string, { verifier: string; nonce: string; started: number }>();

  readonly files: ReadonlyArray<{ option: string; file: string; what: string }>;

  constructor(private readonly o: Options) {
    this.files = o.clientSecretFile ? [{ option: 'clientSecretFile', file: o.clientSecretFile, what: 'the OIDC client secret file' }] : [];
  }

  get name(): string {
    return this.o.name;
  }

  private discover(): Promise<Discovery> {
    this.discovery ??= (async () => {
      const url = `${this.o.issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
      let d: Discovery;
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        d = (await res.json()) as Discovery;
      } catch (e) {
        throw refuse(this.name, `its discovery document ${url} cannot be read (${(e as Error).message})`);
      }
      if (d.issuer !== this.o.issuer) throw refuse(this.name, `its discovery document names issuer ${d.issuer}, not ${this.o.issuer}`);
      this.jwks = createRemoteJWKSet(new URL(d.jwks_uri));
      return d;
    })().catch((e) => {
      this.discovery = null;
      throw e;
    });
    return this.discovery;
  }

  private redirectUri(base: string): string {
    return `${base}/sso/${this.name}/${this.callback.path}`;
  }

  async begin(o: { state: string; base: string; stepUp: boolean; acr?: string | undefined }): Promise<string> {
    const d = await this.discover();
    const verifier = randomBytes(32).toString('base64url');
    const nonce = randomBytes(16).toString('base64url');
    const now = Date.now();
    for (const [k, v] of this.pending) if (now - v.started > ABANDONED_MS) this.pending.delete(k);
    this.pending.set(o.state, { verifier, nonce, started: now });
    const u = new URL(d.authorization_endpoint);
    const scopes = new Set(['openid', ...this.o.scopes]);
    const q: Record<string, string> = {
      response_type: 'code',
      client_id: this.o.clientId,
      redirect_uri: this.redirectUri(o.base),
      scope: [...scopes].join(' '),
      state: o.state,
      nonce,
      code_challenge: createHash('sha256').update(verifier).digest('base64url'),
      code_challenge_method: 'S256',
    };
    if (o.stepUp) Object.assign(q, { max_age: '0', prompt: 'login' }, o.acr ? { acr_values: o.acr } : {});
    for (const [k, v] of Object.entries(q)) u.searchParams.set(k, v);
    return u.toString();
  }

  stateOf(params: URLSearchParams): string | null {
    return params.get('state');
  }

  async complete(o: { state: string; base: string; params: URLSearchParams; stepUp: boolean; acr?: string | undefined; started: number }): Promise<Identity> {
    const p = this.pending.get(o.state);
    this.pending.delete(o.state);
    if (!p) throw refuse(this.name, 'the answer is for no sign-in this vault started (or it was answered already)');
    const err = o.params.get('error');
    if (err) throw refuse(this.name, `the provider answered ${err}${o.params.get('error_description') ? `: ${o.params.get('error_description')}` : ''}`);
    const d = await this.discover();
    const iss = o.params.get('iss');
    if (iss !== null && iss !== d.issuer) throw refuse(this.name, `the answer came from issuer ${iss}, not ${d.issuer} (mix-up)`);
    const code = o.params.get('code');
    if (!code) throw refuse(this.name, 'the answer carries no authorization code');
    const form = new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: this.redirectUri(o.base), code_verifier: p.verifier, client_id: this.o.clientId });
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
    if (this.o.clientSecretFile) {
      const secret = readFileSync(this.o.clientSecretFile, 'utf8').trim();
      headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(this.o.clientId)}:${encodeURIComponent(secret)}`).toString('base64')}`;
    }
    let tokens: { id_token?: string };
    try {
      const res = await fetch(d.token_endpoint, { method: 'POST', headers, body: form, signal: AbortSignal.timeout(10_000) });
      tokens = (await res.json()) as { id_token?: string };
      if (!res.ok) throw new Error(`HTTP ${res.status} ${JSON.stringify(tokens).slice(0, 200)}`);
    } catch (e) {
      throw refuse(this.name, `the code exchange at ${d.token_endpoint} failed (${(e as Error).message})`);
    }
    if (typeof tokens.id_token !== 'string') throw refuse(this.name, 'the token endpoint returned no ID token');
    let claims: JWTPayload;
    try {
      ({ payload: claims } = await jwtVerify(tokens.id_token, this.jwks!, {
        issuer: d.issuer,
        audience: this.o.clientId,
        algorithms: [...this.o.algorithms],
        clockTolerance: this.o.clockSkew,
        requiredClaims: ['sub', 'exp', 'iat'],
      }));
    } catch (e) {
      const c = (e as { code?: string }).code ?? 'ERR_JWT';
      throw refuse(this.name, `the ID token does not verify (${c}: ${(e as Error).message})`);
    }
    if (claims.nonce !== p.nonce) throw refuse(this.name, 'the ID token\'s nonce is not the one this sign-in sent (replayed or injected token)');
    if (Array.isArray(claims.aud) && claims.aud.length > 1 && claims.azp !== this.o.clientId) throw refuse(this.name, `the ID token has several audiences and azp ${String(claims.azp)}, not ${this.o.clientId}`);
    const authTime = typeof claims.auth_time === 'number' ? claims.auth_time * 1000 : (claims.iat ?? 0) * 1000;
    const acr = typeof claims.acr === 'string' ? claims.acr : null;
    const display: Record<string, string> = {};
    for (const k of this.o.display) if (typeof claims[k] === 'string') display[k] = claims[k] as string;
    return { provider: this.name, subject: claims.sub!, claims, acr, authTime, display };
  }
}

registerModule({
  kind: 'sso',
  type: 'oidc',
  description: 'an OpenID Connect provider (authorization code + PKCE; ID token checked against its JWKS)',
  options,
  create: (o) => ({ signIn: true, provider: new OidcProvider(o as Options) }),
});
