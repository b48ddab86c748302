import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { kuraAsync, tempDir } from './support/cli.js';
import { waitFor } from './support/proc.js';
import { agentConfig, sshKey, startVault, vaultSession } from './support/vault.js';
import { encodeFrame, Frame, FrameParser, OLDEST_PROTOCOL, OLDEST_RELAY_PROTOCOL, PROTOCOL_VERSION } from '../src/protocol/frames.js';
import { KuraError } from '../src/errors.js';
const require = createRequire(import.meta.url);
const ssh2 = require('ssh2') as typeof import('ssh2');

test('a vault refuses a client whose protocol version it cannot speak, with E_PROTOCOL_VERSION naming both versions', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'city-a');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  const e = await vaultSession(vault, key.private, 'city-a', OLDEST_PROTOCOL - 1).catch((err: unknown) => err);
  assert.ok(e instanceof KuraError, String(e));
  assert.equal(e.code, 'E_PROTOCOL_VERSION');
  assert.match(e.message, new RegExp(`the client speaks protocol version ${OLDEST_PROTOCOL - 1}; this vault speaks ${OLDEST_PROTOCOL} to ${PROTOCOL_VERSION}: upgrade the client`));
  await waitFor('the refusal to be audited', () => vault.audit().some((a) => a.outcome === 'refused' && a.code === 'E_PROTOCOL_VERSION'), 10_000);
  // the versions it does speak still work
  const ok = await vaultSession(vault, key.private, 'city-a', OLDEST_RELAY_PROTOCOL);
  assert.equal(ok.protocol, OLDEST_RELAY_PROTOCOL);
  ok.close();
});

test('a relay refuses a vault older than the protocol it needs, with E_PROTOCOL_VERSION naming both versions (exit 69)', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const hostKey = sshKey(dir, 'host');
  // an old vault: it answers every HELLO with protocol 1
  const server = new ssh2.Server({ hostKeys: [readFileSync(hostKey.private)] }, (client) => {
    client.on('authentication', (ctx) => (ctx.method === 'publickey' ? ctx.accept() : ctx.reject(['publickey'])));
    client.on('session', (accept) => {
      accept().once('exec', (acceptExec) => {
        const ch = acceptExec();
        const parser = new FrameParser(1 << 20);
        ch.on('data', (d: Buffer) => {
          for (const f of parser.push(d)) {
            if (f.type === Frame.HELLO) ch.write(encodeFrame(Frame.HELLO_OK, { protocol: 1, tenant: 'city-a', role: 'backup', session: 'old', maxFrame: 1 << 20 }));
          }
        });
      });
    });
    client.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const port = (server.address() as import('node:net').AddressInfo).port;
  const cfg = agentConfig(dir, { port, key: key.private });
  const r = await kuraAsync(['snapshots', '--from', 'peer-dc'], { env: { KURA_CONFIG: cfg } });
  assert.equal(r.status, 69, r.stderr);
  assert.match(r.stderr, new RegExp(`E_PROTOCOL_VERSION: the vault at 127\\.0\\.0\\.1:${port} speaks protocol version 1; this relay speaks ${OLDEST_RELAY_PROTOCOL} to ${PROTOCOL_VERSION}: upgrade the vault`));
});
