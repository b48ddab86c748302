import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { tempDir } from './support/cli.js';
import { parseConfig } from '../src/config/load.js';
import { modulesOf } from '../src/modules/index.js';
import { AuditLog } from '../src/vault/audit.js';
import { OperatorEndpoint } from '../src/vault/operator/endpoint.js';
import { KuraError } from '../src/errors.js';

/** The operator endpoint on its own (no providers contacted): config rules, HTTPS, expiry of unfinished sign-ins. */
const oidc = '{ type: oidc, name: login, issuer: "http://127.0.0.1:9/", clientId: kura }';
const cfg = (dir: string, sso: string, modules = `modules:\n  sso: ${oidc}\n`) =>
  parseConfig(`${modules}vault:\n  root: ${dir}/vault\n  sso:\n${sso}  tenants:\n    city-a:\n      operators: [{ claim: groups, value: a, role: restore }]\n`, 'test.yaml');
const refusal = (fn: () => unknown): KuraError => {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof KuraError, String(e));
    return e;
  }
  assert.fail('no refusal');
};

test('modules.sso: one provider, a list of them, or none (every existing config stays valid)', (t) => {
  const dir = tempDir(t);
  assert.deepEqual(modulesOf(parseConfig('tenant: x\n', 'a.yaml'), 'sso').map((m) => m.provider), [null]);
  assert.deepEqual(modulesOf(cfg(dir, '    listen: { port: 0 }\n'), 'sso').map((m) => m.provider?.name), ['login']);
  const many = cfg(dir, '    listen: { port: 0 }\n', `modules:\n  sso:\n    - ${oidc}\n    - { type: saml, entryPoint: "http://127.0.0.1:9/sso", idpIssuer: idp, idpCert: x }\n`);
  assert.deepEqual(modulesOf(many, 'sso').map((m) => `${m.provider?.protocol}:${m.provider?.name}`), ['oidc:login', 'saml:saml']);
  assert.throws(() => parseConfig(`modules:\n  sso: { type: oidc, issuer: "http://x/", clientId: k, algorithms: [HS256] }\n`, 'b.yaml'), /algorithms/);
  assert.throws(() => parseConfig(`modules:\n  sso: { type: oidc, issuer: "http://x/", clientId: k, algorithms: [none] }\n`, 'b.yaml'), /algorithms/);
});

test('the operator endpoint: E_CONFIG without a provider or (off loopback) without TLS; HTTPS with vault.sso.tls; unfinished sign-ins expire, audited', async (t) => {
  const dir = tempDir(t);
  const audit = new AuditLog(path.join(dir, 'audit.jsonl'));
  const none = refusal(() => new OperatorEndpoint(cfg(dir, '    listen: { port: 0 }\n', ''), audit));
  assert.equal(none.code, 'E_CONFIG');
  assert.match(none.message, /modules\.sso names no identity provider/);
  const twice = refusal(() => new OperatorEndpoint(cfg(dir, '    listen: { port: 0 }\n', `modules:\n  sso: [${oidc}, ${oidc}]\n`), audit));
  assert.equal(twice.code, 'E_CONFIG');
  assert.match(twice.message, /same name/);
  const open = refusal(() => new OperatorEndpoint(cfg(dir, '    listen: { host: 0.0.0.0, port: 0 }\n'), audit));
  assert.equal(open.code, 'E_CONFIG');
  assert.match(open.message, /set vault\.sso\.tls/);

  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${dir}/op.key`, '-out', `${dir}/op.crt`, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  const ep = new OperatorEndpoint(cfg(dir, `    listen: { port: 0 }\n    tls: { cert: ${dir}/op.crt, key: ${dir}/op.key }\n    loginTimeout: 1s\n`), audit);
  const port = await ep.start();
  t.after(() => ep.close());
  assert.equal(ep.base, `https://127.0.0.1:${port}`);
  const body = await new Promise<string>((resolve, reject) =>
    https.get(`${ep.base}/healthz`, { ca: readFileSync(`${dir}/op.crt`) }, (res) => {
      let s = '';
      res.on('data', (d) => (s += d)).on('end', () => resolve(s));
    }).on('error', reject),
  );
  assert.equal(body, 'ok\n');

  assert.equal(refusal(() => ep.begin({ provider: 'nope', stepUp: false, origin: { tenant: 'city-a', session: 's1' } })).code, 'E_USAGE');
  const b = ep.begin({ stepUp: false, origin: { tenant: 'city-a', session: 's1' } });
  assert.match(b.code, /^[A-Z]{4}-[A-Z]{4}$/);
  assert.ok(b.url.startsWith(`${ep.base}/login/`));
  const p = ep.signIns.open(b.id)!;
  await assert.rejects(ep.signIns.wait(p), (e: KuraError) => e.code === 'E_SSO_FAILED' && /not finished within 1 s/.test(e.message));
  const lines = readFileSync(path.join(dir, 'audit.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(
    lines.filter((l) => l.login === b.code).map((l) => [l.event, l.outcome, l.code ?? null]),
    [
      ['sso-login-start', 'ok', null],
      ['sso-login', 'refused', 'E_SSO_FAILED'],
    ],
  );
  assert.equal(ep.signIns.open(b.id), null, 'an expired sign-in is no longer open');
});

test('kura config check names the files vault.sso and modules.sso refer to', async (t) => {
  const dir = tempDir(t);
  const { fileReferences } = await import('../src/config/references.js');
  const c = cfg(dir, `    listen: { port: 0 }\n    tls: { cert: ${dir}/missing.crt, key: ${dir}/missing.key }\n`, `modules:\n  sso:\n    - { type: oidc, issuer: "http://127.0.0.1:9/", clientId: k, clientSecretFile: ${dir}/secret }\n    - { type: saml, entryPoint: "http://127.0.0.1:9/sso", idpIssuer: idp, idpCert: ${dir}/idp.crt }\n`);
  assert.deepEqual(
    fileReferences(c, () => 'is missing', { vault: true }).map((i) => i.path),
    ['vault.sso.tls.cert', 'vault.sso.tls.key', 'modules.sso[0].clientSecretFile', 'modules.sso[1].idpCert'],
  );
});
