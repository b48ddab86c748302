import type { KuraConfig } from '../config/schema.js';
import { Frame, jsonOf } from '../protocol/frames.js';
import { Relay } from '../relay/relay.js';
import { routingRecords } from '../relay/transfer-log.js';
import type { Repository } from '../repository/repository.js';
import type { RouteStatusReply } from '../vault/forward.js';
import { hopReport, type Hop } from './hops.js';

export interface RouteHops {
  route: string;
  tenant: string | null;
  vaultTime: string | null;
  hops: Hop[];
  /** why the route's vault did not answer (hop 1 is then all there is) */
  error: string | null;
}

/** The I/O edge of hops.ts: the local queue for hop 1, the route's vault (ROUTE_STATUS) for the next ones. */
export async function collectHops(repo: Repository, cfg: KuraConfig, route: string, now = () => new Date(), timeoutMs = 5000): Promise<RouteHops> {
  const st = repo.catalogue.ops.routeStates().find((r) => r.route === route);
  const first = {
    state: st?.paused ? 'paused' : (st?.state ?? 'idle'),
    lastError: st?.last_error ?? null,
    clockOffsetMs: routingRecords(repo.catalogue).clocks().find((c) => c.hop === route)?.offsetMs ?? null,
    deliveries: repo.catalogue.ops.deliveries(),
  };
  let far: RouteStatusReply | null = null;
  let error: string | null = null;
  // a vault that does not answer soon is reported, not waited for (status and top print at once)
  const relay = new Relay(repo, cfg, [route]);
  const giveUp = setTimeout(() => relay.stop(), timeoutMs);
  try {
    const conn = await relay.openSession(route);
    try {
      far = jsonOf<RouteStatusReply>(await conn.request(Frame.ROUTE_STATUS, {}, Frame.ROUTE_STATUS_REPLY));
    } finally {
      conn.close();
    }
  } catch (e) {
    error = `${(e as { code?: string }).code ?? 'E_LINK_DOWN'}: ${(e as Error).message}`;
  } finally {
    clearTimeout(giveUp);
  }
  return { route, tenant: far?.tenant ?? null, vaultTime: far?.time ?? null, hops: hopReport(route, first, far, now()), error };
}
