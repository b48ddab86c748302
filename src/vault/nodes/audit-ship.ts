import { closeSync, existsSync, fsyncSync, openSync, readFileSync, readSync, renameSync, statSync, writeFileSync } from 'node:fs';
import type { AuditEvent } from '../audit.js';
import { segmentName, shipBackoffMs, shipDue } from './audit-segments.js';

/** Where segments go: the node's folder of the audit area in the bucket (key "<node>/<segment>.jsonl"). */
export interface SegmentSink {
  put(key: string, body: Buffer): Promise<void>;
}

export interface ShipOptions {
  /** the local audit log (the write-ahead record; AuditLog.file) */
  file: string;
  /** how far it was shipped, durable: "<vault.root>/audit-shipped.json" */
  stateFile: string;
  node: string;
  sink: SegmentSink;
  /** ordinary lines wait at most this long */
  everyMs: number;
  /** … or until this many wait */
  lines: number;
  log: { info(o: object, m: string): void; error(o: object, m: string): void };
  /** largest segment (a backlog after an outage goes up in several) */
  maxSegmentBytes?: number;
  /** how often the local file is looked at (also catches lines other processes wrote: kura vault prune by hand) */
  pollMs?: number;
}

interface ShipState {
  ino: number;
  offset: number;
}

const mono = () => performance.now();

/**
 * Ships a vault node's audit log into the shared store (an observer of AuditLog: audit.ts knows
 * nothing of it). The local file stays the record every line is written to first; this reads it
 * from the offset shipped so far, puts the whole lines as one segment, and only then records the
 * new offset (durably: temp file, fsync, rename). A node killed at any point ships at its next
 * start whatever it had not (a range shipped but not recorded goes up again under the same name).
 * Refusals and errors go up at once, ordinary lines in batches. A bucket that does not answer
 * stops nothing: the error is logged, the shipment retried with a doubling pause (at most 60 s),
 * and the lines wait on the local disk.
 */
export class AuditShipper {
  private state: ShipState = { ino: 0, offset: 0 };
  private urgent = false;
  private waitingLines = 0;
  private waitingSinceMono: number | null = null;
  private failures = 0;
  private retryAtMono = 0;
  private running: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly maxSegment: number;

  constructor(private readonly o: ShipOptions) {
    this.maxSegment = o.maxSegmentBytes ?? 4 << 20;
    this.state = readState(o.stateFile);
  }

  /** Ship what an earlier run left (at once), then keep shipping. */
  start(): void {
    this.urgent = true; // lines written before a crash go up now
    this.timer = setInterval(() => this.poke(), this.o.pollMs ?? Math.min(1000, this.o.everyMs));
    this.timer.unref();
    this.poke();
  }

  /** AuditLog observer: the event's line is in the file already. */
  observe(e: AuditEvent): void {
    this.waitingLines++;
    this.waitingSinceMono ??= mono();
    if (e.outcome !== 'ok') this.urgent = true;
    if (e.outcome !== 'ok' || this.waitingLines >= this.o.lines) this.poke();
  }

  /** Bytes of the local file not shipped yet (0 when it is all in the store). */
  waitingBytes(): number {
    const st = statOf(this.o.file);
    if (!st) return 0;
    return st.ino !== this.state.ino || st.size < this.state.offset ? st.size : st.size - this.state.offset;
  }

  /** Decide, and ship when due (one shipment at a time). */
  poke(): void {
    if (this.running || this.stopped) return;
    if (this.failures > 0 && mono() < this.retryAtMono) return;
    const waiting = this.waitingBytes();
    if (waiting > 0) this.waitingSinceMono ??= mono();
    const due = shipDue({ urgent: this.urgent, waitingBytes: waiting, waitingLines: this.waitingLines, oldestWaitMs: this.waitingSinceMono === null ? 0 : mono() - this.waitingSinceMono, lines: this.o.lines, everyMs: this.o.everyMs });
    if (!due) {
      if (waiting === 0) this.urgent = false;
      return;
    }
    this.running = this.shipAll().finally(() => (this.running = null));
  }

