import { KuraError } from '../../errors.js';
import { Frame, OLDEST_PROTOCOL, PROTOCOL_VERSION } from '../../protocol/frames.js';
import type { VaultSession } from '../session.js';

/** HELLO: the client's protocol version and the tenant it means; answered with the version both speak. */
export function hello(s: VaultSession, h: { protocol: number; tenant: string }): Promise<void> {
  if (h.protocol < OLDEST_PROTOCOL) {
    throw new KuraError('E_PROTOCOL_VERSION', `the client speaks protocol version ${h.protocol}; this vault speaks ${OLDEST_PROTOCOL} to ${PROTOCOL_VERSION}: upgrade the client`);
  }
  if (h.tenant !== s.ctx.tenant) throw new KuraError('E_TENANT_MISMATCH', `session of tenant ${s.ctx.tenant} asked for tenant ${JSON.stringify(h.tenant)}`);
  // a newer client is answered with this vault's version, which it then speaks
  s.protocol = Math.min(h.protocol, PROTOCOL_VERSION);
  s.greeted = true;
  return s.send(Frame.HELLO_OK, { protocol: s.protocol, tenant: s.ctx.tenant, role: s.ctx.role, session: s.id, maxFrame: s.ctx.maxFrame });
}
