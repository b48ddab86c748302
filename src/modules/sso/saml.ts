import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { CacheProvider, Profile, SAML, SamlConfig, ValidateInResponseTo } from '@node-saml/node-saml';
import { z } from 'zod';
import { KuraError } from '../../errors.js';
import type { Identity } from '../../sso/roles.js';
import { registerModule, type IdentityProvider } from '../registry.js';

// loaded when a SAML login is handled, not with every command: the library and its XML stack are a
// third of kura's code
const require = createRequire(import.meta.url);

/**
 * SAML 2.0 service provider (SP-initiated; AuthnRequest by HTTP-Redirect, Response by HTTP-POST
 * to the vault's ACS), on @node-saml/node-saml: a signed response or assertion is required (one
 * assertion only: a second, unsigned one is signature wrapping), audience, NotBefore /
 * NotOnOrAfter and InResponseTo (a request this vault issued, for this very sign-in) are checked;
 * kura adds what the library leaves out: the Issuer must be the IdP's, the Destination and the
 * Recipient this ACS, and an assertion ID is accepted once (replay cache). The subject is the
 * NameID (persistent expected), the attributes are the claims, AuthnContextClassRef the level.
 */
/** how long a request this vault issued may be answered (sign-ins expire earlier: vault.sso.loginTimeout) */
const REQUEST_TTL_MS = 60 * 60_000;
const PERSISTENT = 'urn:oasis:names:tc:SAML:2.0:nameid-format:persistent';

const options = z.strictObject({
  type: z.literal('saml'),
  name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/, 'a provider name: lower-case letters, digits and dashes').default('saml').describe('name of this identity provider (in URLs, tickets, audit lines and claim rules)'),
  entryPoint: z.string().url().describe('the IdP\'s single sign-on URL (HTTP-Redirect binding)').meta({ examples: ['https://idp.example.org/saml2/sso'] }),
  idpIssuer: z.string().min(1).describe('the IdP\'s entity ID (the Issuer of its responses)'),
  idpCert: z.string().min(1).describe('the IdP\'s signing certificate: a PEM file, or the PEM itself'),
  entityId: z.string().optional().describe('kura\'s entity ID at the IdP (default: <vault.sso.publicUrl>/sso/<name>/metadata)'),
  nameIdFormat: z.string().default(PERSISTENT).describe('the NameID format asked for (persistent: a pseudonymous, stable ID)'),
  display: z.array(z.string()).default([]).describe('attributes kept in tickets and audit lines as the person\'s display attributes').meta({ examples: [['displayName', 'mail']] }),
  clockSkew: z.number().int().min(0).max(300).default(30).describe('seconds of clock difference tolerated on NotBefore / NotOnOrAfter'),
});
type Options = z.infer<typeof options>;

const refuse = (name: string, reason: string) => new KuraError('E_SSO_FAILED', `sign-in at ${name} refused: ${reason}`, { provider: name, reason });

/** Request IDs this vault issued (node-saml's InResponseTo check), and which sign-in each was for. */
class Requests implements CacheProvider {
  readonly ids = new Map<string, { created: number; state: string }>();
  async saveAsync(key: string, value: string) {
    return { value, createdAt: Date.now() };
  }
  async getAsync(key: string): Promise<string | null> {
    const r = this.ids.get(key);
    return r ? new Date(r.created).toISOString() : null;
  }
  async removeAsync(key: string | null): Promise<string | null> {
    if (key === null) return null;
    const r = this.ids.get(key);
    this.ids.delete(key);
    return r ? key : null;
  }
}

const attr = (xml: string, element: string, attribute: string): string | null => {
  const m = new RegExp(`<(?:[\\w-]+:)?${element}\\b[^>]*?\\s${attribute}="([^"]*)"`).exec(xml);
  return m ? m[1]! : null;
};
const text = (xml: string, element: string): string | null => {
  const m = new RegExp(`<(?:[\\w-]+:)?${element}\\b[^>]*>([^<]*)<`).exec(xml);
  return m ? m[1]!.trim() : null;
};

class SamlProvider implements IdentityProvider {
  readonly protocol = 'saml';
  readonly callback = { method: 'POST' as const, path: 'acs' };
  private readonly requests = new Requests();
  /** assertion IDs accepted, until they expire (NotOnOrAfter) */
  private readonly seen = new Map<string, number>();
  private readonly cert: string;

  readonly files: ReadonlyArray<{ option: string; file: string; what: string }>;

  constructor(private readonly o: Options) {
    const pem = o.idpCert.includes('-----BEGIN');
    this.files = pem ? [] : [{ option: 'idpCert', file: o.idpCert, what: 'the SAML IdP\'s signing certificate' }];
    this.cert = pem ? o.idpCert : existsSync(o.idpCert) ? readFileSync(o.idpCert, 'utf8') : o.idpCert;
  }

  get name(): string {
    return this.o.name;
  }

  private acs(base: string): string {
    return `${base}/sso/${this.name}/acs`;
  }

  private entityId(base: string): string {
    return this.o.entityId ?? `${base}/sso/${this.name}/metadata`;
  }

  private saml(base: string, extra: Partial<SamlConfig> = {}): SAML {
    const { SAML } = require('@node-saml/node-saml') as typeof import('@node-saml/node-saml');
    return new SAML({
      callbackUrl: this.acs(base),
      entryPoint: this.o.entryPoint,
      issuer: this.entityId(base),
      audience: this.entityId(base),
      idpCert: this.cert,
      idpIssuer: this.o.idpIssuer,
      identifierFormat: this.o.nameIdFormat,
      wantAssertionsSigned: false, // the response or the assertion: node-saml then requires the assertion's own signature when the response has none
      wantAuthnResponseSigned: false,
      validateInResponseTo: 'always' as ValidateInResponseTo,
      requestIdExpirationPeriodMs: REQUEST_TTL_MS,
      cacheProvider: this.requests,
      acceptedClockSkewMs: this.o.clockSkew * 1000,
      disableRequestedAuthnContext: true,
      ...extra,
    });
  }

