import { closeSync, fsyncSync, openSync, writeSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { log } from '../log.js';

/**
 * Append-only audit log (JSON lines): every session, operation and refused attempt. Opened with
 * O_APPEND so concurrent writers (serve and several stdio sessions) interleave whole lines;
 * refusals are fsynced, since they are what an investigation needs. A line that cannot be
 * written (the vault's disk is full) goes to the error log instead: the vault keeps serving.
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
    const line = JSON.stringify({ time: new Date().toISOString(), ...e }) + '\n';
    try {
      writeSync(this.fd, line);
      if (e.outcome !== 'ok') fsyncSync(this.fd);
    } catch (err) {
      log().error({ audit: e, errno: (err as NodeJS.ErrnoException).code }, `the audit log ${this.file} cannot be written (${(err as Error).message}); the event is logged here instead`);
    }
    for (const o of this.observers) o(e);
  }

  close(): void {
    closeSync(this.fd);
  }
}
