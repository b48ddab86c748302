import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { blake3 } from '@napi-rs/blake-hash';
import { kuraAsync, kuraJson, kuraOk, tempDir } from './support/cli.js';
import { Prng } from './support/generate.js';
import { waitFor, watchPeakRss } from './support/proc.js';
import { agentConfig, freePort, sshKey, startVault } from './support/vault.js';
import { encodeFrame, Frame, FrameParser } from '../src/protocol/frames.js';
import { whoGivesWay, type Holding } from '../src/vault/memory.js';
import { Repository } from '../src/repository/repository.js';
import { decodeSnapshot, snapshotChunkIds } from '../src/repository/snapshot.js';
import { idsOf } from '../src/repository/chunklist.js';
import { listFetcher, readBlobs } from '../src/repository/reader.js';

const require = createRequire(import.meta.url);
const ssh2 = require('ssh2') as typeof import('ssh2');
const MiB = 1 << 20;

test('whoGivesWay: past the total, the session holding the most beyond an equal share is refused; one within its share never is', () => {
  const h = (input: number, pending: number, writing = 0): Holding => ({ input, pending, writing });
  const table: Array<[string, Holding[], number, number]> = [
    ['under the total: nobody', [h(10, 50), h(0, 30)], 100, -1],
    ['at the total: the biggest holder', [h(10, 50), h(0, 40)], 100, 0],
    ['a relay flushing small batches beside a session sitting on PUT data', [h(4, 4, 32), h(0, 90)], 100, 1],
    ['the most releasable, not the most written', [h(0, 10, 80), h(5, 60)], 100, 1],
    ['nobody holds an equal share: only back-pressure (packs being written will be released)', [h(10, 10, 20), h(10, 10, 20), h(10, 10, 20)], 100, -1],
    ['twelve sessions on 60 MiB each and a relay: the first of the twelve', [...Array.from({ length: 12 }, () => h(0, 60)), h(2, 4, 8)], 256, 0],
    ['one session alone over the total', [h(1, 300)], 256, 0],
    ['nobody', [], 100, -1],
  ];
  for (const [what, holdings, total, want] of table) assert.equal(whoGivesWay(holdings, total), want, what);
});

/** An exec of the vault protocol on a connection of its own, to misbehave on purpose. */
function rawSession(port: number, user: string, keyFile: string): Promise<{ client: import('ssh2').Client; ch: import('ssh2').ClientChannel }> {
  return new Promise((resolve, reject) => {
    const client = new ssh2.Client();
    client.on('error', reject);
    client.on('ready', () => client.exec('kura-vault', (err, ch) => (err ? reject(err) : resolve({ client, ch }))));
    client.connect({ host: '127.0.0.1', port, username: user, privateKey: readFileSync(keyFile) });
  });
}

/** The first ERROR frame's code the vault sends on `ch` (or how the channel ended without one). */
function outcomeOf(ch: import('ssh2').ClientChannel): Promise<string> {
  const parser = new FrameParser(64 * MiB);
  return new Promise((resolve) => {
    ch.on('data', (d: Buffer) => {
      for (const f of parser.push(d)) if (f.type === Frame.ERROR) resolve((JSON.parse(f.payload.toString()) as { code: string }).code);
    });
    ch.on('close', () => resolve('closed'));
  });
}

