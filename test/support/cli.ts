import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const KURA = path.join(ROOT, 'bin/kura');

export interface RunResult {
  status: number;
  stdout: Buffer;
  stderr: string;
  out: string;
}

export function kura(args: string[], opts: { input?: Buffer | string; env?: Record<string, string | undefined>; cwd?: string } = {}): RunResult {
  const r: SpawnSyncReturns<Buffer> = spawnSync(process.execPath, [KURA, ...args], {
    input: opts.input ?? '',
    env: { ...process.env, KURA_PASSPHRASE: 'correct horse', KURA_LOG_FORMAT: 'json', ...opts.env },
    cwd: opts.cwd ?? ROOT,
    maxBuffer: 1 << 30,
  });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.toString(), out: r.stdout.toString() };
}

/** Asserting wrapper: the command must succeed; failure shows its stderr. */
export function kuraOk(args: string[], opts: Parameters<typeof kura>[1] = {}): RunResult {
  const r = kura(args, opts);
  if (r.status !== 0) throw new Error(`kura ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r;
}

export function kuraJson<T = Record<string, unknown>>(args: string[], opts: Parameters<typeof kura>[1] = {}): T {
  const r = kuraOk([...args, '--json'], opts);
  return JSON.parse(r.out.trim().split('\n').pop()!) as T;
}

export function tempDir(t: { after: (fn: () => void) => void }, prefix = 'kura-test-'): string {
  const d = mkdtempSync(path.join(tmpdir(), prefix));
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

export function spawnKura(args: string[], env: Record<string, string> = {}) {
  return spawn(process.execPath, [KURA, ...args], { env: { ...process.env, KURA_PASSPHRASE: 'correct horse', KURA_LOG_FORMAT: 'json', ...env }, cwd: ROOT });
}

/** Like kura(), without blocking this process (needed when the test itself runs a proxy). */
export async function kuraAsync(args: string[], opts: { input?: Buffer | string; env?: Record<string, string | undefined> } = {}): Promise<RunResult> {
  const child = spawn(process.execPath, [KURA, ...args], { env: { ...process.env, KURA_PASSPHRASE: 'correct horse', KURA_LOG_FORMAT: 'json', ...opts.env }, cwd: ROOT });
  const out: Buffer[] = [];
  let err = '';
  child.stdout.on('data', (d: Buffer) => out.push(d));
  child.stderr.on('data', (d) => (err += d));
  child.stdin.end(opts.input ?? '');
  const status = await new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? -1)));
  const stdout = Buffer.concat(out);
  return { status, stdout, stderr: err, out: stdout.toString() };
}
