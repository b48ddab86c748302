import { z } from 'zod';
import { KuraError } from '../../errors.js';
import { Frame } from '../../protocol/frames.js';
import type { VaultSession } from '../session.js';
import { json } from './body.js';

const name = z.string().min(1).max(200);
export const slotAcquireBody = json(z.object({ group: name, member: name, maxConcurrent: z.number().int().min(1).max(1000), ttlSeconds: z.number().int().min(1).max(86_400) }), '{group, member, maxConcurrent, ttlSeconds}');
export const slotRenewBody = json(z.object({ token: z.string().min(1).max(64), ttlSeconds: z.number().int().min(1).max(86_400) }), '{token, ttlSeconds}');
export const slotReleaseBody = json(z.object({ token: z.string().min(1).max(64) }), '{token}');

function table(s: VaultSession) {
  if (!s.ctx.slots) throw new KuraError('E_FORBIDDEN', 'this vault does not coordinate backup windows');
  return s.ctx.slots;
}

/** SLOT_ACQUIRE: one of the group's slots, or who holds them and when to ask again. */
export function slotAcquire(s: VaultSession, b: { group: string; member: string; maxConcurrent: number; ttlSeconds: number }): Promise<void> {
  const a = table(s).acquire(b.group, b.member, s.ctx.tenant, b.maxConcurrent, b.ttlSeconds * 1000);
  if (a.granted) s.ctx.audit.write({ event: 'slot', outcome: 'ok', tenant: s.ctx.tenant, session: s.id, group: b.group, member: b.member, holders: a.holders.length, max: b.maxConcurrent });
  return s.send(Frame.SLOT, a);
}

/** SLOT_RENEW: keep a slot while the export runs. */
export function slotRenew(s: VaultSession, b: { token: string; ttlSeconds: number }): Promise<void> {
  return s.send(Frame.SLOT, { granted: table(s).renew(b.token, s.ctx.tenant, b.ttlSeconds * 1000) });
}

/** SLOT_RELEASE: the export ended. */
export function slotRelease(s: VaultSession, b: { token: string }): Promise<void> {
  const released = table(s).release(b.token, s.ctx.tenant);
  s.ctx.audit.write({ event: 'slot-release', outcome: 'ok', tenant: s.ctx.tenant, session: s.id, released });
  return s.send(Frame.SLOT, { released });
}