/** The vault's own gauges of what its sessions hold (kura_vault_session_memory_bytes, ...). */
async function sessionMemory(port: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^kura_vault_(sessions_open|session_memory_\w+) (\d+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

test('a client that asks for chunks and never reads, and twelve sessions each sending ~60 MiB of PUT without FLUSH, keep the vault under 300 MiB while a normal upload and restore go through; their memory is let go when they end', async (t) => {
  const dir = tempDir(t);
  const a = sshKey(dir, 'city-a');
  const b = sshKey(dir, 'city-b');
  const metricsPort = await freePort();
  const vault = await startVault(
    dir,
    `    city-a:\n      clients:\n        - key: ${a.public}\n          role: tenant-admin\n    city-b:\n      clients:\n        - key: ${b.public}\n          role: tenant-admin\n`,
    `  metrics: { port: ${metricsPort} }\n`,
  );
  t.after(() => vault.stop());
  const envA = { KURA_CONFIG: agentConfig(path.join(dir), { port: vault.port, hostKeySha256: vault.hostKeySha256, key: a.private, name: 'a.yaml' }) };
  const repoB = path.join(dir, 'repo-b');
  const cfgB = agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: b.private, tenant: 'city-b', name: 'b.yaml' });
  writeFileSync(cfgB, readFileSync(cfgB, 'utf8').replace(`path: ${path.join(dir, 'repo')}`, `path: ${repoB}`));
  const envB = { KURA_CONFIG: cfgB };
  // tenant B (the abuser) has 16 MiB in the vault to ask for
  kuraOk(['repo', 'init'], { env: envB });
  const fb = path.join(dir, 'b.bin');
  writeFileSync(fb, new Prng(71).bytes(16 * MiB));
  const sb = kuraJson<{ id: string }>(['backup', '--name', 'b', '--file', fb, '--route', 'peer-dc'], { env: envB });
  kuraOk(['relay', 'once'], { env: envB });
  const local = await Repository.open(repoB, null);
  const ids = [...idsOf(await snapshotChunkIds(decodeSnapshot(readFileSync(path.join(repoB, 'snapshots', sb.id)), sb.id), listFetcher(local)))];
  let blob = Buffer.alloc(0);
  for await (const x of readBlobs(local, [ids[0]!], 'test')) blob = Buffer.from(x.blob);
  local.close();
  // tenant A's normal night: 24 MiB to send, then to restore
  kuraOk(['repo', 'init'], { env: envA });
  const dataA = new Prng(72).bytes(24 * MiB);
  const fa = path.join(dir, 'a.bin');
  writeFileSync(fa, dataA);
  const sa = kuraJson<{ id: string }>(['backup', '--name', 'a', '--file', fa, '--route', 'peer-dc'], { env: envA });

  const clients: Array<import('ssh2').Client> = [];
  t.after(() => clients.forEach((c) => c.destroy()));
  const rss = watchPeakRss(vault.child);
  // a vault that does not bound its memory would take the machine's: the abuse stops at 1 GiB
  const runaway = setInterval(() => {
    const kib = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${vault.child.pid}/status`, 'utf8'))?.[1] ?? 0);
    if (kib > 1024 * 1024) clients.forEach((c) => c.destroy());
  }, 50);
  t.after(() => clearInterval(runaway));
  const hello = encodeFrame(Frame.HELLO, { protocol: 3, tenant: 'city-b', client: 'abuser' });

  // 1. asks for its chunks over and over (4 × 128 Ki IDs, some 32 GB of answers), grants the
  // vault all the SSH window there is, and then reads nothing, not even its TCP socket
  const reader = await rawSession(vault.port, 'city-b', b.private);
  clients.push(reader.client);
  const inner = reader.client as unknown as { _protocol: { channelWindowAdjust: (id: number, n: number) => void }; _sock: import('node:net').Socket };
  const chIn = reader.ch as unknown as { incoming: { window: number }; outgoing: { id: number } };
  const more = 0xffffffff - chIn.incoming.window;
  chIn.incoming.window += more;
  inner._protocol.channelWindowAdjust(chIn.outgoing.id, more);
  const wanted = Buffer.concat(Array.from({ length: Math.ceil(131072 / ids.length) }, () => Buffer.concat(ids))).subarray(0, 131072 * 32);
  reader.ch.write(hello);
  for (let i = 0; i < 4; i++) reader.ch.write(encodeFrame(Frame.GET_CHUNKS, wanted));
  await new Promise((r) => setTimeout(r, 300));
  inner._sock.pause();
  // what it read before it stopped (SSH transport bytes) depends on how fast the machine was
  const readBeforePause = inner._sock.bytesRead;

  // 2. twelve sessions, each ~60 MiB of PUT and never a FLUSH
  const put = encodeFrame(Frame.PUT, Buffer.concat([ids[0]!, blake3(blob), blob]));
  const perSession = Math.ceil((60 * MiB) / blob.length);
  const holders = Array.from({ length: 12 }, async () => {
    const { client, ch } = await rawSession(vault.port, 'city-b', b.private);
    clients.push(client);
    const outcome = outcomeOf(ch);
    let over = false;
    void outcome.then(() => (over = true));
    ch.on('error', () => {});
    ch.write(hello);
    for (let i = 0; i < perSession && !over; i++) {
      if (!ch.write(put)) await Promise.race([new Promise((r) => ch.once('drain', r)), outcome]);
    }
    // all sent: it sits on it (an answer could only be a refusal)
    return Promise.race([outcome, new Promise<string>((r) => setTimeout(() => r('holding'), 3000).unref())]);
  });

  // 3. meanwhile tenant A's relay sends its night and restores it
  const sent = await kuraAsync(['relay', 'once', '--json'], { env: envA });
  const restored = await kuraAsync(['restore', '--from', 'peer-dc', sa.id], { env: envA });
  // the twelve have sent everything or been sent away
  const outcomes = await Promise.race([Promise.all(holders.map((h) => h.then((o) => o, () => 'failed'))), new Promise<string[]>((r) => setTimeout(() => r(['(still sending after 120 s)']), 120_000).unref())]);
  const peak = rss.stop();
  const now = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${vault.child.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
  const during = await sessionMemory(metricsPort);
  t.diagnostic(
    `vault peak RSS ${peak.toFixed(1)} MiB (now ${now.toFixed(1)} MiB; target 300); sessions held at most ${((during.session_memory_peak_bytes ?? 0) / MiB).toFixed(1)} MiB (vault.limits.totalBytes ${((during.session_memory_limit_bytes ?? 0) / MiB).toFixed(0)} MiB); the twelve: ${outcomes.join(' ')}`,
  );

  assert.equal(sent.status, 0, `the normal upload completes beside them: ${sent.stderr}`);
  assert.equal(restored.status, 0, restored.stderr);
  assert.ok(restored.stdout.equals(dataA), 'and restores byte-identical');
  // target 300 MiB; the bound asserted leaves room for a loaded machine's garbage collector
  assert.ok(peak <= 400, `the vault's peak RSS stays at or below 400 MiB (${peak.toFixed(1)} MiB)`);
  assert.ok((during.session_memory_peak_bytes ?? Infinity) <= (during.session_memory_limit_bytes ?? 0) + 2 * 16 * MiB, `what sessions held stays near vault.limits.totalBytes (${JSON.stringify(during)})`);
  assert.ok(outcomes.includes('E_BUSY'), `sessions holding PUT data without FLUSH are refused as busy (${outcomes.join(' ')})`);
  assert.ok(!outcomes.some((o) => !['E_BUSY', 'holding', 'closed'].includes(o)), `no other refusal (${outcomes.join(' ')})`);

  // the abusers leave: the vault lets go of their sessions and what they held, and still serves
  clients.forEach((c) => c.destroy());
  let after: Record<string, number> = {};
  await waitFor('the sessions to be let go', async () => {
    after = await sessionMemory(metricsPort);
    return after.sessions_open === 0 && after.session_memory_bytes === 0;
  }, 20_000).catch(() => {});
  assert.deepEqual([after.sessions_open, after.session_memory_bytes], [0, 0], `no session open and nothing held once they left (${JSON.stringify(after)})`);
  // what the vault wrote for tenant B, the client that asked for some 32 GB and read nothing
  // included: about what the SSH window and the socket buffers hold, not what was asked
  const usage = await kuraAsync(['vault', 'usage', '--json', '--config', vault.config]);
  assert.equal(usage.status, 0, usage.stderr);
  const wroteForB = (JSON.parse(usage.out) as { tenants: Array<{ tenant: string; wireOutBytes: number }> }).tenants.find((x) => x.tenant === 'city-b')!.wireOutBytes;
  const unread = wroteForB - readBeforePause;
  t.diagnostic(`the vault wrote ${(wroteForB / MiB).toFixed(1)} MiB for tenant B's sessions, ${(unread / MiB).toFixed(1)} MiB of it after the client stopped reading`);
  assert.ok(unread <= 48 * MiB, `reading from storage stopped while the client did not read (${(wroteForB / MiB).toFixed(1)} MiB written for it, ${(readBeforePause / MiB).toFixed(1)} MiB read before it stopped)`);
  const afterwards = await kuraAsync(['snapshots', '--from', 'peer-dc', '--json'], { env: envA });
  assert.equal(afterwards.status, 0, afterwards.stderr);
  assert.equal(vault.child.exitCode, null);
  assert.ok(!vault.audit().some((e) => e.code === 'E_INTERNAL'));
});
