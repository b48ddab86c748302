import type { EventInput } from './events.js';

/** A peer's clock is off by more than maxClockSkew: send and receive logs of the hop disagree. */
export function clockSkewEvent(hop: string, peer: string, offsetMs: number, maxMs: number, tenant?: string): EventInput {
  const s = (offsetMs / 1000).toFixed(1);
  return {
    event: 'clock.skew',
    route: hop,
    tenant,
    key: `clock.skew:${hop}:${peer}`,
    title: `kura CLOCK SKEW: ${peer} is ${s} s off (${hop})`,
    text: `The clock of ${peer}, measured at HELLO, is ${s} s ${offsetMs > 0 ? 'ahead of' : 'behind'} this host's (allowed: ${(maxMs / 1000).toFixed(1)} s). Send and receive log times and RPO exposure across the hop are off by as much: check NTP on both hosts.`,
    data: { hop, peer, offsetMs, maxClockSkewMs: maxMs },
  };
}

/** A vault answered that a tenant lives elsewhere now (a verified, signed MOVED): the relay follows. */
export function routeMovedEvent(route: string, tenant: string, endpoints: string[], signedBy: string): EventInput {
  return {
    event: 'route.moved',
    route,
    tenant,
    key: `route.moved:${route}:${tenant}:${endpoints.join(',')}`,
    title: `kura route ${route}: tenant ${tenant} moved to ${endpoints.join(', ')}`,
    text: `The vault of route ${route} answered that tenant ${tenant} now lives at ${endpoints.join(', ')} (signed by its host key ${signedBy}). The relay keeps this entry and sends there from now on; no config change is needed.`,
    data: { endpoints, signedBy },
  };
}
