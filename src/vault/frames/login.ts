import { z } from 'zod';
import { KuraError } from '../../errors.js';
import { Frame } from '../../protocol/frames.js';
import type { PendingSignIn } from '../operator/signins.js';
import type { VaultSession } from '../session.js';
import { json } from './body.js';

/**
 * LOGIN_BEGIN / LOGIN_WAIT: `kura login` starts a sign-in at the vault's operator endpoint
 * (vault.sso) and waits for the person to finish it in a browser; the answer is an operator
 * ticket (TICKET) or a coded refusal. Any role may sign in: the ticket, not the SSH key, says
 * what the person may do.
 */
export const loginBeginBody = json(
  z.object({ provider: z.string().max(64).optional(), stepUp: z.boolean().optional() }),
  '{provider?, stepUp?}',
);
export const loginWaitBody = json(z.object({}), '{}');

const begun = new WeakMap<VaultSession, PendingSignIn>();

function endpointOf(s: VaultSession) {
  const op = s.ctx.operator;
  if (!op) throw new KuraError('E_SSO_FAILED', 'this vault offers no sign-in here: its operators set vault.sso and modules.sso, and sign-ins go through `kura vault serve` (not kura vault stdio)', { reason: 'no operator endpoint' });
  return op;
}

export function loginBegin(s: VaultSession, b: { provider?: string | undefined; stepUp?: boolean | undefined }): Promise<void> {
  const op = endpointOf(s);
  const { ip, key } = s.ctx.peer;
  const r = op.begin({ provider: b.provider, stepUp: b.stepUp === true, origin: { tenant: s.ctx.tenant, session: s.id, ip, key } });
  begun.set(s, op.signIns.open(r.id)!);
  return s.send(Frame.LOGIN_URL, { url: r.url, code: r.code, expires: r.expires });
}

export async function loginWait(s: VaultSession): Promise<void> {
  const op = endpointOf(s);
  const p = begun.get(s);
  if (!p) throw new KuraError('E_PROTOCOL', 'LOGIN_WAIT without LOGIN_BEGIN on this session');
  begun.delete(s);
  const { token, ticket } = await op.signIns.wait(p);
  return s.send(Frame.TICKET, { token, ticket });
}
