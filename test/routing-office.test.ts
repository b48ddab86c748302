import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { kuraAsync, spawnKura, tempDir } from './support/cli.js';
import { exitOf, waitFor } from './support/proc.js';
import { agentConfig, sshKey } from './support/vault.js';
import { kuraJsonLines, ok, received, unsent, vaultIn } from './support/routing.js';
import type { TransferLine } from '../src/relay/transfer-log.js';

const EVERY_S = 10;

test('an office route carries 1 of 3 sources on its own frequency while the peer route carries all three at the relay\'s pace', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const clients = `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`;
  const peer = await vaultIn(dir, 'peer', clients);
  t.after(() => peer.stop());
  const office = await vaultIn(dir, 'office', clients);
  t.after(() => office.stop());
  const source = (name: string) => `  ${name}:\n    type: command\n    command: /bin/sh\n    args: ["-c", "echo ${name}; date +%s%N; head -c 30000 /dev/urandom | od -x"]\n    routes: [peer-dc]\n`;
  const env = {
    KURA_CONFIG: agentConfig(dir, {
      port: peer.port,
      hostKeySha256: peer.hostKeySha256,
      key: key.private,
      extraTop: `sources:\n${source('juki')}${source('zeimu')}${source('kokuho')}`,
      // the office copy: the minimum set (juki) every few seconds, not named by the sources themselves
      extraRoute: `      office:\n        endpoints:\n          - host: 127.0.0.1\n            port: ${office.port}\n            hostKeySha256: "${office.hostKeySha256}"\n        clientKey: ${key.private}\n        sources: [juki]\n        every: ${EVERY_S}s\n`,
    }),
  };
  await ok(kuraAsync(['config', 'check'], { env }), 'config check');
  await ok(kuraAsync(['repo', 'init'], { env }), 'repo init');
  const repo = path.join(dir, 'repo');
  const relay = spawnKura(['relay', 'run'], env);
  t.after(() => relay.kill('SIGKILL'));
  const peerTenant = path.join(peer.root, 'tenants', 'city-a');
  const officeTenant = path.join(office.root, 'tenants', 'city-a');

  for (let night = 1; night <= 2; night++) {
    await ok(kuraAsync(['agent', 'run'], { env }), `agent run ${night}`);
    await waitFor(`night ${night}: the peer route to deliver all three sources`, () => received(peerTenant).length === 3 * night, 30_000);
    if (night === 2) assert.equal(unsent(repo, 'office'), 1, 'the office route waits for its own turn while the peer route has delivered');
    await waitFor(`night ${night}: the office route to deliver juki`, () => received(officeTenant).length === night, 3 * EVERY_S * 1000);
  }
  relay.kill('SIGTERM');
  assert.equal((await exitOf(relay)).code, 0);

  const sends = await kuraJsonLines<TransferLine>(['log'], env);
  const officeSends = sends.filter((l) => l.hop === 'office');
  const peerSends = sends.filter((l) => l.hop === 'peer-dc');
  assert.deepEqual(officeSends.map((l) => l.source), ['juki', 'juki'], 'the office carries juki only');
  assert.deepEqual([...new Set(peerSends.map((l) => l.source))].sort(), ['juki', 'kokuho', 'zeimu']);
  assert.equal(peerSends.length, 6);
  const gap = (Date.parse(officeSends[1]!.start) - Date.parse(officeSends[0]!.start)) / 1000;
  assert.ok(gap >= EVERY_S - 0.5, `the office's transfers start at most every ${EVERY_S} s (gap ${gap} s)`);
  // the office vault's receipts match the office sends one to one
  const receipts = (await kuraJsonLines<TransferLine>(['log', '--vault', '--config', office.config])).filter((l) => l.direction === 'receive');
  assert.deepEqual(receipts.map((l) => `${l.snapshot}|${l.session}|${l.bytes}|${l.chunks}`), officeSends.map((l) => `${l.snapshot}|${l.session}|${l.bytes}|${l.chunks}`));
});
