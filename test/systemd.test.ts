import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, tempDir } from './support/cli.js';

const UNITS = readdirSync(path.join(ROOT, 'systemd')).filter((f) => f.endsWith('.service') || f.endsWith('.timer'));

function verify(file: string): string {
  const r = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8' });
  if (r.error) throw r.error;
  return (r.stdout + r.stderr).trim();
}

test('systemd units pass systemd-analyze verify and are hardened', () => {
  for (const u of ['kura-vault.service', 'kura-relay.service', 'kura-agent.service', 'kura-agent.timer', 'kura-agent@.service', 'kura-agent@.timer']) assert.ok(UNITS.includes(u), u);
  for (const unit of UNITS) {
    const file = path.join(ROOT, 'systemd', unit);
    assert.equal(verify(file), '', `${unit}: systemd-analyze verify`);
    const text = readFileSync(file, 'utf8');
    if (unit.endsWith('.service')) {
      for (const directive of ['NoNewPrivileges=yes', 'ProtectSystem=strict', 'PrivateTmp=yes', 'ProtectHome=yes', 'ReadWritePaths=', 'CapabilityBoundingSet=', 'User=kura']) {
        assert.ok(text.includes(directive), `${unit} sets ${directive}`);
      }
    } else {
      assert.match(text, /^Persistent=true$/m, `${unit}: a night missed while the server was off runs at boot`);
      const target = /^Unit=(.+)$/m.exec(text)![1]!.replace('%i', '');
      assert.ok(UNITS.includes(target.replace(/@\.service$/, '@.service')), `${unit} starts an existing unit (${target})`);
    }
  }
});

test('a timer and its service verify together, and an instance of the per-source template resolves', (t) => {
  const dir = tempDir(t);
  for (const [from, to] of [
    ['kura-agent.timer', 'kura-agent.timer'],
    ['kura-agent.service', 'kura-agent.service'],
    ['kura-agent@.timer', 'kura-agent@juki.timer'],
    ['kura-agent@.service', 'kura-agent@juki.service'],
  ]) {
    writeFileSync(path.join(dir, to), readFileSync(path.join(ROOT, 'systemd', from!), 'utf8'));
  }
  const r = spawnSync('systemd-analyze', ['verify', path.join(dir, 'kura-agent.timer'), path.join(dir, 'kura-agent.service'), path.join(dir, 'kura-agent@juki.timer'), path.join(dir, 'kura-agent@juki.service')], { encoding: 'utf8' });
  assert.equal((r.stdout + r.stderr).trim(), '');
  assert.equal(r.status, 0);
  assert.match(readFileSync(path.join(dir, 'kura-agent@juki.service'), 'utf8'), /kura agent run --json --source %i/);
});

test('systemd-analyze verify does catch a broken unit (so the check above means something)', (t) => {
  const dir = tempDir(t);
  const bad = path.join(dir, 'kura-broken.service');
  writeFileSync(bad, readFileSync(path.join(ROOT, 'systemd', 'kura-relay.service'), 'utf8').replace('NoNewPrivileges=yes', 'NoNewPrivilegez=yes'));
  assert.match(verify(bad), /Unknown key( name)? '?NoNewPrivilegez'?/);
});
