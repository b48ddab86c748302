/**
 * One event model for agent, relay and vault: what happened, where, and how to say it to a
 * person. Channels (mail, Slack, Teams, webhooks) only format what is here.
 */
export const EVENT_KINDS = [
  'backup.failed',
  'backup.ok',
  'rpo.exceeded',
  'rpo.recovered',
  'line.down',
  'line.up',
  'quota.warning',
  'quota.exceeded',
  'auth.refused-burst',
  'maintenance.failed',
  'relay.refused',
  'snapshot.damaged',
  'test',
] as const;
export type EventKind = (typeof EVENT_KINDS)[number];

/** What a person must act on (and the all-clear that follows it): a channel's default `on`. */
export const MUST_ACT: readonly EventKind[] = EVENT_KINDS.filter((k) => k !== 'backup.ok' && k !== 'test');

/** `on` as written in the config: event kinds, or the words webhooks used before events had names. */
export type OnWord = EventKind | 'failure' | 'success';
export const ON_WORDS: readonly OnWord[] = [...EVENT_KINDS.filter((k) => k !== 'test'), 'failure', 'success'];

export function expandOn(words: readonly OnWord[]): Set<EventKind> {
  const out = new Set<EventKind>();
  for (const w of words) {
    if (w === 'failure') MUST_ACT.forEach((k) => out.add(k));
    else if (w === 'success') out.add('backup.ok');
    else out.add(w);
  }
  out.add('test');
  return out;
}

export type Severity = 'critical' | 'warning' | 'info';

export interface NotifyEvent {
  event: EventKind;
  severity: Severity;
  mode: 'agent' | 'relay' | 'vault';
  host: string;
  tenant?: string | undefined;
  source?: string | undefined;
  route?: string | undefined;
  /** one line: a mail's subject, a chat message's title */
  title: string;
  /** a few lines: what happened and what to do */
  text: string;
  /** events with the same key within notifications.dedupWindow are sent once per channel */
  key: string;
  time: string;
  /** the event's own facts (a job's snapshot and sizes, an exposure, a quota), for generic webhooks */
  data: Record<string, unknown>;
}

const SEVERITY: Record<EventKind, Severity> = {
  'backup.failed': 'critical',
  'backup.ok': 'info',
  'rpo.exceeded': 'critical',
  'rpo.recovered': 'info',
  'line.down': 'warning',
  'line.up': 'info',
  'quota.warning': 'warning',
  'quota.exceeded': 'critical',
  'auth.refused-burst': 'warning',
  'maintenance.failed': 'critical',
  'relay.refused': 'critical',
  'snapshot.damaged': 'critical',
  test: 'info',
};

export type EventInput = Omit<NotifyEvent, 'severity' | 'time' | 'host' | 'mode'> & { time?: string };

export function makeEvent(e: EventInput, where: { mode: NotifyEvent['mode']; host: string }, now = new Date()): NotifyEvent {
  return { ...e, severity: SEVERITY[e.event], mode: where.mode, host: where.host, time: e.time ?? now.toISOString() };
}

/** Does a channel with these filters want this event? Tenant and source filters match when the event names them. */
export function wants(filter: { on: ReadonlySet<EventKind>; tenants?: readonly string[] | undefined; sources?: readonly string[] | undefined }, e: NotifyEvent): boolean {
  if (!filter.on.has(e.event)) return false;
  if (e.event === 'test') return true;
  if (filter.tenants?.length && !(e.tenant && filter.tenants.includes(e.tenant))) return false;
  if (filter.sources?.length && !(e.source && filter.sources.includes(e.source))) return false;
  return true;
}
