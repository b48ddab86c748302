import { spawn } from 'node:child_process';
import { KuraError } from '../errors.js';

/** The last bytes of a stream, for error messages and end-of-dump checks. */
export class Tail {
  private buf = Buffer.alloc(0);
  constructor(private readonly max: number) {}
  push(d: Buffer): void {
    this.buf = this.buf.length + d.length <= this.max ? Buffer.concat([this.buf, d]) : Buffer.concat([this.buf, d]).subarray(-this.max);
  }
  text(): string {
    return this.buf.toString('utf8').trim();
  }
  bytes(): Buffer {
    return this.buf;
  }
}

export interface ExportProcess {
  /** program and arguments (never a password) */
  command: string;
  args: string[];
  env?: Record<string, string>;
  cwd?: string | undefined;
  timeoutMs?: number | undefined;
  /** Checks the end of the output; returns why it is incomplete, or null. */
  checkEnd?: (tail: Buffer) => string | null;
  /** Aborts the export (daemon shutdown). */
  signal?: AbortSignal | undefined;
  /** What the job log calls it ("pg_dump of juki"). */
  what: string;
}

export interface ExportStream {
  stream: AsyncIterable<Buffer>;
  /** stderr of the export (last 64 KiB), for the job log */
  stderr: () => string;
}

/**
 * An export command's stdout as a stream. The stream fails (so no snapshot is written) when the
 * command exits non-zero, dies of a signal, runs past its timeout, is aborted, or its output does
 * not end the way a complete export ends. The command runs in its own process group so a
 * timeout also stops whatever it started.
 */
export function exportStream(p: ExportProcess): ExportStream {
  const stderr = new Tail(64 << 10);
  async function* run(): AsyncGenerator<Buffer> {
    const child = spawn(p.command, p.args, {
      cwd: p.cwd,
      env: { ...process.env, ...p.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let spawnError: Error | null = null;
    child.on('error', (e) => (spawnError = e));
    child.stderr!.on('data', (d: Buffer) => stderr.push(d));
    const exited = new Promise<{ code: number | null; sig: NodeJS.Signals | null }>((resolve) => child.once('close', (code, sig) => resolve({ code, sig })));
    let stopped: 'timeout' | 'abort' | null = null;
    const kill = (why: 'timeout' | 'abort') => {
      if (stopped || child.exitCode !== null) return;
      stopped = why;
      try {
        process.kill(-child.pid!, 'SIGTERM');
      } catch {
        /* already gone */
      }
      setTimeout(() => {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }, 5000).unref();
    };
    const timer = p.timeoutMs ? setTimeout(() => kill('timeout'), p.timeoutMs) : null;
    const onAbort = () => kill('abort');
    p.signal?.addEventListener('abort', onAbort);
    const tail = new Tail(4096);
    try {
      for await (const d of child.stdout! as AsyncIterable<Buffer>) {
        tail.push(d);
        yield d;
      }
      const { code, sig } = await exited;
      const err = stderr.text();
      const withErr = err ? `; its stderr ends: ${err.slice(-2000)}` : '';
      if (spawnError) throw new KuraError('E_EXPORT_FAILED', `${p.what}: cannot run ${p.command}: ${(spawnError as Error).message} (is it installed and on PATH?)`, { stderr: err });
      if (stopped === 'timeout') throw new KuraError('E_EXPORT_TIMEOUT', `${p.what} ran longer than its timeout (${Math.round(p.timeoutMs! / 1000)} s) and was stopped${withErr}`, { stderr: err });
      if (stopped === 'abort') throw new KuraError('E_EXPORT_FAILED', `${p.what} was stopped: kura is shutting down`, { stderr: err });
      if (sig) throw new KuraError('E_EXPORT_FAILED', `${p.what} was killed by ${sig}${withErr}`, { signal: sig, stderr: err });
      if (code !== 0) throw new KuraError('E_EXPORT_FAILED', `${p.what} exited with status ${code}${withErr}`, { exitCode: code, stderr: err });
      const incomplete = p.checkEnd?.(tail.bytes());
      if (incomplete) throw new KuraError('E_EXPORT_FAILED', `${p.what}: ${incomplete}${withErr}`, { stderr: err });
    } finally {
      if (timer) clearTimeout(timer);
      p.signal?.removeEventListener('abort', onAbort);
      // the consumer gave up (its own failure): do not leave the export running
      if (child.exitCode === null && child.signalCode === null) kill('abort');
    }
  }
  return { stream: run(), stderr: () => stderr.text() };
}
