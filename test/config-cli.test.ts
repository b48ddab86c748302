import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { kura, kuraJson, kuraOk, tempDir } from './support/cli.js';

function configFile(dir: string, text: string): string {
  mkdirSync(dir, { recursive: true });
  const f = path.join(dir, 'kura.yaml');
  writeFileSync(f, text);
  return f;
}

test('config check names the exact path and reason of every error', (t) => {
  const dir = tempDir(t);
  const f = configFile(
    dir,
    `sources:
  juki:
    type: postgres
    schedule: "61 * * * *"
    timeout: soon
  zei:
    type: oracle
  kokuho:
    type: command
    comand: /opt/export
modules:
  routing:
    type: carrier-pigeon
`,
  );
  const r = kura(['config', 'check', '--config', f]);
  assert.equal(r.status, 78);
  assert.match(r.stderr, /E_CONFIG/);
  assert.match(r.stderr, /sources\.juki\.schedule: invalid cron expression "61 \* \* \* \*"/);
  assert.match(r.stderr, /sources\.juki\.timeout: invalid duration "soon"/);
  assert.match(r.stderr, /sources\.zei\.type: unknown source type "oracle"/);
  assert.match(r.stderr, /sources\.kokuho: Unrecognized key: "comand"/);
  assert.match(r.stderr, /sources\.kokuho\.command: required setting is missing/);
  assert.match(r.stderr, /modules\.routing\.type: unknown routing module type "carrier-pigeon"; known: static/);
});

test('config check reports YAML syntax errors with line and column', (t) => {
  const dir = tempDir(t);
  const f = configFile(dir, 'sources:\n  juki:\n    type: [postgres\n');
  const r = kura(['config', 'check', '--config', f]);
  assert.equal(r.status, 78);
  assert.match(r.stderr, /kura\.yaml:\d+:\d+:/);
});

test('a config path that does not exist is a config error that says what to do', (t) => {
  const dir = tempDir(t);
  const r = kura(['snapshots', '--config', path.join(dir, 'missing.yaml')]);
  assert.equal(r.status, 78);
  assert.match(r.stderr, /E_CONFIG: config file .*missing\.yaml does not exist/);
  const viaEnv = kura(['config', 'check'], { env: { KURA_CONFIG: path.join(dir, 'nope.yaml') } });
  assert.equal(viaEnv.status, 78);
});