  metadata(base: string): string {
    return this.saml(base).generateServiceProviderMetadata(null, null);
  }

  async begin(o: { state: string; base: string; stepUp: boolean; acr?: string | undefined }): Promise<string> {
    const id = `_${randomBytes(20).toString('hex')}`;
    const step: Partial<SamlConfig> = o.stepUp ? { forceAuthn: true, ...(o.acr ? { disableRequestedAuthnContext: false, authnContext: [o.acr], racComparison: 'minimum' } : {}) } : {};
    const url = await this.saml(o.base, { ...step, generateUniqueId: () => id }).getAuthorizeUrlAsync(o.state, undefined, {});
    const now = Date.now();
    for (const [k, r] of this.requests.ids) if (now - r.created > REQUEST_TTL_MS) this.requests.ids.delete(k);
    this.requests.ids.set(id, { created: now, state: o.state });
    return url;
  }

  /** The sign-in a response answers: its RelayState, or (an IdP that drops it) the request it answers. */
  stateOf(params: URLSearchParams): string | null {
    const relay = params.get('RelayState');
    if (relay) return relay;
    const xml = Buffer.from(params.get('SAMLResponse') ?? '', 'base64').toString('utf8');
    const id = attr(xml, 'Response', 'InResponseTo');
    return id ? (this.requests.ids.get(id)?.state ?? null) : null;
  }

  async complete(o: { state: string; base: string; params: URLSearchParams }): Promise<Identity> {
    const b64 = o.params.get('SAMLResponse');
    if (!b64) throw refuse(this.name, 'the answer carries no SAMLResponse');
    const xml = Buffer.from(b64, 'base64').toString('utf8');
    const destination = attr(xml, 'Response', 'Destination');
    if (destination !== null && destination !== this.acs(o.base)) throw refuse(this.name, `the response is addressed to ${destination}, not this vault's ACS ${this.acs(o.base)}`);
    const inResponseTo = attr(xml, 'Response', 'InResponseTo');
    const request = inResponseTo ? this.requests.ids.get(inResponseTo) : undefined;
    if (!request) throw refuse(this.name, `the response answers ${inResponseTo ? `request ${inResponseTo}, which this vault did not issue (or was answered already)` : 'no request (unsolicited responses are not accepted)'}`);
    if (request.state !== o.state) throw refuse(this.name, 'the response answers a request of another sign-in');
    let profile: Profile | null;
    try {
      ({ profile } = await this.saml(o.base).validatePostResponseAsync({ SAMLResponse: b64 }));
    } catch (e) {
      throw refuse(this.name, `the response does not verify (${(e as Error).message})`);
    } finally {
      this.requests.ids.delete(inResponseTo!);
    }
    if (!profile) throw refuse(this.name, 'the response carries no assertion');
    // node-saml checks the issuer of logout messages only
    if (profile.issuer !== this.o.idpIssuer) throw refuse(this.name, `the assertion was issued by ${profile.issuer ?? 'nobody'}, not ${this.o.idpIssuer}`);
    const assertion = profile.getAssertionXml?.() ?? '';
    const recipient = attr(assertion, 'SubjectConfirmationData', 'Recipient');
    if (recipient !== this.acs(o.base)) throw refuse(this.name, `the assertion's Recipient is ${recipient ?? 'missing'}, not this vault's ACS ${this.acs(o.base)}`);
    const id = (profile.getAssertion?.() as { Assertion?: { $?: { ID?: string } } } | undefined)?.Assertion?.$?.ID ?? attr(assertion, 'Assertion', 'ID');
    if (!id) throw refuse(this.name, 'the assertion has no ID');
    const now = Date.now();
    for (const [k, until] of this.seen) if (until < now) this.seen.delete(k);
    if (this.seen.has(id)) throw refuse(this.name, `assertion ${id} was presented before (replay)`);
    const notOnOrAfter = Date.parse(attr(assertion, 'Conditions', 'NotOnOrAfter') ?? '') || now + 24 * 3600_000;
    this.seen.set(id, notOnOrAfter + this.o.clockSkew * 1000);
    if (!profile.nameID) throw refuse(this.name, 'the assertion has no NameID');
    const claims: Record<string, unknown> = { ...((profile.attributes as Record<string, unknown> | undefined) ?? {}) };
    const display: Record<string, string> = {};
    for (const k of this.o.display) {
      const v = claims[k];
      if (typeof v === 'string') display[k] = v;
      else if (Array.isArray(v) && typeof v[0] === 'string') display[k] = v[0];
    }
    const instant = Date.parse(attr(assertion, 'AuthnStatement', 'AuthnInstant') ?? '');
    return {
      provider: this.name,
      subject: profile.nameID,
      claims: { ...claims, nameIDFormat: profile.nameIDFormat },
      acr: text(assertion, 'AuthnContextClassRef'),
      authTime: Number.isFinite(instant) ? instant : now,
      display,
    };
  }
}

registerModule({
  kind: 'sso',
  type: 'saml',
  description: 'a SAML 2.0 identity provider (SP-initiated, signed responses or assertions, replay cache)',
  options,
  create: (o) => ({ signIn: true, provider: new SamlProvider(o as Options) }),
});
