import { formatBytes } from './context.js';

/**
 * Progress of a long command (backup, restore, relay once) for the person watching it: bytes,
 * rate and time left, redrawn on one line of a terminal; JSON lines for scripts that ask with
 * `--json --progress`; nothing when nobody watches (cron, systemd, a pipe) unless `--progress`.
 * Everything goes to standard error, so it never mixes with a result line or restored data.
 */
export type ProgressMode = 'tty' | 'json' | 'lines' | 'off';

/** The flags as commander gives them: --progress true, --no-progress false, neither undefined. */
export interface ProgressFlags {
  json?: boolean;
  progress?: boolean;
}

/** Which form, from the flags and whether standard error is a terminal (a pure rule, tested as a table). */
export function progressMode(flags: ProgressFlags, stderrIsTty: boolean): ProgressMode {
  if (flags.progress === false) return 'off';
  if (flags.progress === true) return flags.json ? 'json' : stderrIsTty ? 'tty' : 'lines';
  return stderrIsTty && !flags.json ? 'tty' : 'off';
}

export interface ProgressSample {
  /** seconds since the start */
  t: number;
  bytes: number;
}

const RATE_WINDOW_S = 5; // the rate is that of the last few seconds, so the time left follows changes of pace

/** Bytes a second over the last RATE_WINDOW_S seconds of samples (over all of them before that). */
export function rateOf(samples: readonly ProgressSample[]): number {
  if (samples.length < 2) return 0;
  const last = samples[samples.length - 1]!;
  let first = samples[0]!;
  for (const s of samples) {
    if (last.t - s.t <= RATE_WINDOW_S) {
      first = s;
      break;
    }
  }
  const dt = last.t - first.t;
  return dt > 0 ? (last.bytes - first.bytes) / dt : 0;
}

/** Seconds left at `rate`, or null when there is no total or no rate yet. */
export function etaOf(bytes: number, total: number | undefined, rate: number): number | null {
  if (total === undefined || rate <= 0) return null;
  return Math.max(0, (total - bytes) / rate);
}

export function formatEta(s: number | null): string {
  if (s === null) return '--:--';
  const sec = Math.round(s);
  const h = Math.floor(sec / 3600);
  const m = Math.floor((sec % 3600) / 60);
  const r = String(sec % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${r}` : `${m}:${r}`;
}

export interface ProgressReport {
  op: string;
  /** what is worked on: a snapshot, a source, a route */
  subject: string;
  bytes: number;
  total?: number | undefined;
  /** a few more facts shown after the rate (new bytes stored, snapshots sent) */
  extra?: Record<string, number | string>;
}

/** One human line: "restore 36331986affd  123.4 MiB / 512.0 MiB  24%  85.3 MiB/s  ETA 0:05". */
export function progressLine(r: ProgressReport, rate: number, eta: number | null): string {
  const parts = [`${r.op} ${r.subject}`, r.total !== undefined ? `${formatBytes(r.bytes)} / ${formatBytes(r.total)}` : formatBytes(r.bytes)];
  if (r.total !== undefined && r.total > 0) parts.push(`${Math.min(100, Math.floor((100 * r.bytes) / r.total))}%`);
  parts.push(`${formatBytes(Math.round(rate))}/s`);
  if (r.total !== undefined) parts.push(`ETA ${formatEta(eta)}`);
  for (const [k, v] of Object.entries(r.extra ?? {})) parts.push(`${k.replace(/([A-Z])/g, ' $1').toLowerCase()} ${typeof v === 'number' && /bytes/i.test(k) ? formatBytes(v) : v}`);
  return parts.join('  ');
}

interface Out {
  write(s: string): unknown;
  columns?: number;
}

/** A meter for one command: update() as work is done, finish() at the end (or on failure). */
export class ProgressMeter {
  private readonly t0 = performance.now();
  private readonly samples: ProgressSample[] = [];
  private timer: NodeJS.Timeout | null = null;
  private report: ProgressReport;
  private drawn = false;
  private poll: (() => void) | null = null;

  constructor(
    readonly mode: ProgressMode,
    op: string,
    subject: string,
    total: number | undefined,
    private readonly out: Out = process.stderr,
  ) {
    this.report = { op, subject, bytes: 0, total };
    if (mode === 'off') return;
    this.timer = setInterval(() => this.draw(), mode === 'tty' ? 250 : 1000);
    this.timer.unref();
  }

  update(bytes: number, extra?: Record<string, number | string>, total?: number): void {
    this.report.bytes = bytes;
    if (extra) this.report.extra = extra;
    if (total !== undefined) this.report.total = total;
  }

  /** Ask `read` for the state before each draw, for work that reports nothing itself. */
  follow(read: () => { bytes: number; extra?: Record<string, number | string>; total?: number }): void {
    this.poll = () => {
      const r = read();
      this.update(r.bytes, r.extra, r.total);
    };
  }

  private draw(final = false): void {
    this.poll?.();
    const t = (performance.now() - this.t0) / 1000;
    this.samples.push({ t, bytes: this.report.bytes });
    while (this.samples.length > 2 && t - this.samples[1]!.t > RATE_WINDOW_S) this.samples.shift();
    const rate = final ? (t > 0 ? this.report.bytes / t : 0) : rateOf(this.samples);
    const eta = etaOf(this.report.bytes, this.report.total, rate);
    if (this.mode === 'json') {
      const r = this.report;
      this.out.write(
        JSON.stringify({ type: 'progress', op: r.op, subject: r.subject, bytes: r.bytes, total: r.total ?? null, percent: r.total ? Number(((100 * r.bytes) / r.total).toFixed(1)) : null, bytesPerSecond: Math.round(rate), etaSeconds: eta === null ? null : Math.round(eta), elapsedSeconds: Number(t.toFixed(1)), ...(r.extra ?? {}), ...(final ? { done: true } : {}) }) + '\n',
      );
      return;
    }
    const line = progressLine(this.report, rate, eta);
    if (this.mode === 'lines') this.out.write(line + '\n');
    else {
      const width = (this.out.columns ?? 80) - 1;
      this.out.write(`\r\x1b[2K${line.length > width ? line.slice(0, width) : line}`);
      this.drawn = true;
    }
  }

  /** Stop; a terminal line is cleared (the command prints its own summary), scripts get a last line with done: true. */
  finish(ok: boolean): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.mode === 'json' && ok) this.draw(true);
    if (this.mode === 'tty' && this.drawn) this.out.write('\r\x1b[2K');
  }
}

/** A meter for a command run with `flags`, on standard error. */
export function meterFor(flags: ProgressFlags, op: string, subject: string, total?: number): ProgressMeter {
  return new ProgressMeter(progressMode(flags, Boolean(process.stderr.isTTY)), op, subject, total);
}