test('the generated example config is itself a valid config', (t) => {
  const dir = tempDir(t);
  const example = kuraOk(['config', 'example']).out;
  assert.match(example, /^# kura configuration/);
  assert.match(example, /modules:/);
  assert.match(example, /# one of \d+ kinds, chosen by `type`: postgres/);
  const f = configFile(dir, example);
  const checked = kuraJson<{ ok: boolean; config: { sources: Record<string, unknown>; modules: { routing: { type: string } } } }>(['config', 'check', '--config', f]);
  assert.equal(checked.ok, true);
  assert.ok(checked.config.sources.juki, 'the example has a source');
  assert.equal(checked.config.modules.routing.type, 'static');
});

test('--repo and the key can come from the config', (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  const pass = path.join(dir, 'pass');
  writeFileSync(pass, 'from the config file\n');
  const f = configFile(dir, `tenant: city-a\nrepository:\n  path: ${repo}\n  passphraseFile: ${pass}\n  compression: 7\n`);
  const env = { KURA_PASSPHRASE: undefined, KURA_CONFIG: f };
  kuraOk(['repo', 'init'], { env });
  // the repository the config names gets its compression level; --compression, or --repo, does not take it
  const levelOf = (r: string) => (JSON.parse(readFileSync(path.join(r, 'config'), 'utf8')) as { compression: { level: number } }).compression.level;
  assert.equal(levelOf(repo), 7);
  kuraOk(['repo', 'init', '--repo', path.join(dir, 'other'), '--passphrase-file', pass], { env });
  assert.equal(levelOf(path.join(dir, 'other')), 3);
  kuraOk(['repo', 'init', '--repo', path.join(dir, 'third'), '--passphrase-file', pass, '--compression', '1'], { env });
  assert.equal(levelOf(path.join(dir, 'third')), 1);
  const bad = kura(['repo', 'init', '--repo', path.join(dir, 'bad'), '--passphrase-file', pass, '--compression', '23'], { env });
  assert.equal(bad.status, 64);
  assert.match(bad.stderr, /E_USAGE.*0 \(none\) to 22/);
  const badConfig = kura(['config', 'check'], { env: { KURA_CONFIG: configFile(path.join(dir, 'bad-config'), `repository:\n  path: ${repo}\n  compression: 23\n`) } });
  assert.notEqual(badConfig.status, 0);
  assert.match(badConfig.stderr + badConfig.out, /repository\.compression/);
  const id = kuraOk(['backup', '--name', 'x', '--stdin'], { env, input: 'hello' }).out.trim();
  const rows = kuraJson<Array<{ id: string; tenant: string }>>(['snapshots'], { env });
  assert.deepEqual(rows.map((r) => [r.id, r.tenant]), [[id, 'city-a']]);
  assert.equal(kuraOk(['restore', 'latest:x'], { env }).out, 'hello');
});

test('every command has help; commands that need config sections say which is missing', (t) => {
  for (const args of [['agent', 'run'], ['agent', 'daemon'], ['vault', 'prune'], ['vault', 'gc'], ['vault', 'usage'], ['prune'], ['gc'], ['protect'], ['unprotect']]) {
    assert.equal(kura([...args, '--help']).status, 0, args.join(' '));
  }
  const dir = tempDir(t);
  const cfg = path.join(dir, 'kura.yaml');
  writeFileSync(cfg, `repository:\n  path: ${path.join(dir, 'repo')}\n`);
  const noSources = kura(['agent', 'run'], { env: { KURA_CONFIG: cfg } });
  assert.equal(noSources.status, 78);
  assert.match(noSources.stderr, /E_CONFIG: the config has no sources/);
  const noVault = kura(['vault', 'usage'], { env: { KURA_CONFIG: cfg } });
  assert.equal(noVault.status, 78);
  assert.match(noVault.stderr, /E_CONFIG: no vault section/);
});

test('usage errors exit 64 and say what is wrong', () => {
  const r = kura(['backup', '--repo', '/tmp/x', '--name', 'a']);
  assert.equal(r.status, 64);
  assert.match(r.stderr, /--stdin or --file/);
  assert.equal(kura(['no-such-command']).status, 64);
  assert.equal(kura(['--help']).status, 0);
  assert.match(kura(['--help']).out, /backup/);
});

test('relay and vault commands need their config sections and say so', (t) => {
  const dir = tempDir(t);
  const f = configFile(dir, 'tenant: city-a\n');
  const v = kura(['vault', 'serve', '--config', f]);
  assert.equal(v.status, 78);
  assert.match(v.stderr, /no vault section/);
  const b = kura(['backup', '--repo', path.join(dir, 'r'), '--name', 'x', '--stdin', '--route', 'nowhere', '--config', f], { input: 'x' });
  assert.equal(b.status, 78);
  assert.match(b.stderr, /route "nowhere" is not in modules.routing.routes/);
});

test('sections left out of the config get every default of their settings', (t) => {
  const dir = tempDir(t);
  const checked = kuraJson<{ config: { relay: { keepalive: string; backoff: { max: string } }; logging: { level: string } } }>(['config', 'check', '--config', configFile(dir, 'tenant: city-a\n')]);
  assert.equal(checked.config.relay.keepalive, '15s');
  assert.equal(checked.config.relay.backoff.max, '10m');
  assert.equal(checked.config.logging.level, 'info');
});

test('config check and every daemon\'s start check what the config names: routes of sources, key, password and certificate files, each error at its path', (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  const pw = path.join(dir, 'juki.pw');
  writeFileSync(pw, 'secret\n');
  let n = 0;
  const base = (extra: { route?: string; pw?: string; clientKey?: string; ca?: string }) =>
    configFile(
      path.join(dir, `c${n++}`),
      `tenant: city-a\nrepository:\n  path: ${repo}\n` +
        `sources:\n  juki:\n    type: postgres\n    uri: postgresql://backup@127.0.0.1:1/juki\n    passwordFile: ${extra.pw ?? pw}\n    routes: [peer-dc, ${extra.route ?? 'peer-dc'}]\n` +
        `modules:\n  routing:\n    type: static\n    routes:\n      peer-dc:\n        endpoints: [{ host: 127.0.0.1, port: 9 }]\n        clientKey: ${extra.clientKey ?? pw}\n` +
        (extra.ca ? `notifications:\n  email:\n    - { host: 127.0.0.1, from: a@b.test, to: [c@d.test], caFile: ${extra.ca} }\n` : ''),
    );
  const env = (f: string) => ({ KURA_CONFIG: f });

  assert.equal(kura(['config', 'check'], { env: env(base({})) }).status, 0, 'a config whose references hold');
  const badRoute = kura(['config', 'check'], { env: env(base({ route: 'office' })) });
  assert.equal(badRoute.status, 78);
  assert.match(badRoute.stderr, /sources\.juki\.routes\[1\]: names route "office", which is not in modules\.routing\.routes \(known: peer-dc\)/);
  assert.equal(kura(['snapshots'], { env: env(base({ route: 'office' })) }).status, 78, 'any command refuses a config whose sources name a route that does not exist');

  const missing = base({ pw: path.join(dir, 'nope.pw'), clientKey: path.join(dir, 'no-key'), ca: path.join(dir, 'no-ca.pem') });
  const checked = kura(['config', 'check'], { env: env(missing) });
  assert.equal(checked.status, 78);
  assert.match(checked.stderr, /sources\.juki\.passwordFile: the database password file .*nope\.pw does not exist/);
  assert.match(checked.stderr, /modules\.routing\.routes\.peer-dc\.clientKey: this host's SSH private key .*no-key does not exist/);
  assert.match(checked.stderr, /notifications\.email\[0\]\.caFile: the SMTP CA file .*no-ca\.pem does not exist/);
  kuraOk(['repo', 'init'], { env: env(base({})) });
  const run = kura(['agent', 'run'], { env: env(missing) });
  assert.equal(run.status, 78, 'agent run stops before any export starts');
  assert.match(run.stderr, /sources\.juki\.passwordFile/);
  assert.equal(kuraJson<unknown[]>(['snapshots'], { env: env(base({})) }).length, 0);
  const relay = kura(['relay', 'once'], { env: env(missing) });
  assert.equal(relay.status, 78);
  assert.match(relay.stderr, /modules\.routing\.routes\.peer-dc\.clientKey/);
});
