import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tempDir } from './support/cli.js';
import { waitFor } from './support/proc.js';
import { sshKey, startVault } from './support/vault.js';

const require = createRequire(import.meta.url);
const ssh2 = require('ssh2') as typeof import('ssh2');

test('the vault refuses and audits everything SSH can ask for besides its protocol: pty, shell, sftp, other subsystems, port forwarding both ways, X11 forwarding', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n`);
  t.after(() => vault.stop());
  const client = new ssh2.Client();
  await new Promise<void>((resolve, reject) => {
    client.on('error', reject);
    client.on('ready', () => resolve());
    client.connect({ host: '127.0.0.1', port: vault.port, username: 'city-a', privateKey: readFileSync(key.private) });
  });
  t.after(() => client.end());
  const fails = (what: string, start: (cb: (err: Error | undefined) => void) => void) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${what}: no answer`)), 10_000);
      start((err) => {
        clearTimeout(timer);
        if (err) resolve();
        else reject(new Error(`${what} was granted`));
      });
    });
  await fails('pty + shell', (cb) => client.shell({ term: 'xterm' }, (err, ch) => (ch?.close(), cb(err))));
  await fails('shell', (cb) => client.shell(false, (err, ch) => (ch?.close(), cb(err))));
  await fails('sftp', (cb) => client.sftp((err) => cb(err)));
  await fails('subsystem', (cb) => client.subsys('netconf', (err, ch) => (ch?.close(), cb(err))));
  await fails('local forwarding', (cb) => client.forwardOut('127.0.0.1', 5000, '127.0.0.1', 22, (err) => cb(err)));
  await fails('remote forwarding', (cb) => client.forwardIn('127.0.0.1', 0, (err) => cb(err)));
  await fails('X11 forwarding', (cb) => client.exec('kura-vault', { x11: true }, (err, ch) => (ch?.close(), cb(err))));

  const fingerprint = (await import('../src/vault/access.js')).fingerprint;
  const pub = ssh2.utils.parseKey(readFileSync(key.private));
  const fp = fingerprint((Array.isArray(pub) ? pub[0] : pub).getPublicSSH());
  let refused: Array<Record<string, unknown>> = [];
  await waitFor('the audit lines', () => {
    refused = vault.audit().filter((e) => e.outcome === 'refused');
    return new Set(refused.map((e) => e.event)).size >= 6;
  }, 10_000);
  const byEvent = (ev: string) => refused.filter((e) => e.event === ev);
  for (const ev of ['pty', 'shell', 'sftp', 'subsystem', 'port-forward', 'x11']) {
    const lines = byEvent(ev);
    assert.ok(lines.length > 0, `${ev} is audited`);
    for (const l of lines) {
      assert.equal(l.key, fp, 'with the key fingerprint');
      assert.equal(l.ip, '127.0.0.1', 'and the address');
      assert.equal(l.tenant, 'city-a');
      assert.equal(l.code, 'E_FORBIDDEN');
    }
  }
  assert.match(String(byEvent('port-forward').map((e) => e.reason).join(' ')), /forwarding to 127\.0\.0\.1:22/);
  assert.match(String(byEvent('port-forward').map((e) => e.reason).join(' ')), /global request tcpip-forward/);
  assert.match(String(byEvent('subsystem')[0]!.reason), /netconf/);
});
