import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import net from 'node:net';
import { userInfo } from 'node:os';
import path from 'node:path';
import { KURA, kuraAsync, kuraOk, tempDir } from './support/cli.js';
import { sleep } from './support/proxy.js';
import { exitOf } from './support/proc.js';
import { agentConfig, sshKey } from './support/vault.js';
import { collect, sqlDump } from './support/generate.js';

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => (c.end(), resolve(true)));
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`sshd did not listen on ${port}`);
    await sleep(100);
  }
}

test('the relay ships to OpenSSH sshd running "kura vault stdio" as the forced command of its key', async (t) => {
  const dir = tempDir(t);
  const user = userInfo().username;
  const relayKey = sshKey(dir, 'relay');
  const stranger = sshKey(dir, 'stranger');
  const operator = sshKey(dir, 'operator');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, 'host_key')]);
  const hostFp = execFileSync('ssh-keygen', ['-l', '-f', path.join(dir, 'host_key.pub')]).toString().split(' ')[1]!;

  const vaultCfg = path.join(dir, 'vault.yaml');
  writeFileSync(vaultCfg, `vault:\n  root: ${path.join(dir, 'vault')}\n  tenants:\n    city-a: {}\n`);
  // the operator's line in authorized_keys: this key may only run the vault, for one tenant
  const forced = `${process.execPath} ${KURA} vault stdio --tenant city-a --config ${vaultCfg}`;
  writeFileSync(path.join(dir, 'authorized_keys'), `command="${forced}",restrict ${relayKey.public}\ncommand="${forced} --role restore",restrict ${operator.public}\n`);
  chmodSync(path.join(dir, 'authorized_keys'), 0o600);
  const port = await freePort();
  writeFileSync(
    path.join(dir, 'sshd_config'),
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${path.join(dir, 'host_key')}`,
      `PidFile ${path.join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
      'StrictModes no',
      'UsePAM no',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PermitRootLogin prohibit-password',
      `AllowUsers ${user}`,
      'LogLevel VERBOSE',
    ].join('\n') + '\n',
  );
  mkdirSync('/run/sshd', { recursive: true });
  const sshd = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', path.join(dir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let sshdLog = '';
  sshd.stderr!.on('data', (d) => (sshdLog += d));
  t.after(async () => {
    sshd.kill('SIGTERM');
    await exitOf(sshd);
  });
  await waitForPort(port);

  const cfg = agentConfig(dir, { port, hostKeySha256: hostFp, key: relayKey.private, user });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });
  const dump = await collect(sqlDump(77, 3 << 20));
  const f = path.join(dir, 'juki.sql');
  writeFileSync(f, dump);
  const id = kuraOk(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc'], { env }).out.trim();

  const sent = await kuraAsync(['relay', 'once', '--json'], { env });
  assert.equal(sent.status, 0, `${sent.stderr}\n--- sshd ---\n${sshdLog}`);
  assert.equal(JSON.parse(sent.out).sent, 1);
  const listed = await kuraAsync(['snapshots', '--from', 'peer-dc', '--json'], { env });
  assert.deepEqual((JSON.parse(listed.out) as Array<{ id: string }>).map((r) => r.id), [id]);
  // the relay's key may only send; restoring takes the operator's restore key
  const denied = await kuraAsync(['restore', '--from', 'peer-dc', id], { env });
  assert.equal(denied.status, 77);
  assert.match(denied.stderr, /E_FORBIDDEN/);
  const restored = await kuraAsync(['restore', '--from', 'peer-dc', id, '--identity', operator.private], { env });
  assert.ok(restored.stdout.equals(dump), restored.stderr);
  // the vault's own audit log saw the stdio sessions, and the data went to the tenant named in authorized_keys
  const audit = readFileSync(path.join(dir, 'vault', 'audit.jsonl'), 'utf8');
  assert.match(audit, /"event":"commit","outcome":"ok","tenant":"city-a"/);

  // a key sshd does not know never reaches kura
  const other = agentConfig(dir, { port, hostKeySha256: hostFp, key: stranger.private, user, name: 'stranger.yaml' });
  const refused = await kuraAsync(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: other } });
  assert.equal(refused.status, 77, refused.stderr);
  assert.match(refused.stderr, /E_AUTH_DENIED/);
});
