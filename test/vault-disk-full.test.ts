import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { kuraAsync, kuraJson, kuraOk, spawnKura, tempDir } from './support/cli.js';
import { Prng } from './support/generate.js';
import { exitOf, waitFor } from './support/proc.js';
import { agentConfig, sshKey, startVault } from './support/vault.js';

const MiB = 1 << 20;

function routeState(repo: string): { queued: number; state?: string; lastError?: string | null } {
  const db = new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true, fileMustExist: true });
  try {
    const queued = (db.prepare('SELECT count(*) AS n FROM queue WHERE sent IS NULL').get() as { n: number }).n;
    const r = db.prepare('SELECT state, last_error FROM route_state WHERE route = ?').get('peer-dc') as { state: string; last_error: string | null } | undefined;
    return { queued, state: r?.state, lastError: r?.last_error };
  } finally {
    db.close();
  }
}

test('a vault whose disk is full answers E_IO naming the free space; the route waits (not refused) and completes once space is freed', async (t) => {
  const dir = tempDir(t);
  // the vault's directory holds a mount point: it is cleaned up here, after the vault stopped and
  // the file system was unmounted (tempDir's removal would meet a busy mount)
  const vaultDir = mkdtempSync(path.join(tmpdir(), 'kura-test-vault-full-'));
  const root = path.join(vaultDir, 'vault');
  mkdirSync(root);
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', root], { stdio: 'pipe' });
  } catch (e) {
    rmSync(vaultDir, { recursive: true, force: true });
    t.skip(`needs a small file system of its own for the vault (mount -t tmpfs, as root): ${(e as Error).message.split('\n')[0]}`);
    return;
  }
  let stopVault = async () => {};
  const relays: ChildProcess[] = [];
  t.after(async () => {
    for (const r of relays) r.kill('SIGKILL');
    await stopVault();
    execFileSync('umount', [root]);
    rmSync(vaultDir, { recursive: true, force: true });
  });
  const key = sshKey(dir, 'relay');
  const vault = await startVault(vaultDir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  stopVault = () => vault.stop();
  // the vault's file system has ~8 MiB left; the snapshot needs 10
  const filler = path.join(root, 'filler');
  writeFileSync(filler, Buffer.alloc(16 * MiB, 1));
  const env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private }) };
  kuraOk(['repo', 'init'], { env });
  const data = new Prng(61).bytes(10 * MiB);
  const f = path.join(dir, 'data.bin');
  writeFileSync(f, data);
  const { id } = kuraJson<{ id: string }>(['backup', '--name', 'db', '--file', f, '--route', 'peer-dc'], { env });

  const once = await kuraAsync(['relay', 'once', '--json'], { env });
  assert.equal(once.status, 75, `relay once: something is left, to retry later (${once.stderr})`);
  const report = JSON.parse(once.out.trim().split('\n').pop()!) as { state: string; error: { code: string; message: string } };
  assert.equal(report.state, 'waiting-for-line', 'a full vault disk is a fault at the far end of the line, not a refusal');
  assert.equal(report.error.code, 'E_IO');
  assert.match(report.error.message, /storage on this vault is full: [\d.]+ (?:B|[KMG]iB) \(\d+ bytes\) free of 24\.0 MiB/);
  const repo = path.join(dir, 'repo');
  assert.equal(routeState(repo).queued, 1, 'the snapshot stays queued');

  // the daemon retries by itself; the route waits while the disk is full ...
  const relay = spawnKura(['relay', 'run'], env);
  relays.push(relay);
  await waitFor('the relay to try again and wait', () => /E_IO/.test(routeState(repo).lastError ?? '') && routeState(repo).state === 'waiting-for-line', 30_000);
  // for 3 s it retries (sending, then waiting again), never "refused", the snapshot kept queued
  const seen = new Set<string>();
  for (const end = Date.now() + 3000; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) {
    const s = routeState(repo);
    seen.add(`${s.state}${s.queued === 1 ? '' : ` (queued ${s.queued})`}`);
  }
  assert.ok([...seen].every((s) => s === 'waiting-for-line' || s === 'sending'), `retrying, never refused: ${[...seen].join(', ')}`);
  // ... and completes once space is freed
  rmSync(filler);
  await waitFor('the route to complete', () => routeState(repo).queued === 0, 60_000);
  relay.kill('SIGTERM');
  assert.equal((await exitOf(relay)).code, 0);
  const restored = await kuraAsync(['restore', '--from', 'peer-dc', id], { env });
  assert.equal(restored.status, 0, restored.stderr);
  assert.ok(restored.stdout.equals(data), 'the snapshot restores byte-identical from the vault');

  const audit = vault.audit();
  assert.ok(audit.some((e) => e.outcome === 'refused' && e.code === 'E_IO' && /free of/.test(String(e.reason))), 'the refusal is audited with the free space');
  assert.deepEqual(audit.filter((e) => e.code === 'E_INTERNAL'), [], 'no internal error');
  assert.equal(vault.child.exitCode, null, 'the vault kept serving');
});

test('the audit log on a full disk keeps whole lines: a line the disk takes only in part is cut off again', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kura-test-audit-full-'));
  const mnt = path.join(dir, 'mnt');
  mkdirSync(mnt);
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt], { stdio: 'pipe' });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    t.skip(`needs mount -t tmpfs (as root): ${(e as Error).message.split('\n')[0]}`);
    return;
  }
  const { AuditLog } = await import('../src/vault/audit.js');
  const file = path.join(mnt, 'audit.jsonl');
  const audit = new AuditLog(file);
  t.after(() => {
    audit.close();
    execFileSync('umount', [mnt]);
    rmSync(dir, { recursive: true, force: true });
  });
  // lines of odd lengths until well past the space there is: some end in the middle of a page
  for (let i = 0; i < 400; i++) audit.write({ event: 'session-refused', outcome: 'refused', tenant: 'city-a', code: 'E_IO', reason: 'x'.repeat(1 + ((i * 37) % 700)) });
  const text = readFileSync(file, 'utf8');
  assert.ok(text.length > 32 << 10, `the disk filled up (${text.length} bytes written)`);
  assert.ok(text.endsWith('\n'), 'the log ends with a whole line');
  for (const l of text.trimEnd().split('\n')) JSON.parse(l);
});
