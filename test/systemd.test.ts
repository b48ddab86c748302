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
  assert.ok(UNITS.includes('kura-vault.service') && UNITS.includes('kura-relay.service'));
  for (const unit of UNITS) {
    const file = path.join(ROOT, 'systemd', unit);
    assert.equal(verify(file), '', `${unit}: systemd-analyze verify`);
    const text = readFileSync(file, 'utf8');
    if (unit.endsWith('.service')) {
      for (const directive of ['NoNewPrivileges=yes', 'ProtectSystem=strict', 'PrivateTmp=yes', 'ProtectHome=yes', 'ReadWritePaths=', 'CapabilityBoundingSet=', 'User=kura']) {
        assert.ok(text.includes(directive), `${unit} sets ${directive}`);
      }
    }
  }
});

test('systemd-analyze verify does catch a broken unit (so the check above means something)', (t) => {
  const dir = tempDir(t);
  const bad = path.join(dir, 'kura-broken.service');
  writeFileSync(bad, readFileSync(path.join(ROOT, 'systemd', 'kura-relay.service'), 'utf8').replace('NoNewPrivileges=yes', 'NoNewPrivilegez=yes'));
  assert.match(verify(bad), /Unknown key( name)? '?NoNewPrivilegez'?/);
});
