import { Frame } from '../../protocol/frames.js';
import type { VaultSession } from '../session.js';

/** ROUTE_STATUS: the tenant's hops beyond this vault (what it holds, what each forwarding route delivered). */
export function routeStatus(s: VaultSession): Promise<void> {
  const { tenant, repo, routing } = s.ctx;
  const reply = routing ? routing.routeStatus(tenant, repo) : { tenant, time: new Date().toISOString(), newest: [], routes: [] };
  return s.send(Frame.ROUTE_STATUS_REPLY, reply);
}
