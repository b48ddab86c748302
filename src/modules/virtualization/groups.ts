import { z } from 'zod';
import { parseDuration } from '../../config/duration.js';
import { registerModule } from '../registry.js';
import { parseWindow, type BackupGroup } from './plan.js';

const member = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*(\/[A-Za-z0-9][A-Za-z0-9_.-]*)?$/, 'a member is "host" or "host/source"');

const hhmm = (what: string) => z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$|^24:00$/, `${what}: a time like "07:30"`);
const powerWindow = z.strictObject({
  days: z.array(z.enum(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'])).default(['mon', 'tue', 'wed', 'thu', 'fri']).describe('days the VM is on'),
  from: hhmm('from').describe('powered on from (local time)').meta({ examples: ['07:00'] }),
  to: hhmm('to').describe('until (local time; earlier than from: past midnight)').meta({ examples: ['22:00'] }),
});
const minutes = (t: string) => Number(t.slice(0, 2)) * 60 + Number(t.slice(3, 5));

const groupSchema = z.strictObject({
  window: z
    .string()
    .refine((v) => parseWindow(v) !== null, 'a window like "01:00-05:00" (local time in the top-level timezone; "23:00-03:00" crosses midnight)')
    .describe('when the group\'s backups run, local time (top-level timezone)')
    .meta({ examples: ['01:00-05:00'] }),
  maxConcurrent: z.number().int().min(1).max(1000).default(1).describe('at most this many members export at once'),
  expectedDuration: z
    .string()
    .refine((v) => parseDuration(v) !== null, 'a duration like "30m"')
    .default('30m')
    .describe('how long a member\'s backup takes, until its own job history says'),
  spread: z.enum(['even', 'packed']).default('even').describe('even: the spare time of the window is spread between the jobs; packed: back to back from the window\'s start'),
  members: z.array(member).min(1).describe('hosts ("juki-db1": all its sources) or host/source pairs that share the hypervisor, datastore or backup device').meta({ examples: [['juki-db1/juki', 'zei-db1']] }),
  coordinator: z.string().optional().describe('route (modules.routing) of the on-site vault or backup server that leases the slots: the cap across hosts; unreachable, an agent starts at its planned time anyway and records that it ran uncoordinated'),
  slotTtl: z
    .string()
    .refine((v) => parseDuration(v) !== null, 'a duration like "10m"')
    .default('10m')
    .describe('a slot lease lives this long unless renewed (every third of it while the export runs): an agent that dies frees its slot after it'),
  power: z
    .record(z.string(), z.array(powerWindow).min(1))
    .default({})
    .describe('members (host or host/source) whose VM is powered on only at some hours: their weekly calendar; a backup whose slot falls while the VM is off moves to its next powered-on time')
    .meta({ exampleKey: 'juki-db1' }),
});

registerModule({
  kind: 'virtualization',
  type: 'groups',
  description: 'members sharing a hypervisor, datastore or backup device start at staggered offsets within a window, at most maxConcurrent at once',
  options: z.strictObject({
    type: z.literal('groups'),
    groups: z.record(z.string().regex(/^[a-z0-9][a-z0-9_.-]*$/i, 'group names are letters, digits, ".", "-" and "_"'), groupSchema).describe('group name → its window, cap and members').meta({ exampleKey: 'hv-a' }),
    holidays: z.array(z.string().regex(/^\d{4}-\d{2}-\d{2}$/, 'a date like "2026-12-31"')).default([]).describe('days on which VMs with a power calendar stay off (their backups move to the next powered-on day)'),
  }),
  create: (o) => {
    const { groups, holidays } = o as { groups: Record<string, z.infer<typeof groupSchema>>; holidays: string[] };
    return {
      groups: Object.entries(groups).map(
        ([name, g]): BackupGroup => ({
          name,
          window: parseWindow(g.window)!,
          maxConcurrent: g.maxConcurrent,
          expectedSeconds: parseDuration(g.expectedDuration)! / 1000,
          spread: g.spread,
          members: g.members,
          coordinator: g.coordinator,
          slotTtlSeconds: parseDuration(g.slotTtl)! / 1000,
          power: new Map(Object.entries(g.power).map(([m, ws]) => [m, ws.map((w) => ({ days: w.days, from: minutes(w.from), to: minutes(w.to) }))])),
          holidays,
        }),
      ),
    };
  },
});
