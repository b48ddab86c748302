import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { KuraError, isKuraError } from '../../errors.js';
import { parseDuration } from '../../config/duration.js';
import type { KuraConfig } from '../../config/schema.js';
import { modulesOf } from '../../modules/index.js';
import type { IdentityProvider } from '../../modules/registry.js';
import { grantsOf, levelAtLeast, type Identity, type SsoPolicy } from '../../sso/roles.js';
import { TicketKey, type OperatorTicket } from '../../sso/ticket.js';
import { describeRoles } from '../../sso/describe.js';
import type { AuditLog } from '../audit.js';
import { choosePage, notFoundPage, refusedPage, signedInPage } from './pages.js';
import { SignIns, type PendingSignIn } from './signins.js';

type VaultSso = NonNullable<NonNullable<KuraConfig['vault']>['sso']>;
const MAX_FORM = 1 << 20;
const STEP_UP_SKEW_MS = 60_000;

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The SSO policy of a vault config: levels, tenants' operator rules and minimum levels, system administrators. */
export function ssoPolicyOf(vault: NonNullable<KuraConfig['vault']>): SsoPolicy {
  const sso = vault.sso;
  return {
    levels: sso?.levels ?? [],
    tenants: Object.fromEntries(Object.entries(vault.tenants).map(([t, c]) => [t, { operators: c.operators, minLevel: c.minLevel }])),
    systemAdmins: sso?.systemAdmins ?? [],
  };
}

/**
 * The vault's operator endpoint (vault.sso): where a person finishes the sign-in `kura login`
 * started. It is the SAML service provider and the OIDC relying party of every provider of
 * modules.sso; a sign-in it accepts becomes an operator ticket (roles from grantsOf, signed with
 * the vault's ticket key); every sign-in, accepted or refused, is an audit line.
 *
 *   GET  /login/<id>               the sign-in's page: its code and the providers (or straight to the only one)
 *   GET  /login/<id>/<provider>    on to the provider
 *   GET  /sso/<provider>/callback  OIDC redirect URI;  POST /sso/<provider>/acs  SAML ACS
 *   GET  /sso/<provider>/metadata  SAML SP metadata
 */
export class OperatorEndpoint {
  readonly providers: ReadonlyMap<string, IdentityProvider>;
  readonly signIns: SignIns;
  private readonly states = new Map<string, { signIn: PendingSignIn; provider: IdentityProvider }>();
  private readonly key: TicketKey;
  private server: http.Server | null = null;
  base = '';

  constructor(
    private readonly cfg: KuraConfig,
    private readonly audit: AuditLog,
  ) {
    const vault = cfg.vault!;
    const sso = vault.sso!;
    const list = modulesOf(cfg, 'sso').flatMap((m) => (m.provider ? [m.provider] : []));
    this.providers = new Map(list.map((p) => [p.name, p]));
    if (this.providers.size < list.length) throw new KuraError('E_CONFIG', `two entries of modules.sso have the same name (${list.map((p) => p.name).join(', ')}): give each its own name`);
    if (this.providers.size === 0) throw new KuraError('E_CONFIG', 'vault.sso is set but modules.sso names no identity provider: add an oidc or saml entry (docs/sso.md)');
    if (!sso.tls && !isLoopback(sso.listen.host)) throw new KuraError('E_CONFIG', `vault.sso.listen.host ${sso.listen.host} is not a loopback address: set vault.sso.tls (cert and key) so that sign-ins travel over HTTPS`);
    this.key = TicketKey.loadOrCreate(sso.ticketKey ?? path.join(vault.root, 'ticket_key'));
    this.signIns = new SignIns(parseDuration(sso.loginTimeout)!, (p) =>
      this.audit.write({ event: 'sso-login', outcome: 'refused', tenant: p.origin.tenant, session: p.origin.session, login: p.code, code: 'E_SSO_FAILED', reason: 'timeout: the sign-in was not finished in the browser' }),
    );
  }

  private get sso(): VaultSso {
    return this.cfg.vault!.sso!;
  }

