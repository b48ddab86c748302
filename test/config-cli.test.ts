import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { kura, kuraJson, kuraOk, tempDir } from './support/cli.js';

function configFile(dir: string, text: string): string {
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
  const f = configFile(dir, `tenant: city-a\nrepository:\n  path: ${repo}\n  passphraseFile: ${pass}\n`);
  const env = { KURA_PASSPHRASE: undefined, KURA_CONFIG: f };
  kuraOk(['repo', 'init'], { env });
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
