import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { KURA, ROOT, tempDir } from './support/cli.js';

const UNITS = readdirSync(path.join(ROOT, 'systemd')).filter((f) => f.endsWith('.service') || f.endsWith('.timer'));

/**
 * The units run /usr/bin/kura and document man:kura(1), both from the Debian package; here the
 * checkout's bin/kura stands in for the executable and the man page is not looked up (the
 * package test verifies the installed units as they are).
 */
function asInCheckout(text: string): string {
  return text.replaceAll('ExecStart=/usr/bin/kura ', `ExecStart=${KURA} `);
}

function verify(...files: string[]): { status: number | null; out: string } {
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', ...files], { encoding: 'utf8' });
  if (r.error) throw r.error;
  return { status: r.status, out: (r.stdout + r.stderr).trim() };
}

test('systemd units pass systemd-analyze verify and are hardened', (t) => {
  const dir = tempDir(t);
  for (const u of ['kura-vault.service', 'kura-relay.service', 'kura-agent.service', 'kura-agent.timer', 'kura-agent@.service', 'kura-agent@.timer']) assert.ok(UNITS.includes(u), u);
  for (const unit of UNITS) {
    const text = readFileSync(path.join(ROOT, 'systemd', unit), 'utf8');
    const copy = path.join(dir, unit);
    writeFileSync(copy, asInCheckout(text));
    assert.equal(verify(copy).out, '', `${unit}: systemd-analyze verify`);
    if (unit.endsWith('.service')) {
      // the Debian package's executable, never a node from PATH
      assert.match(text, /^ExecStart=\/usr\/bin\/kura /m, `${unit} runs /usr/bin/kura`);
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
    writeFileSync(path.join(dir, to), asInCheckout(readFileSync(path.join(ROOT, 'systemd', from!), 'utf8')));
  }
  const r = verify(path.join(dir, 'kura-agent.timer'), path.join(dir, 'kura-agent.service'), path.join(dir, 'kura-agent@juki.timer'), path.join(dir, 'kura-agent@juki.service'));
  assert.equal(r.out, '');
  assert.equal(r.status, 0);
  assert.match(readFileSync(path.join(dir, 'kura-agent@juki.service'), 'utf8'), /kura agent run --json --source %i/);
});

test('systemd-analyze verify does catch a broken unit (so the check above means something)', (t) => {
  const dir = tempDir(t);
  const bad = path.join(dir, 'kura-broken.service');
  writeFileSync(bad, asInCheckout(readFileSync(path.join(ROOT, 'systemd', 'kura-relay.service'), 'utf8')).replace('NoNewPrivileges=yes', 'NoNewPrivilegez=yes'));
  assert.match(verify(bad).out, /Unknown key( name)? '?NoNewPrivilegez'?/);
  // and a unit whose executable is missing
  const gone = path.join(dir, 'kura-gone.service');
  writeFileSync(gone, readFileSync(path.join(ROOT, 'systemd', 'kura-relay.service'), 'utf8').replaceAll('ExecStart=/usr/bin/kura ', `ExecStart=${path.join(dir, 'no-such-kura')} `));
  assert.match(verify(gone).out, /no-such-kura is not executable/);
});