  async start(): Promise<number> {
    const { listen, tls } = this.sso;
    const handler = (req: IncomingMessage, res: ServerResponse) => void this.handle(req, res);
    this.server = tls ? https.createServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, handler) : http.createServer(handler);
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', (e) => reject(new KuraError('E_CONFIG', `the operator endpoint cannot listen on ${listen.host}:${listen.port} (${e.message}): change vault.sso.listen`)));
      this.server!.listen(listen.port, listen.host, () => resolve());
    });
    const port = (this.server.address() as AddressInfo).port;
    const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
    this.base = (this.sso.publicUrl ?? `${tls ? 'https' : 'http'}://${host}:${port}`).replace(/\/$/, '');
    return port;
  }

  async close(): Promise<void> {
    this.signIns.endAll('the vault is stopping: run kura login again once it is back');
    const s = this.server;
    if (!s) return;
    this.server = null;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }

  /** LOGIN_BEGIN: a new sign-in for the person at the other end of a session. */
  begin(o: { provider?: string | undefined; stepUp: boolean; origin: PendingSignIn['origin'] }): { url: string; code: string; expires: number; id: string } {
    if (o.provider !== undefined && !this.providers.has(o.provider)) {
      throw new KuraError('E_USAGE', `this vault trusts no identity provider named ${JSON.stringify(o.provider)}; it trusts: ${[...this.providers.keys()].join(', ')}`);
    }
    const p = this.signIns.create({ stepUp: o.stepUp, provider: o.provider, origin: o.origin });
    this.audit.write({ event: 'sso-login-start', outcome: 'ok', tenant: o.origin.tenant, session: o.origin.session, login: p.code, stepUp: o.stepUp, ...(o.provider ? { provider: o.provider } : {}) });
    return { url: `${this.base}/login/${p.id}`, code: p.code, expires: p.expires, id: p.id };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? '/', this.base || 'http://localhost');
      const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
      if (req.method === 'GET' && parts[0] === 'login' && parts.length === 2) return this.loginPage(res, parts[1]!);
      if (req.method === 'GET' && parts[0] === 'login' && parts.length === 3) return await this.toProvider(res, parts[1]!, parts[2]!);
      if (parts[0] === 'sso' && parts.length === 3) {
        const provider = this.providers.get(parts[1]!);
        if (provider && parts[2] === 'metadata' && req.method === 'GET' && provider.metadata) return send(res, 200, provider.metadata(this.base), 'application/samlmetadata+xml');
        if (provider && parts[2] === provider.callback.path && req.method === provider.callback.method) {
          const params = req.method === 'POST' ? new URLSearchParams(await readForm(req)) : url.searchParams;
          return await this.answer(res, provider, params, req.socket.remoteAddress);
        }
      }
      if (req.method === 'GET' && url.pathname === '/healthz') return send(res, 200, 'ok\n', 'text/plain');
      send(res, 404, notFoundPage());
    } catch (e) {
      const err = isKuraError(e) ? e : new KuraError('E_INTERNAL', (e as Error).message);
      send(res, err.code === 'E_USAGE' ? 400 : 500, refusedPage(err.code, err.message));
    }
  }

  private loginPage(res: ServerResponse, id: string): void {
    const p = this.signIns.open(id);
    if (!p) return send(res, 404, notFoundPage());
    const names = p.provider ? [p.provider] : [...this.providers.keys()];
    if (names.length === 1) return redirect(res, `${this.base}/login/${id}/${encodeURIComponent(names[0]!)}`);
    send(res, 200, choosePage(p.code, names.map((name) => ({ name, href: `${this.base}/login/${id}/${encodeURIComponent(name)}` }))));
  }

  private async toProvider(res: ServerResponse, id: string, name: string): Promise<void> {
    const p = this.signIns.open(id);
    const provider = this.providers.get(name);
    if (!p || !provider || (p.provider !== undefined && p.provider !== name)) return send(res, 404, notFoundPage());
    const state = randomBytes(24).toString('base64url');
    this.states.set(state, { signIn: p, provider });
    setTimeout(() => this.states.delete(state), p.expires - Date.now() + 1000).unref();
    redirect(res, await provider.begin({ state, base: this.base, stepUp: p.stepUp, acr: p.stepUp ? this.sso.sensitive.acr : undefined }));
  }

  /** The provider's answer: checked, turned into a ticket or a refusal, audited either way. */
  private async answer(res: ServerResponse, provider: IdentityProvider, params: URLSearchParams, ip: string | undefined): Promise<void> {
    const state = provider.stateOf(params);
    const entry = state ? this.states.get(state) : undefined;
    if (state) this.states.delete(state);
    if (!entry || entry.provider !== provider || entry.signIn.outcome !== null || Date.now() >= entry.signIn.expires) {
      const reason = `an answer from ${provider.name} for no open sign-in of this vault (unknown, finished or expired; replayed or unsolicited)`;
      this.audit.write({ event: 'sso-login', outcome: 'refused', provider: provider.name, ip, code: 'E_SSO_FAILED', reason });
      return send(res, 400, refusedPage('E_SSO_FAILED', reason));
    }
    const p = entry.signIn;
    const where = { tenant: p.origin.tenant, session: p.origin.session, login: p.code, provider: provider.name, ip };
    try {
      const identity = await provider.complete({ state: state!, base: this.base, params, stepUp: p.stepUp, acr: this.sso.sensitive.acr, started: p.started });
      const { refused, ...issued } = this.ticketFor(identity, p);
      this.signIns.settle(p, issued);
      const t = issued.ticket;
      this.audit.write({ event: 'sso-login', outcome: 'ok', ...where, subject: t.subject, display: t.display, roles: t.tenants, systemAdmin: t.systemAdmin, ...(Object.keys(refused).length ? { refusedTenants: refused } : {}), acr: t.acr, authTime: new Date(t.authTime).toISOString(), ticket: t.id, expires: new Date(t.expires).toISOString(), stepUp: p.stepUp });
      send(res, 200, signedInPage(t.display?.name ?? t.display?.email ?? t.subject, describeRoles(t)));
    } catch (e) {
      const err = isKuraError(e) ? e : new KuraError('E_SSO_FAILED', `sign-in at ${provider.name} failed: ${(e as Error).message}`, { reason: (e as Error).message });
      this.signIns.settle(p, err);
      this.audit.write({ event: 'sso-login', outcome: 'refused', ...where, ...(err.details?.subject ? { subject: err.details.subject } : {}), code: err.code, reason: err.message });
      send(res, 403, refusedPage(err.code, err.message));
    }
  }

  private ticketFor(identity: Identity, p: PendingSignIn): { token: string; ticket: OperatorTicket; refused: Record<string, string> } {
    const sso = this.sso;
    if (p.stepUp) {
      if (identity.authTime < p.started - STEP_UP_SKEW_MS) {
        throw new KuraError('E_SSO_FAILED', `a step-up needs a fresh sign-in; ${identity.provider} reused one from ${new Date(identity.authTime).toISOString()}`, { subject: identity.subject });
      }
      if (sso.sensitive.acr !== undefined && !levelAtLeast(identity.acr, sso.sensitive.acr, sso.levels)) {
        throw new KuraError('E_SSO_FAILED', `a step-up needs sign-in level ${sso.sensitive.acr}; ${identity.provider} asserted ${identity.acr ?? 'none'}`, { subject: identity.subject });
      }
    }
    const grants = grantsOf(identity, ssoPolicyOf(this.cfg.vault!));
    if (Object.keys(grants.tenants).length === 0 && !grants.systemAdmin) {
      const why = Object.values(grants.refused);
      throw new KuraError('E_SSO_FAILED', `${identity.provider} signed in ${identity.subject}, who has no role on this vault${why.length ? ` (${why.join('; ')})` : ': ask the vault\'s administrator to map your claims (vault.tenants.<t>.operators)'}`, { subject: identity.subject });
    }
    const now = Date.now();
    const issued = this.key.issue({
      subject: identity.subject,
      provider: identity.provider,
      ...(identity.display && Object.keys(identity.display).length ? { display: identity.display } : {}),
      tenants: grants.tenants,
      systemAdmin: grants.systemAdmin,
      acr: identity.acr,
      authTime: identity.authTime,
      issued: now,
      expires: now + parseDuration(sso.ticketTtl)!,
    });
    return { ...issued, refused: grants.refused };
  }
}

function send(res: ServerResponse, status: number, body: string, type = 'text/html; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-frame-options': 'DENY', 'referrer-policy': 'no-referrer' });
  res.end(body);
}

function redirect(res: ServerResponse, location: string): void {
  res.writeHead(302, { location, 'cache-control': 'no-store', 'referrer-policy': 'no-referrer' });
  res.end();
}

async function readForm(req: IncomingMessage): Promise<string> {
  let size = 0;
  const parts: Buffer[] = [];
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_FORM) throw new KuraError('E_USAGE', `the form is larger than ${MAX_FORM} bytes`);
    parts.push(c);
  }
  return Buffer.concat(parts).toString('utf8');
}
