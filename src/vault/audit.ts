import { closeSync, fstatSync, fsyncSync, ftruncateSync, openSync, writeSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { log } from '../log.js';

/**
 * Append-only audit log (JSON lines): every session, operation and refused attempt. Opened with
 * O_APPEND so concurrent writers (serve and several stdio sessions) interleave whole lines;
 * refusals are fsynced, since they are what an investigation needs. A line that cannot be
 * written (the vault's disk is full) goes to the error log instead, and the part of it that was
 * written is cut off again, so the log stays whole lines: the vault keeps serving.
 */
export interface AuditEvent {
  event: string;
  outcome: 'ok' | 'refused' | 'error';
  tenant?: string;
  user?: string;
  ip?: string;
  key?: string;
  session?: string;
  code?: string;
  reason?: string;
  [k: string]: unknown;
}

export class AuditLog {
  private fd: number;
  /** Called for every event (the vault's metrics and notifications count from here). */
  private readonly observers: Array<(e: AuditEvent) => void> = [];

  subscribe(fn: (e: AuditEvent) => void): void {
    this.observers.push(fn);
  }

  constructor(readonly file: string) {
    mkdirSync(path.dirname(file), { recursive: true });
    this.fd = openSync(file, 'a', 0o640);
  }

  write(e: AuditEvent): void {
    const line = Buffer.from(JSON.stringify({ time: new Date().toISOString(), ...e }) + '\n');
    let written = 0;
    try {
      // a full disk takes part of a line and then refuses the rest
      while (written < line.length) written += writeSync(this.fd, line, written);
      if (e.outcome !== 'ok') fsyncSync(this.fd);
    } catch (err) {
      if (written > 0 && written < line.length) this.cutTornLine(written);
      log().error({ audit: e, errno: (err as NodeJS.ErrnoException).code }, `the audit log ${this.file} cannot be written (${(err as Error).message}); the event is logged here instead`);
    }
    for (const o of this.observers) o(e);
  }

  /**
   * Remove the `written` bytes of a line the disk did not take whole (O_APPEND: they are the file's
   * last, unless another writer appended meanwhile, which a full disk makes unlikely).
   */
  private cutTornLine(written: number): void {
    try {
      ftruncateSync(this.fd, fstatSync(this.fd).size - written);
    } catch {
      // nothing more to do: the log keeps a torn line
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}
