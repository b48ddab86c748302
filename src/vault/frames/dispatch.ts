import { KuraError } from '../../errors.js';
import { Frame, frameName, type RawFrame } from '../../protocol/frames.js';
import { keyRefusal, operatorRefusal } from '../rights.js';
import type { VaultSession } from '../session.js';
import { frameEntries } from './index.js';

/**
 * One request: HELLO first; then the frame's entry decides. The SSH key's role is checked,
 * then the protocol version, then the payload's shape (a payload of the wrong shape is
 * E_PROTOCOL, here and nowhere else), then the person's rights (./rights.ts: their role, a
 * ticket that vault.sso.required asks for, a step-up for a sensitive frame), and the handler
 * gets the parsed value.
 */
export async function dispatch(s: VaultSession, f: RawFrame): Promise<void> {
  const entry = frameEntries.get(f.type);
  if (!s.greeted && f.type !== Frame.HELLO) throw new KuraError('E_PROTOCOL', `expected HELLO, got ${frameName(f.type)}`);
  if (!entry || (s.greeted && f.type === Frame.HELLO)) throw new KuraError('E_PROTOCOL', `unexpected ${frameName(f.type)} frame`);
  const name = frameName(f.type);
  const byKey = keyRefusal(s.ctx.role, s.ctx.tenant, { name, right: entry.role });
  if (byKey) throw new KuraError(byKey.code, byKey.message);
  if (entry.since && s.protocol < entry.since.protocol) throw new KuraError('E_PROTOCOL', `${name} needs protocol version ${entry.since.protocol}: ${entry.since.instead}`);
  const body = entry.body.parse(f.payload);
  if (!body.ok) throw new KuraError('E_PROTOCOL', `malformed ${name} frame: ${body.problem}`);
  const sensitive = typeof entry.sensitive === 'function' ? entry.sensitive(body.value) : entry.sensitive === true;
  const byPerson = operatorRefusal(
    { keyRole: s.ctx.role, tenant: s.ctx.tenant, person: s.person, sso: s.ctx.vault?.operators?.rules ?? null, now: Date.now(), steppedUp: s.steppedUp },
    { name, right: entry.role, sensitive, continues: entry.continues },
  );
  if (byPerson) throw new KuraError(byPerson.code, byPerson.message);
  if (sensitive && s.person) s.steppedUp = true;
  await entry.handle(s, body.value, f);
}
