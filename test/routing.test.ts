import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { kuraAsync, kuraOk, tempDir } from './support/cli.js';
import { collect, sqlDump } from './support/generate.js';
import { waitFor } from './support/proc.js';
import { LinkProxy } from './support/proxy.js';
import { agentConfig, sshKey } from './support/vault.js';
import { FAST_RELAY, kuraJsonLines, ok, readCatalogue, received, unsent, vaultIn, vaultRoutes } from './support/routing.js';
import type { TransferLine } from '../src/relay/transfer-log.js';

const MiB = 1 << 20;

test('agent → vault A → vault B over five nights, A→B down for three: B gets every snapshot in order, A keeps what B lacks through prune and gc, B restores with the tenant key alone', async (t) => {
  const dir = tempDir(t);
  const relayKey = sshKey(dir, 'relay');
  const aKey = sshKey(dir, 'vault-a');
  const restoreKey = sshKey(dir, 'restore');

  const b = await vaultIn(dir, 'b', `    city-a:\n      clients:\n        - key: ${aKey.public}\n          role: backup\n        - key: ${restoreKey.public}\n          role: restore\n`);
  t.after(() => b.stop());
  const ab = await new LinkProxy(b.port).start();
  t.after(() => ab.close());
  // A keeps one generation by its own retention: only forwarding keeps the rest until B has them
  const a = await vaultIn(
    dir,
    'a',
    `    city-a:\n      clients:\n        - key: ${relayKey.public}\n          role: tenant-admin\n      retention: { keepLast: 1 }\n      forward: [dc-b]\n`,
    vaultRoutes('dc-b', ab.port, b.hostKeySha256, aKey),
    FAST_RELAY,
  );
  t.after(() => a.stop());
  const aTenant = path.join(a.root, 'tenants', 'city-a');
  const bTenant = path.join(b.root, 'tenants', 'city-a');

  const env = { KURA_CONFIG: agentConfig(dir, { port: a.port, hostKeySha256: a.hostKeySha256, key: relayKey.private }) };
  kuraOk(['repo', 'init'], { env });
  const base = await collect(sqlDump(7, 3 * MiB));
  const nights: Buffer[] = [];
  const ids: string[] = [];
  for (let n = 1; n <= 5; n++) {
    if (n === 2) ab.down(); // nights 2, 3 and 4: A cannot reach B
    if (n === 5) {
      ab.up();
      ab.setRate(512 << 10); // a narrow line: the catch-up takes a while, and prune + gc run during it
    }
    const night = Buffer.concat([base.subarray(0, n * 400_000), Buffer.from(`-- night ${n}\n`), await collect(sqlDump(300 + n, MiB)), base.subarray(n * 400_000)]);
    nights.push(night);
    const f = path.join(dir, `night${n}.sql`);
    writeFileSync(f, night);
    const res = JSON.parse(kuraOk(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc', '--json'], { env }).out.trim().split('\n').pop()!) as { id: string };
    ids.push(res.id);
    await ok(kuraAsync(['relay', 'once'], { env }), `relay once, night ${n}`);
    if (n === 1) {
      await waitFor('night 1 to reach B', () => received(bTenant).length === 1, 30_000);
      // B's commit and A's record of it are two steps: the link goes down only once A has marked night 1 sent
      await waitFor('A to record night 1 as sent to B', () => unsent(aTenant, 'dc-b') === 0, 30_000);
    }
    if (n >= 2 && n <= 4) {
      // the vault's nightly maintenance while B is unreachable: retention would keep one, forwarding keeps all B lacks
      await ok(kuraAsync(['vault', 'prune', '--config', a.config]), 'vault prune on A');
      await ok(kuraAsync(['vault', 'gc', '--config', a.config]), 'vault gc on A');
      assert.equal(unsent(aTenant, 'dc-b'), n - 1, `night ${n}: A holds the ${n - 1} night(s) B lacks`);
    }
  }
  // during the catch-up: prune and gc again
  assert.ok(unsent(aTenant, 'dc-b') >= 2, 'the catch-up is still going');
  await ok(kuraAsync(['vault', 'prune', '--config', a.config]), 'vault prune on A during the catch-up');
  await ok(kuraAsync(['vault', 'gc', '--config', a.config]), 'vault gc on A during the catch-up');
  await waitFor('B to receive every night', () => received(bTenant).length === 5, 90_000);
  assert.deepEqual(received(bTenant), ids, 'B received the nights oldest first');

  // restore every night from B with the tenant's exported key alone (no local repository)
  const keyFile = path.join(dir, 'city-a.key');
  kuraOk(['key', 'export', '--to', keyFile, '--raw'], { env });
  const rdir = path.join(dir, 'restore');
  const renv = { KURA_CONFIG: agentConfig(dir, { port: b.port, hostKeySha256: b.hostKeySha256, key: restoreKey.private, name: 'restore.yaml' }), KURA_PASSPHRASE: undefined };
  void rdir;
  for (let n = 0; n < 5; n++) {
    const r = await ok(kuraAsync(['restore', '--from', 'peer-dc', ids[n]!, '--key-file', keyFile, '--to', '-'], { env: renv }), `restore night ${n + 1} from B`);
    assert.ok(r.stdout.equals(nights[n]!), `night ${n + 1} restores byte-identical from B`);
  }
  // once B has everything, A's own retention applies again
  await waitFor('A to record every send', () => unsent(aTenant, 'dc-b') === 0, 30_000);
  await ok(kuraAsync(['vault', 'prune', '--config', a.config]), 'vault prune on A');
  assert.equal(readCatalogue(aTenant, (db) => (db.prepare('SELECT count(*) AS n FROM snapshots').get() as { n: number }).n), 1, 'with nothing left to forward, A keeps its one generation');

  // the send and receive logs of both hops match one to one
  const sentToA = await kuraJsonLines<TransferLine>(['log'], env);
  const vaultA = await kuraJsonLines<TransferLine>(['log', '--vault', '--config', a.config]);
  const vaultB = await kuraJsonLines<TransferLine>(['log', '--vault', '--config', b.config]);
  const key = (l: TransferLine) => `${l.snapshot}|${l.session}|${l.bytes}|${l.chunks}`;
  const matches = (sends: TransferLine[], receipts: TransferLine[]) => assert.deepEqual(sends.map(key).sort(), receipts.map(key).sort());
  assert.equal(sentToA.length, 5);
  assert.ok(sentToA.every((l) => l.direction === 'send' && l.hop === 'peer-dc' && l.peerOffsetMs !== null && Math.abs(l.peerOffsetMs) < 2000));
  matches(sentToA, vaultA.filter((l) => l.direction === 'receive'));
  const forwarded = vaultA.filter((l) => l.direction === 'send');
  assert.equal(forwarded.length, 5);
  assert.ok(forwarded.every((l) => l.hop === 'dc-b' && l.tenant === 'city-a' && l.source === 'juki'));
  matches(forwarded, vaultB.filter((l) => l.direction === 'receive'));
  const text = (await ok(kuraAsync(['log', '--route', 'peer-dc', '--since', '1h'], { env }), 'kura log')).out;
  assert.equal(text.trim().split('\n').length, 6, 'a header and one line per send');

  // RPO exposure hop by hop: this host → A, then A → B
  const hops = JSON.parse((await ok(kuraAsync(['status', '--from', 'peer-dc', '--json'], { env }), 'status --from')).out) as { hops: Array<{ hop: number; to: string; sources: Array<{ source: string; pending: number; newestDelivered: string | null }> }> };
  assert.deepEqual(hops.hops.map((h) => [h.hop, h.to]), [[1, 'peer-dc'], [2, 'dc-b']]);
  assert.ok(hops.hops.every((h) => h.sources.some((s) => s.source === 'juki' && s.pending === 0 && s.newestDelivered !== null)));
  const top = (await ok(kuraAsync(['top'], { env }), 'kura top (no terminal)')).out;
  assert.match(top, /^1 +this host +peer-dc +idle +juki /m);
  assert.match(top, /^2 +peer-dc +dc-b +idle +juki /m);
});
