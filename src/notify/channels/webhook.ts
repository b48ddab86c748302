import { z } from 'zod';
import { parseDuration } from '../../config/duration.js';
import type { NotifyEvent } from '../events.js';
import { commonChannelOptions, postJson, redactUrl, registerChannel } from './registry.js';

/** The generic JSON body: the event's fields, its own facts at the top level (as job events always were). */
export function genericBody(e: NotifyEvent): Record<string, unknown> {
  return { event: e.event, severity: e.severity, mode: e.mode, host: e.host, tenant: e.tenant, source: e.source, route: e.route, title: e.title, text: e.text, time: e.time, ...e.data };
}

/** Slack incoming webhook: one message, the title on its first line. */
export function slackBody(e: NotifyEvent): { text: string } {
  return { text: `${e.title}\n${e.text}` };
}

/** Microsoft Teams incoming webhook (connector MessageCard). */
export function teamsBody(e: NotifyEvent): Record<string, unknown> {
  const color = e.severity === 'critical' ? 'D00000' : e.severity === 'warning' ? 'E8A317' : '2EB886';
  return { '@type': 'MessageCard', '@context': 'https://schema.org/extensions', summary: e.title, themeColor: color, title: e.title, text: e.text.replace(/\n/g, '<br>') };
}

const bodies = { generic: genericBody, slack: slackBody, teams: teamsBody } as const;

const url = z.url().describe('the endpoint that receives a POST per event').meta({ examples: ['https://hooks.example.jp/services/T000/B000/XXXX'] });

registerChannel({
  key: 'webhooks',
  description: 'HTTP POST of each event: generic JSON, or Slack / Teams message bodies',
  options: z.strictObject({
    url,
    format: z.enum(['generic', 'slack', 'teams']).default('generic').describe('generic: the event as JSON; slack: {text}; teams: a MessageCard'),
    ...commonChannelOptions,
  }),
  create: (o, label) => ({
    label: `${label} (${redactUrl(o.url)})`,
    send: (e) => postJson(o.url, bodies[o.format](e), parseDuration(o.timeout)!),
  }),
});

for (const [key, format, what] of [
  ['slack', 'slack', 'Slack incoming webhooks'],
  ['teams', 'teams', 'Microsoft Teams incoming webhooks'],
] as const) {
  registerChannel({
    key,
    description: what,
    options: z.strictObject({ url, ...commonChannelOptions }),
    create: (o, label) => ({
      label: `${label} (${redactUrl(o.url)})`,
      send: (e) => postJson(o.url, bodies[format](e), parseDuration(o.timeout)!),
    }),
  });
}
