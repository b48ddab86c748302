import { Frame } from '../../protocol/frames.js';
import { setProtected } from '../../retention/protect.js';
import type { VaultSession } from '../session.js';

/** PROTECT: set or lift a snapshot's long-term hold. */
export async function protect(s: VaultSession, b: { id: string; protect: boolean }): Promise<void> {
  const changed = await setProtected(s.ctx.repo, b.id, b.protect);
  s.ctx.audit.write({ event: b.protect ? 'protect' : 'unprotect', outcome: 'ok', tenant: s.ctx.tenant, session: s.id, snapshot: b.id, changed });
  return s.send(Frame.PROTECTED, { id: b.id, protected: b.protect, changed });
}
