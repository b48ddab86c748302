/**
 * Route bandwidth: a pure plan (which cap applies at a moment) and a token bucket that enforces
 * it. Windows are in the relay's local time; the first window matching the moment wins.
 */
export interface BandwidthWindow {
  days: string[];
  from: string;
  to: string;
  rate: string;
}

const DAY = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

/** "2MB/s" → 2e6, "500KiB/s" → 512000, "unlimited" → null. */
export function parseRate(text: string): number | null {
  if (text === 'unlimited') return null;
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgG])?(i)?B\/s$/.exec(text.trim());
  if (!m) throw new Error(`not a rate: ${text}`);
  const base = m[3] ? 1024 : 1000;
  const exp = { k: 1, m: 2, g: 3 }[(m[2] ?? '').toLowerCase()] ?? 0;
  return Number(m[1]) * base ** exp;
}

function minutes(hhmm: string): number {
  const [h, m] = hhmm.split(':').map(Number) as [number, number];
  return h * 60 + m;
}

/** The cap (bytes/s, null = unlimited) in force at `at`. */
export function rateAt(windows: readonly BandwidthWindow[], defaultRate: string, at: Date): number | null {
  const day = DAY[at.getDay()]!;
  const prevDay = DAY[(at.getDay() + 6) % 7]!;
  const now = at.getHours() * 60 + at.getMinutes();
  for (const w of windows) {
    const from = minutes(w.from);
    const to = minutes(w.to);
    const inside = from < to ? w.days.includes(day) && now >= from && now < to : (w.days.includes(day) && now >= from) || (w.days.includes(prevDay) && now < to); // spans midnight: belongs to the day it started
    if (inside) return parseRate(w.rate);
  }
  return parseRate(defaultRate);
}

export interface Clock {
  now(): number; // ms
  sleep(ms: number): Promise<void>;
}

export const realClock: Clock = { now: () => performance.now(), sleep: (ms) => new Promise((r) => setTimeout(r, ms)) };

/**
 * Token bucket: `take(n)` resolves when n bytes may go. Burst = a quarter second of the rate;
 * a frame larger than the bucket goes into debt rather than waiting forever.
 */
export class TokenBucket {
  private tokens = 0;
  private last: number;

  constructor(private readonly rate: () => number | null, private readonly clock: Clock = realClock) {
    this.last = clock.now();
  }

  async take(n: number): Promise<void> {
    const r = this.rate();
    const now = this.clock.now();
    if (r === null) {
      this.last = now;
      this.tokens = 0;
      return;
    }
    const burst = r / 4;
    this.tokens = Math.min(burst, this.tokens + ((now - this.last) / 1000) * r);
    this.last = now;
    this.tokens -= n;
    if (this.tokens < 0) await this.clock.sleep((-this.tokens / r) * 1000);
  }
}
