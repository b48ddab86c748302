import { readFileSync } from 'node:fs';
import { parseDuration } from '../config/duration.js';
import type { KuraConfig } from '../config/schema.js';
import { log } from '../log.js';
import { Frame, jsonOf } from '../protocol/frames.js';
import type { VaultConnection } from '../relay/connection.js';
import { routesOf } from '../relay/routes.js';
import type { SlotAnswer } from '../vault/slots.js';
import type { PlannedMember } from './window.js';

/** What a job records of its slot: coordinated, or why it ran without one. */
export interface SlotLease {
  coordination: string;
  release(): Promise<void>;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });

/**
 * Lease one of the group's slots from its coordinator before exporting, renewed while the export
 * runs and released at its end (an agent that dies leaves a lease that expires after the TTL).
 * A backup is never skipped for want of a slot: when the coordinator cannot be reached, or no
 * slot frees before `until` (the window's end), the job runs uncoordinated and says so.
 */
export async function takeSlot(cfg: KuraConfig, m: PlannedMember, o: { until: Date; ttlMs: number; signal?: AbortSignal }): Promise<SlotLease> {
  const lg = log().child({ group: m.group.name, member: m.member });
  const uncoordinated = (why: string): SlotLease => {
    lg.warn({ why }, 'running without a slot (uncoordinated)');
    return { coordination: `uncoordinated: ${why}`, release: async () => undefined };
  };
  if (!m.group.coordinator) return uncoordinated('the group names no coordinator');
  const route = routesOf(cfg)[m.group.coordinator];
  if (!route?.clientKey) return uncoordinated(`coordinator route ${m.group.coordinator} is not in modules.routing.routes or has no clientKey`);
  let conn: VaultConnection;
  try {
    const { VaultConnection } = await import('../relay/connection.js');
    conn = await VaultConnection.open(route.endpoints, {
      route: m.group.coordinator,
      tenant: route.tenant ?? cfg.tenant,
      privateKey: readFileSync(route.clientKey),
      keepaliveMs: parseDuration(cfg.relay.keepalive)!,
      readyTimeoutMs: parseDuration(cfg.relay.connectTimeout)!,
    });
  } catch (e) {
    return uncoordinated(`coordinator ${m.group.coordinator} unreachable: ${(e as Error).message}`);
  }
  const ask = { group: m.group.name, member: m.member, maxConcurrent: m.group.maxConcurrent, ttlSeconds: Math.ceil(o.ttlMs / 1000) };
  let waited = false;
  try {
    for (;;) {
      const a = jsonOf<SlotAnswer>(await conn.request(Frame.SLOT_ACQUIRE, ask, Frame.SLOT));
      if (a.granted && a.token) {
        const token = a.token;
        if (waited) lg.info({}, 'slot granted');
        const renew = setInterval(() => {
          conn.request(Frame.SLOT_RENEW, { token, ttlSeconds: ask.ttlSeconds }, Frame.SLOT).catch((e: Error) => lg.warn({ err: e.message }, 'slot lease not renewed; the export goes on'));
        }, Math.max(1000, o.ttlMs / 3));
        renew.unref();
        return {
          coordination: 'coordinated',
          release: async () => {
            clearInterval(renew);
            await conn.request(Frame.SLOT_RELEASE, { token }, Frame.SLOT).catch((e: Error) => lg.warn({ err: e.message }, 'slot not released; it expires after its TTL'));
            conn.close();
          },
        };
      }
      if (Date.now() >= o.until.getTime() || o.signal?.aborted) {
        conn.close();
        return uncoordinated(`no slot of group ${m.group.name} freed before ${o.until.toISOString()} (held by ${a.holders.map((h) => h.member).join(', ')})`);
      }
      if (!waited) lg.info({ holders: a.holders.map((h) => h.member) }, `waiting for a slot of group ${m.group.name}`);
      waited = true;
      await sleep(Math.min((a.retryAfterSeconds ?? 1) * 1000, 1000, Math.max(0, o.until.getTime() - Date.now())), o.signal);
    }
  } catch (e) {
    conn.close();
    return uncoordinated(`coordinator ${m.group.coordinator} failed: ${(e as Error).message}`);
  }
}
