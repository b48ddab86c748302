import { randomBytes, randomInt } from 'node:crypto';
import { KuraError } from '../../errors.js';
import type { OperatorTicket } from '../../sso/ticket.js';

/**
 * Sign-ins started by `kura login` (LOGIN_BEGIN) and not finished yet, like a device-code flow:
 * each has a random id (in the URL the person opens), a short human code (shown on the page and
 * in the terminal, to see they belong together) and an expiry (vault.sso.loginTimeout). It ends
 * once: with a ticket, or with a coded refusal; LOGIN_WAIT waits for that.
 */
export interface PendingSignIn {
  id: string;
  code: string;
  started: number;
  expires: number;
  stepUp: boolean;
  /** the provider the person asked for (kura login --provider), else any trusted one */
  provider?: string | undefined;
  /** who asked: the SSH session that started it */
  origin: { tenant: string; session: string; ip?: string | undefined; key?: string | undefined };
  outcome: { token: string; ticket: OperatorTicket } | KuraError | null;
}

const CODE_ALPHABET = 'BCDFGHJKLMNPQRSTVWXZ'; // no vowels (no words), no look-alikes

export function humanCode(): string {
  let s = '';
  for (let i = 0; i < 8; i++) s += (i === 4 ? '-' : '') + CODE_ALPHABET[randomInt(CODE_ALPHABET.length)];
  return s;
}

export class SignIns {
  private readonly pending = new Map<string, PendingSignIn>();
  private readonly waiters = new Map<string, Array<() => void>>();

  constructor(
    private readonly timeoutMs: number,
    /** called once for a sign-in that expired unfinished (for the audit log) */
    private readonly onTimeout: (p: PendingSignIn) => void,
  ) {}

  create(o: Pick<PendingSignIn, 'stepUp' | 'provider' | 'origin'>): PendingSignIn {
    this.sweep();
    const now = Date.now();
    const p: PendingSignIn = { id: randomBytes(16).toString('base64url'), code: humanCode(), started: now, expires: now + this.timeoutMs, outcome: null, ...o };
    this.pending.set(p.id, p);
    const timer = setTimeout(() => this.expire(p), this.timeoutMs + 50);
    timer.unref();
    return p;
  }

  /** A sign-in still open (not finished, not expired), or null. */
  open(id: string): PendingSignIn | null {
    const p = this.pending.get(id);
    return p && p.outcome === null && Date.now() < p.expires ? p : null;
  }

  settle(p: PendingSignIn, outcome: NonNullable<PendingSignIn['outcome']>): void {
    if (p.outcome !== null) return;
    p.outcome = outcome;
    for (const w of this.waiters.get(p.id) ?? []) w();
    this.waiters.delete(p.id);
  }

  /** The ticket the sign-in earned, or its refusal (E_SSO_FAILED), once it ends. */
  async wait(p: PendingSignIn, signal?: AbortSignal): Promise<{ token: string; ticket: OperatorTicket }> {
    if (p.outcome === null) {
      await new Promise<void>((resolve) => {
        const list = this.waiters.get(p.id) ?? [];
        list.push(resolve);
        this.waiters.set(p.id, list);
        signal?.addEventListener('abort', () => resolve(), { once: true });
      });
    }
    const o = p.outcome;
    if (o === null) throw new KuraError('E_SSO_FAILED', 'the sign-in was abandoned (the session ended)');
    if (o instanceof KuraError) throw o;
    return o;
  }

  /** End every open sign-in (the vault is stopping): their LOGIN_WAITs answer at once. */
  endAll(reason: string): void {
    for (const p of this.pending.values()) if (p.outcome === null) this.settle(p, new KuraError('E_SSO_FAILED', reason, { reason: 'stopping' }));
  }

  private expire(p: PendingSignIn): void {
    if (p.outcome !== null) return;
    this.settle(p, new KuraError('E_SSO_FAILED', `the sign-in was not finished within ${Math.round(this.timeoutMs / 1000)} s (vault.sso.loginTimeout): run kura login again and complete it in the browser`, { reason: 'timeout' }));
    this.onTimeout(p);
  }

  private sweep(): void {
    const now = Date.now();
    for (const [id, p] of this.pending) if (now > p.expires + 60_000) this.pending.delete(id);
  }
}
