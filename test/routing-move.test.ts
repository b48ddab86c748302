import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { kuraAsync, kuraOk, tempDir } from './support/cli.js';
import { waitFor } from './support/proc.js';
import { agentConfig, sshKey } from './support/vault.js';
import { FAST_RELAY, fakeMovedVault, kuraJsonLines, ok, received, serveVaultConfig, unsent, vaultIn, vaultRoutes } from './support/routing.js';
import type { TransferLine } from '../src/relay/transfer-log.js';
import type { StatusReport } from '../src/status/status.js';

const audit = (file: string) =>
  readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);

test('a tenant moved from vault A to vault B without touching the agent config: forward A→B, switch, and the next night arrives at B; nothing lost or sent twice', async (t) => {
  const dir = tempDir(t);
  const relayKey = sshKey(dir, 'relay');
  const aKey = sshKey(dir, 'vault-a');
  // B knows the tenant's keys before the switch (the operator registers them there)
  const b = await vaultIn(dir, 'b', `    city-a:\n      clients:\n        - key: ${aKey.public}\n          role: backup\n        - key: ${relayKey.public}\n          role: tenant-admin\n`);
  t.after(() => b.stop());
  const tenantsA = `    city-a:\n      clients:\n        - key: ${relayKey.public}\n          role: tenant-admin\n      forward: [dc-b]\n`;
  let a = await vaultIn(dir, 'a', tenantsA, vaultRoutes('dc-b', b.port, b.hostKeySha256, aKey), FAST_RELAY);
  t.after(() => a.stop());
  const agentYaml = agentConfig(dir, { port: a.port, hostKeySha256: a.hostKeySha256, key: relayKey.private });
  const configBefore = readFileSync(agentYaml, 'utf8');
  const env = { KURA_CONFIG: agentYaml };
  const bTenant = path.join(b.root, 'tenants', 'city-a');
  const aTenant = path.join(a.root, 'tenants', 'city-a');
  kuraOk(['repo', 'init'], { env });
  const night = async (n: number) => {
    const id = (JSON.parse(kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc', '--json'], { env, input: `night ${n}\n`.repeat(20_000) }).out.trim().split('\n').pop()!) as { id: string }).id;
    await ok(kuraAsync(['relay', 'once'], { env }), `relay once, night ${n}`);
    return id;
  };
  // 1. forward: two nights reach A and go on to B
  const ids = [await night(1), await night(2)];
  await waitFor('A to forward both nights to B', () => received(bTenant).length === 2 && unsent(aTenant) === 0, 30_000);

  // 2. switch: A now answers the tenant's HELLO with MOVED (signed by its host key)
  await a.stop();
  a = await serveVaultConfig({ root: a.root, config: a.config, port: a.port }, { edit: (y) => y.replace('      forward: [dc-b]\n', '      forward: [dc-b]\n      movedTo: dc-b\n') });
  ids.push(await night(3));
  assert.deepEqual(received(bTenant), ids, 'night 3 arrived at B, after the forwarded nights');
  assert.equal(received(aTenant).length, 2, 'A did not take night 3');
  const status = JSON.parse((await kuraAsync(['status', '--json'], { env })).out) as StatusReport;
  assert.deepEqual(status.moved.map((m) => [m.route, m.tenant, m.endpoints]), [['peer-dc', 'city-a', [`127.0.0.1:${b.port}`]]]);
  assert.equal(status.moved[0]!.signedBy, a.hostKeySha256, 'the entry was signed by the host key the agent pinned for A');
  assert.ok(a.audit().some((e) => e.event === 'moved' && e.outcome === 'ok' && e.tenant === 'city-a'), 'A audits the MOVED answer');
  assert.ok(audit(path.join(dir, 'repo', 'audit.jsonl')).some((e) => e.event === 'moved' && e.outcome === 'ok'), 'the relay audits the routing change');

  // 3. the entry is durable: with A gone altogether, the next night still goes to B
  await a.stop();
  ids.push(await night(4));
  assert.deepEqual(received(bTenant), ids);
  assert.equal(readFileSync(agentYaml, 'utf8'), configBefore, 'the agent config was never touched');

  // nothing sent twice: B received each night once, nights 1-2 from A, nights 3-4 from the relay
  const atB = (await kuraJsonLines<TransferLine>(['log', '--vault', '--config', b.config])).filter((l) => l.direction === 'receive');
  assert.deepEqual(atB.map((l) => l.snapshot), ids);
  const sends = await kuraJsonLines<TransferLine>(['log'], env);
  assert.deepEqual(sends.map((l) => l.snapshot), ids, 'the relay sent each night once');
  assert.deepEqual(
    sends.slice(2).map((l) => l.session),
    atB.slice(2).map((l) => l.session),
    'nights 3 and 4 went straight to B',
  );
});

test('a MOVED answer not signed by the pinned host key is refused (E_HOST_KEY) and audited; nothing is stored', async (t) => {
  const dir = tempDir(t);
  const relayKey = sshKey(dir, 'relay');
  let env: Record<string, string> = {};
  let n = 0;
  for (const kind of ['unsigned', 'other-key', 'forged'] as const) {
    const fake = await fakeMovedVault(kind, { host: '127.0.0.1', port: 1 });
    t.after(() => fake.stop());
    // the same local repository, its route pinned to the vault that will lie
    env = { KURA_CONFIG: agentConfig(dir, { port: fake.port, hostKeySha256: fake.hostKeySha256, key: relayKey.private, name: `${kind}.yaml` }) };
    if (n++ === 0) {
      await ok(kuraAsync(['repo', 'init'], { env }), 'repo init');
      await ok(kuraAsync(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env, input: 'night one\n' }), 'backup');
    }
    const r = await kuraAsync(['relay', 'once'], { env });
    assert.equal(r.status, 77, `${kind}: refused with the host-key exit status: ${r.stderr.slice(-500)}`);
    assert.match(r.stderr, /E_HOST_KEY/);
    const refused = audit(path.join(dir, 'repo', 'audit.jsonl')).filter((e) => e.event === 'moved' && e.outcome === 'refused');
    assert.equal(refused.length, n, `${kind}: audited`);
    assert.equal(refused.at(-1)!.code, 'E_HOST_KEY');
  }
  const status = JSON.parse((await kuraAsync(['status', '--json'], { env })).out) as StatusReport;
  assert.deepEqual(status.moved, [], 'no routing entry was stored');
  assert.equal(unsent(path.join(dir, 'repo')), 1, 'the snapshot stays queued');
  assert.match(status.routes[0]!.lastError ?? '', /E_HOST_KEY/);
});
