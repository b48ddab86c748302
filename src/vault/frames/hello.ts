import { KuraError } from '../../errors.js';
import { Frame, OLDEST_PROTOCOL, PROTOCOL_VERSION } from '../../protocol/frames.js';
import type { VaultSession } from '../session.js';

/** HELLO: the client's protocol version and the tenant it means; answered with the version both speak. */
export async function hello(s: VaultSession, h: { protocol: number; tenant: string; time?: number | undefined }): Promise<void> {
  if (h.protocol < OLDEST_PROTOCOL) {
    throw new KuraError('E_PROTOCOL_VERSION', `the client speaks protocol version ${h.protocol}; this vault speaks ${OLDEST_PROTOCOL} to ${PROTOCOL_VERSION}: upgrade the client`);
  }
  if (h.tenant !== s.ctx.tenant) throw new KuraError('E_TENANT_MISMATCH', `session of tenant ${s.ctx.tenant} asked for tenant ${JSON.stringify(h.tenant)}`);
  // a tenant that moved is told where it lives now (signed by the host key), and the session ends
  const moved = s.ctx.routing?.hello(s, h.time) ?? null;
  if (moved) {
    await s.send(Frame.MOVED, moved);
    s.stop();
    return;
  }
  // a newer client is answered with this vault's version, which it then speaks
  s.protocol = Math.min(h.protocol, PROTOCOL_VERSION);
  s.greeted = true;
  return s.send(Frame.HELLO_OK, { protocol: s.protocol, tenant: s.ctx.tenant, role: s.ctx.role, session: s.id, maxFrame: s.ctx.maxFrame, time: Date.now() });
}
