import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { kuraAsync, spawnKura, tempDir } from './support/cli.js';
import { waitFor } from './support/proc.js';
import { agentConfig, freePort, sshKey } from './support/vault.js';
import { kuraJsonLines, ok, serveVaultConfig } from './support/routing.js';
import type { TransferLine } from '../src/relay/transfer-log.js';
import type { StatusReport } from '../src/status/status.js';

const hasFaketime = spawnSync('sh', ['-c', 'command -v faketime'], { stdio: 'ignore' }).status === 0;

test('a vault whose clock runs 10 s ahead (libfaketime) shows in status, on /metrics, as a notification and in both logs', { skip: !hasFaketime && process.env.CI !== 'true' ? 'faketime is not installed (scripts/ensure-deps.mjs installs it; under CI=true this fails)' : false }, async (t) => {
  assert.ok(hasFaketime, 'faketime (Debian package faketime) is required');
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  mkdirSync(path.join(dir, 'v'));
  const root = path.join(dir, 'v', 'vault');
  const config = path.join(dir, 'v', 'vault.yaml');
  writeFileSync(config, `vault:\n  listen: { host: 127.0.0.1, port: 0 }\n  root: ${root}\n  tenants:\n    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  // the monotonic clock stays real: only the wall clock the vault reads (and says in HELLO_OK) is off
  const vault = await serveVaultConfig({ root, config }, { prefix: ['faketime', '-f', '+10s'], env: { FAKETIME_DONT_FAKE_MONOTONIC: '1' } });
  t.after(() => vault.stop());

  const got: Array<Record<string, unknown>> = [];
  const hook = createServer((req: IncomingMessage, res) => {
    let b = '';
    req.on('data', (d) => (b += d));
    req.on('end', () => {
      got.push(JSON.parse(b) as Record<string, unknown>);
      res.end();
    });
  });
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', () => r()));
  t.after(() => hook.close());
  const metricsPort = await freePort();
  const env = {
    KURA_CONFIG: agentConfig(dir, {
      port: vault.port,
      hostKeySha256: vault.hostKeySha256,
      key: key.private,
      extraTop: `notifications:\n  webhooks:\n    - { url: "http://127.0.0.1:${(hook.address() as AddressInfo).port}/", on: [clock.skew] }\n`,
      extraRelay: `  metrics: { host: 127.0.0.1, port: ${metricsPort} }\n`,
    }),
  };
  await ok(kuraAsync(['repo', 'init'], { env }), 'repo init');
  await ok(kuraAsync(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env, input: 'night one\n' }), 'backup');
  await ok(kuraAsync(['relay', 'once'], { env }), 'relay once');

  const status = await kuraAsync(['status', '--json'], { env });
  const report = JSON.parse(status.out) as StatusReport;
  assert.equal(report.clocks.length, 1);
  const c = report.clocks[0]!;
  assert.equal(c.hop, 'peer-dc');
  assert.ok(Math.abs(c.offsetMs - 10_000) < 1500, `the vault's clock is measured 10 s ahead (${c.offsetMs} ms)`);
  assert.equal(c.skewed, true);
  assert.match(report.warnings.join('\n'), /clock of 127\.0\.0\.1:\d+ \(peer-dc\) is 10\.\d s off/);
  assert.match((await kuraAsync(['status'], { env })).out, /warning: clock of .* is 10\.\d s off/);
  assert.ok(got.some((e) => e.event === 'clock.skew' && e.route === 'peer-dc'), 'a clock.skew notification went out');

  // both logs carry the offset their side measured
  const [sent] = await kuraJsonLines<TransferLine>(['log'], env);
  assert.ok(Math.abs(sent!.peerOffsetMs! - 10_000) < 1500);
  const [receipt] = await kuraJsonLines<TransferLine>(['log', '--vault', '--config', config]);
  assert.equal(receipt!.direction, 'receive');
  assert.ok(Math.abs(receipt!.peerOffsetMs! + 10_000) < 1500, `the vault sees the relay 10 s behind (${receipt!.peerOffsetMs} ms)`);

  // and the vault's own status says it of the relay
  const vs = JSON.parse((await ok(kuraAsync(['vault', 'status', '--config', config, '--json']), 'vault status')).out) as { clocks: Array<{ offsetMs: number; skewed: boolean }>; warnings: string[] };
  assert.ok(vs.clocks.some((x) => x.skewed && Math.abs(x.offsetMs + 10_000) < 1500));
  assert.match(vs.warnings.join('\n'), /is -10\.\d s off this vault's/);

  // the relay daemon's /metrics
  const relay = spawnKura(['relay', 'run'], env);
  t.after(() => relay.kill('SIGKILL'));
  let text = '';
  await waitFor('/metrics', async () => {
    text = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text()).catch(() => '');
    return text.includes('kura_peer_clock_skewed');
  }, 20_000);
  assert.match(text, /kura_peer_clock_offset_seconds\{hop="peer-dc",peer="127\.0\.0\.1:\d+"\} (9\.|10\.)/);
  assert.match(text, /kura_peer_clock_skewed\{hop="peer-dc",peer="[^"]+"\} 1/);
});
