import { z } from 'zod';
import { validate as validCron } from 'node-cron';
import { parseDuration } from '../../config/duration.js';
import { registerModule } from '../registry.js';

const endpoint = z.strictObject({
  host: z.string().min(1).describe('vault address (name or IP)').meta({ examples: ['vault.peer-dc.example'] }),
  port: z.number().int().min(1).max(65535).default(2222).describe('vault SSH port'),
  user: z.string().min(1).optional().describe('SSH user, when the vault runs behind OpenSSH (command= mode)'),
  hostKeySha256: z.string().optional().describe('pinned host key fingerprint, "SHA256:..." as ssh-keygen -lf prints it'),
  node: z.string().regex(/^[a-z0-9][a-z0-9_.-]*$/i, 'node names are letters, digits, ".", "-" and "_"').optional().describe('the vault.node.id of this endpoint, when the route\'s endpoints are vault nodes sharing one store: with every endpoint named, each tenant tries them in its placement order (its likely holder first)').meta({ examples: ['vault-1'] }),
});

const rate = z.string().regex(/^(unlimited|\d+(\.\d+)?\s*([kKmMgG]i?)?B\/s)$/, 'a rate like "2MB/s", "500KiB/s" or "unlimited"');

export const bandwidthWindow = z.strictObject({
  days: z.array(z.enum(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'])).default(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']).describe('days the window applies'),
  from: z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, 'a time like "08:00"').describe('start, local time of the relay').meta({ examples: ['08:00'] }),
  to: z.string().regex(/^([01]\d|2[0-4]):[0-5]\d$/, 'a time like "18:00"').describe('end (exclusive); may be earlier than from to span midnight').meta({ examples: ['18:00'] }),
  rate: rate.describe('bandwidth cap inside the window').meta({ examples: ['2MB/s'] }),
});

export const staticRoute = z.strictObject({
  endpoints: z.array(endpoint).min(1).describe('tried in order: the first that answers takes the transfer (failover)'),
  rate: rate.default('unlimited').describe('bandwidth cap outside every window'),
  bandwidth: z.array(bandwidthWindow).default([]).describe('time windows with their own cap; the first matching window wins'),
  clientKey: z.string().optional().describe('path of the private key this host presents to the vault'),
  tenant: z.string().optional().describe('tenant name on the vault (default: the source tenant)'),
  sources: z
    .array(z.string().regex(/^[a-z0-9][a-z0-9_.-]*$/i, 'source names are letters, digits, ".", "-" and "_"'))
    .optional()
    .describe('the sources this route carries (default: every source that names it); a source listed here is carried even when its own routes do not name the route: the office copy carries the minimum set')
    .meta({ examples: [['juki']] }),
  every: z
    .string()
    .refine((v) => (parseDuration(v) ?? 0) > 0, 'a duration like "30s" or "6h"')
    .optional()
    .describe('transfer frequency of this route: a transfer starts at most this often (default: relay.pollInterval); apart from the backup schedule')
    .meta({ examples: ['6h'] }),
  schedule: z.string().refine((v) => validCron(v), 'a cron expression like "0 */6 * * *"').optional().describe('cron expression: transfers start at these times only (instead of every)').meta({ examples: ['0 */6 * * *'] }),
});

export type StaticRoute = z.infer<typeof staticRoute>;

registerModule({
  kind: 'routing',
  type: 'static',
  create: (o) => ({ routes: (o as { routes: Record<string, StaticRoute> }).routes }),
  description: 'a fixed table of destination names to ordered vault endpoints',
  options: z.strictObject({
    type: z.literal('static'),
    routes: z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]*$/i, 'route names are letters, digits, "-" and "_"'), staticRoute)
      .default({})
      .describe('destination name → endpoints; sources say `routes: [peer-dc]`, never an address')
      .meta({ exampleKey: 'peer-dc' }),
  }),
});
