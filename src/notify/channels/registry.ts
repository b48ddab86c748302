import { z } from 'zod';
import { parseDuration } from '../../config/duration.js';
import { expandOn, MUST_ACT, ON_WORDS, type EventKind, type NotifyEvent } from '../events.js';

/**
 * Notification channels, registered with their config key, options schema and code: adding a
 * channel is one file and one register() call. The config's `notifications.<key>` is a list of
 * that channel's destinations; each may narrow what it hears (`on`, `tenants`, `sources`).
 */
export interface Channel {
  /** e.g. "email[0] (ops@city-a.example)": for logs and `kura notify` */
  readonly label: string;
  /** Deliver one event; throws when the far side did not take it (the outbox retries). */
  send(e: NotifyEvent): Promise<void>;
  close?(): void;
}

export interface ChannelFilter {
  on: ReadonlySet<EventKind>;
  tenants?: readonly string[] | undefined;
  sources?: readonly string[] | undefined;
  maxPerHour: number;
}

export interface ChannelDefinition<S extends z.ZodObject = z.ZodObject> {
  /** key under `notifications:` */
  key: string;
  description: string;
  options: S;
  create(options: z.infer<S>, label: string): Channel;
}

const registry: ChannelDefinition[] = [];

export function registerChannel<S extends z.ZodObject>(def: ChannelDefinition<S>): void {
  if (registry.some((d) => d.key === def.key)) throw new Error(`notification channel ${def.key} registered twice`);
  registry.push(def as unknown as ChannelDefinition);
}

export function registeredChannels(): readonly ChannelDefinition[] {
  return registry;
}

const duration = z.string().refine((v) => parseDuration(v) !== null, 'a duration like "10s", "5m" or "1h"');

/** What every channel's entries share: which events, for whom, how many an hour. */
export const commonChannelOptions = {
  on: z
    .array(z.enum(ON_WORDS as [string, ...string[]]))
    .default(['failure'])
    .describe(`events to send: ${MUST_ACT.join(', ')}, backup.ok; "failure" = every event a person must act on (and its all-clear), "success" = backup.ok`),
  tenants: z.array(z.string()).optional().describe('only events of these tenants (per-tenant recipients)'),
  sources: z.array(z.string()).optional().describe('only events of these sources'),
  maxPerHour: z.number().int().min(1).max(10_000).default(30).describe('at most this many messages an hour to this destination; the rest wait in the queue, none is dropped'),
  timeout: duration.default('10s').describe('one delivery attempt gives up after this long (and is retried later)'),
};

export function filterOf(o: { on: readonly string[]; tenants?: readonly string[] | undefined; sources?: readonly string[] | undefined; maxPerHour: number }): ChannelFilter {
  return { on: expandOn(o.on as Parameters<typeof expandOn>[0]), tenants: o.tenants, sources: o.sources, maxPerHour: o.maxPerHour };
}

/** POST a JSON body; a non-2xx answer is a failed delivery. */
export async function postJson(url: string, body: unknown, timeoutMs: number): Promise<void> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(timeoutMs) });
  await res.arrayBuffer().catch(() => undefined);
  if (!res.ok) throw new Error(`HTTP ${res.status} from ${redactUrl(url)}`);
}

/** Webhook URLs carry secrets in their path (Slack, Teams): show only the origin. */
export function redactUrl(url: string): string {
  try {
    return new URL(url).origin + '/…';
  } catch {
    return '(bad url)';
  }
}
