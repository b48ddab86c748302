import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { KURA, ROOT, kuraOk, tempDir } from './support/cli.js';
import { exitOf, watchPeakRss } from './support/proc.js';

const GiB = 1 << 30;
const BIG = Math.round(Number(process.env.KURA_BIG_GIB ?? 2) * GiB);
const SMALL = 256 << 20;
const env = { ...process.env, KURA_PASSPHRASE: 'correct horse', KURA_LOG_FORMAT: 'json' };

/** generator | kura backup --stdin, with kura's peak RSS sampled from outside. */
async function pipedBackup(repo: string, name: string, seed: number, bytes: number): Promise<{ sha: string; peakMiB: number; id: string }> {
  const gen = spawn(process.execPath, [path.join(ROOT, 'scripts/gen-stream.mjs'), String(seed), String(bytes)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const kura = spawn(process.execPath, [KURA, 'backup', '--repo', repo, '--name', name, '--stdin', '--json'], { env, stdio: [gen.stdout, 'pipe', 'pipe'] });
  const rss = watchPeakRss(kura);
  let sha = '';
  let out = '';
  let err = '';
  gen.stderr.on('data', (d) => (sha += d));
  kura.stdout!.on('data', (d) => (out += d));
  kura.stderr!.on('data', (d) => (err += d));
  const [g, k] = await Promise.all([exitOf(gen), exitOf(kura)]);
  const peakMiB = rss.stop();
  assert.equal(g.code, 0, 'generator failed');
  assert.equal(k.code, 0, `kura backup failed: ${err}`);
  return { sha: sha.trim(), peakMiB, id: JSON.parse(out).id as string };
}

async function restoreSha(repo: string, id: string): Promise<{ sha: string; bytes: number; peakMiB: number }> {
  const child = spawn(process.execPath, [KURA, 'restore', '--repo', repo, id], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const rss = watchPeakRss(child);
  const h = createHash('sha256');
  let bytes = 0;
  child.stdout!.on('data', (d: Buffer) => {
    h.update(d);
    bytes += d.length;
  });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const { code } = await exitOf(child);
  assert.equal(code, 0, `restore failed: ${err}`);
  return { sha: h.digest('hex'), bytes, peakMiB: rss.stop() };
}

test(`a ${(BIG / GiB).toFixed(1)} GiB stream backs up and restores byte-identical with peak RSS that does not grow with input size`, async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);

  const small = await pipedBackup(repo, 'small', 11, SMALL);
  const big = await pipedBackup(repo, 'big', 12, BIG);
  t.diagnostic(`peak RSS: ${small.peakMiB.toFixed(0)} MiB for 256 MiB, ${big.peakMiB.toFixed(0)} MiB for ${(BIG / GiB).toFixed(1)} GiB`);
  assert.ok(big.peakMiB < 300, `peak RSS ${big.peakMiB.toFixed(0)} MiB exceeds 300 MiB`);
  // 8× the input may cost the chunk list (32 bytes per 64 KiB) and allocator noise, nothing more
  assert.ok(big.peakMiB < small.peakMiB + 48, `peak RSS grew from ${small.peakMiB.toFixed(0)} to ${big.peakMiB.toFixed(0)} MiB`);

  const r = await restoreSha(repo, big.id);
  assert.equal(r.bytes, BIG);
  assert.equal(r.sha, big.sha, 'restored bytes differ from what was generated');
  t.diagnostic(`restore peak RSS: ${r.peakMiB.toFixed(0)} MiB`);
  assert.ok(r.peakMiB < 300);
});