  /** Ship until nothing waits, or a shipment fails. */
  private async shipAll(): Promise<void> {
    try {
      while (await this.shipOne());
      this.failures = 0;
      this.urgent = false;
      this.waitingLines = 0;
      this.waitingSinceMono = null;
    } catch (e) {
      this.failures++;
      const pause = shipBackoffMs(this.failures);
      this.retryAtMono = mono() + pause;
      this.o.log.error({ node: this.o.node, waitingBytes: this.waitingBytes(), failures: this.failures, err: (e as Error).message }, `audit lines not shipped to the store (${(e as Error).message}); they stay in ${this.o.file} and go up when the bucket answers (next try in ${pause / 1000} s)`);
    }
  }

  /** One segment from the shipped offset; false when there was nothing (whole) to ship. */
  private async shipOne(): Promise<boolean> {
    const st = statOf(this.o.file);
    if (!st) return false;
    // a new file (rotated) or a shorter one (truncated): from its start
    if (st.ino !== this.state.ino || st.size < this.state.offset) this.state = { ino: st.ino, offset: 0 };
    const { ino, offset } = this.state;
    if (st.size <= offset) return false;
    const want = Math.min(st.size - offset, this.maxSegment);
    const buf = Buffer.alloc(want);
    const fd = openSync(this.o.file, 'r');
    let got = 0;
    try {
      while (got < want) {
        const n = readSync(fd, buf, got, want - got, offset + got);
        if (n === 0) break;
        got += n;
      }
    } finally {
      closeSync(fd);
    }
    let end = buf.subarray(0, got).lastIndexOf(0x0a) + 1;
    // only whole lines (the last may be being written); a line longer than a segment goes as it is
    if (end === 0) {
      if (got < this.maxSegment) return false;
      end = got;
    }
    const body = buf.subarray(0, end);
    const nl = body.indexOf(0x0a);
    const firstLine = body.subarray(0, nl === -1 ? body.length : nl).toString('utf8');
    const key = `${this.o.node}/${segmentName(firstTimeOf(firstLine), ino, offset)}`;
    await this.o.sink.put(key, body);
    this.state = { ino, offset: offset + end };
    writeState(this.o.stateFile, this.state);
    return true;
  }

  /** Stop polling; ship what waits (at most `timeoutMs`: a bucket that does not answer delays no stop). */
  async stop(timeoutMs = 5000): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.running?.catch(() => {});
    this.urgent = true;
    this.failures = 0;
    this.poke();
    this.stopped = true;
    const last = this.running as Promise<void> | null;
    if (last) await Promise.race([last, new Promise((r) => setTimeout(r, timeoutMs).unref())]);
  }
}

function statOf(file: string): { ino: number; size: number } | null {
  try {
    const st = statSync(file);
    return { ino: st.ino, size: st.size };
  } catch {
    return null;
  }
}

function firstTimeOf(line: string): string {
  try {
    const t = (JSON.parse(line) as { time?: unknown }).time;
    if (typeof t === 'string' && Number.isFinite(Date.parse(t))) return t;
  } catch {
    // a torn line: the segment is named by the time it is shipped
  }
  return new Date().toISOString();
}

function readState(file: string): ShipState {
  if (!existsSync(file)) return { ino: 0, offset: 0 };
  try {
    const s = JSON.parse(readFileSync(file, 'utf8')) as Partial<ShipState>;
    if (typeof s.ino === 'number' && typeof s.offset === 'number' && s.offset >= 0) return { ino: s.ino, offset: s.offset };
  } catch {
    // unreadable: ship the whole file again (segments of the same ranges keep their names)
  }
  return { ino: 0, offset: 0 };
}

function writeState(file: string, s: ShipState): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, JSON.stringify(s) + '\n');
  const fd = openSync(tmp, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}
