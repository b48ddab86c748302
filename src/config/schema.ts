import { z } from 'zod';
import { COMPRESSION_LEVEL } from '../repository/compression-level.js';
import { DEFAULT_TENANT } from './path.js';
import { validate as validCron } from 'node-cron';
import { moduleListSchema, moduleSchema } from '../modules/index.js';
import { storageSchema } from '../store/index.js';
import { parseDuration } from './duration.js';
import { parseSize } from './size.js';
import { checkTimeZone } from '../retention/plan.js';
import { registeredChannels } from '../notify/channels/index.js';

/**
 * The one config file's schema. It is the reference: `kura config check` validates against it
 * and `kura config example` is generated from it (descriptions, defaults, examples).
 */
const name = (what: string) => z.string().regex(/^[a-z0-9][a-z0-9_.-]*$/i, `${what} names are letters, digits, ".", "-" and "_"`);

const cronExpr = z.string().superRefine((v, ctx) => {
  if (!validCron(v)) ctx.addIssue({ code: 'custom', message: `invalid cron expression ${JSON.stringify(v)}` });
});

const duration = z.string().superRefine((v, ctx) => {
  if (parseDuration(v) === null) ctx.addIssue({ code: 'custom', message: `invalid duration ${JSON.stringify(v)} (use e.g. "90s", "30m", "2h", "7d")` });
});

const compressionLevel = z.number().int().min(COMPRESSION_LEVEL.min).max(COMPRESSION_LEVEL.max).describe(`zstd level 1..${COMPRESSION_LEVEL.max}, 0 = store uncompressed`);

const size = z.union([z.number().int().min(0), z.string()]).superRefine((v, ctx) => {
  if (parseSize(v) === null) ctx.addIssue({ code: 'custom', message: `invalid size ${JSON.stringify(v)} (use e.g. "500GiB", "2TB" or a number of bytes)` });
});

const timeZone = z.string().superRefine((v, ctx) => {
  try {
    checkTimeZone(v);
  } catch {
    ctx.addIssue({ code: 'custom', message: `unknown time zone ${JSON.stringify(v)} (use an IANA name like "Asia/Tokyo")` });
  }
});

export const retentionSchema = z
  .strictObject({
    keepLast: z.number().int().min(0).optional().describe('keep the newest N snapshots'),
    keepHourly: z.number().int().min(0).optional().describe('keep the newest snapshot of each of the last N hours that have one'),
    keepDaily: z.number().int().min(0).optional().describe('keep the newest snapshot of each of the last N days that have one'),
    keepWeekly: z.number().int().min(0).optional().describe('... of each of the last N ISO weeks (Monday to Sunday)'),
    keepMonthly: z.number().int().min(0).optional().describe('... of each of the last N calendar months'),
    keepYearly: z.number().int().min(0).optional().describe('... of each of the last N calendar years'),
    keepWithin: duration.optional().describe('keep everything newer than this').meta({ examples: ['14d'] }),
    keepTags: z.array(z.string()).optional().describe('keep every snapshot carrying one of these tags').meta({ examples: [['year-end']] }),
  })
  .describe('generations to keep (restic vocabulary); protected snapshots are always kept, and no rule at all keeps everything');

const sourceCommon = {
  tenant: name('tenant').optional().describe('tenant (municipality) owning this data; default: the top-level tenant'),
  schedule: cronExpr.optional().describe('cron expression for `kura agent daemon`').meta({ examples: ['30 1 * * *'] }),
  routes: z.array(name('route')).default([]).describe('destinations (modules.routing) each snapshot is queued for'),
  retention: retentionSchema.optional().describe('on-site generations to keep'),
  compression: compressionLevel.optional(),
  delta: z.boolean().default(true).describe('store a changed chunk as a delta of the previous generation\'s chunks at its place when that is smaller; false stores changed chunks whole (restores read fewer chunks)'),
  timeout: duration.optional().describe('fail the job when the export runs longer').meta({ examples: ['2h'] }),
  rpo: duration.optional().describe('recovery point objective: how stale the off-site copy may get (default: the top-level rpo)').meta({ examples: ['1d'] }),
  tags: z.array(z.string()).default([]).describe('labels stored in each snapshot header'),
  chunkAvg: z
    .number()
    .int()
    .min(256)
    .max(1 << 26)
    .refine((n) => (n & (n - 1)) === 0, 'chunkAvg must be a power of two')
    .optional()
    .describe('average chunk size in bytes (min = avg/4, max = avg×4); default the repository\'s (256 KiB unless set at init). A database source first backed up when 4096 was the database default keeps the sizes of its last snapshot')
    .meta({ examples: [4096] }),
};

const postgresSource = z.strictObject({
  type: z.literal('postgres'),
  ...sourceCommon,
  uri: z.string().optional().describe('libpq connection URI without password (use passwordFile, PGPASSFILE or a service file)').meta({ examples: ['postgresql://backup@127.0.0.1:5432/juki'] }),
  database: z.string().optional().describe('database name, when not in the URI'),
  passwordFile: z.string().optional().describe('file holding the password; never put it in the URI'),
  format: z.enum(['plain', 'custom']).default('plain').describe('pg_dump format; output is always uncompressed so chunks deduplicate'),
  pgDump: z.string().default('pg_dump').describe('pg_dump executable'),
  order: z
    .enum(['heap', 'primary-key'])
    .default('heap')
    .describe('row order of a plain dump: heap (pg_dump as is) or primary-key (each table copied in key order from the same snapshot, so updated rows stay in place and a day changes fewer chunks; see bench/daily)'),
  psql: z.string().default('psql').describe('psql executable (order: primary-key)'),
});

const mariadbSource = z.strictObject({
  type: z.enum(['mariadb', 'mysql']),
  ...sourceCommon,
  host: z.string().default('127.0.0.1'),
  port: z.number().int().min(1).max(65535).default(3306),
  user: z.string().optional(),
  database: z.string().describe('database to export'),
  passwordFile: z.string().optional().describe('file holding the password'),
  dumpCommand: z.string().default('mariadb-dump').describe('mariadb-dump or mysqldump executable'),
});

const sqliteSource = z.strictObject({
  type: z.literal('sqlite'),
  ...sourceCommon,
  path: z.string().describe('database file, copied with the online backup API while writers run'),
});

const commandSource = z.strictObject({
  type: z.literal('command'),
  ...sourceCommon,
  command: z.string().describe('export command whose stdout is the backup').meta({ examples: ['/opt/vendor/bin/export'] }),
  args: z.array(z.string()).default([]),
  env: z.record(z.string(), z.string()).default({}),
  cwd: z.string().optional(),
});

const fileSource = z.strictObject({
  type: z.literal('file'),
  ...sourceCommon,
  paths: z.array(z.string()).min(1).describe('files or directories (walked in name order)'),
});

export const sourceSchema = z.discriminatedUnion('type', [postgresSource, mariadbSource, sqliteSource, commandSource, fileSource], {
  error: (iss) =>
    iss.code === 'invalid_union'
      ? `unknown source type ${JSON.stringify((iss.input as { type?: unknown })?.type)}; known: postgres, mariadb, mysql, sqlite, command, file`
      : undefined,
});

const sshKeyLine = z.string().regex(/^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$/, 'an OpenSSH public key line ("ssh-ed25519 AAAA... comment")');
const cidr = z.string().regex(/^[0-9a-fA-F:.]+\/\d{1,3}$/, 'a network like "10.1.0.0/16" or "::1/128"');

const vaultClient = z.strictObject({
  key: sshKeyLine.describe('public key of a relay or operator').meta({ examples: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7x6Qm2 relay@dc-a'] }),
  role: z.enum(['backup', 'restore', 'tenant-admin']).default('backup').describe('backup: send and list; restore: read; tenant-admin: both, and later prune/protect'),
  networks: z.array(cidr).min(1).default(['127.0.0.0/8', '::1/128']).describe('source networks this key may connect from'),
});

const claimMatch = {
  provider: z.string().optional().describe('only identities from this provider (a name of modules.sso); default: any trusted provider'),
  claim: z.string().min(1).describe('an OIDC claim (e.g. groups) or a SAML attribute name'),
  value: z.string().describe('the value the claim must equal or, for a list, contain'),
};

/** vault.sso: the operator endpoint where people sign in, and what their sign-ins allow (docs/sso.md). */
const vaultSsoSchema = z
  .strictObject({
    listen: z.strictObject({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(8443) }).prefault({}).describe('address of the operator endpoint (HTTPS; plain HTTP only on loopback)'),
    publicUrl: z.string().url().optional().describe('the URL browsers and the kura CLI reach the operator endpoint at (default: from listen)').meta({ examples: ['https://vault.example.org:8443'] }),
    tls: z.strictObject({ cert: z.string(), key: z.string() }).optional().describe('the endpoint\'s certificate and key (PEM files); required unless listen.host is a loopback address'),
    ticketKey: z.string().optional().describe('the key operator tickets are signed with (default: <root>/ticket_key, made on first start)'),
    ticketTtl: duration.default('8h').describe('how long an operator ticket is valid'),
    loginTimeout: duration.default('10m').describe('how long a started sign-in waits for the person to finish it in the browser'),
    required: z.boolean().default(false).describe('refuse restore and administration that come with an SSH key alone (no operator ticket); relays keep sending with keys'),
    levels: z.array(z.string()).default([]).describe('authentication levels (acr values / SAML AuthnContextClassRef), weakest first').meta({ examples: [['urn:kura:pwd', 'urn:kura:mfa']] }),
    sensitive: z
      .strictObject({
        acr: z.string().optional().describe('the level restore, delete, prune, unprotect and key operations need'),
        maxAge: duration.default('15m').describe('how recent the sign-in must be for those operations (else E_STEP_UP: kura login --step-up)'),
      })
      .prefault({}),
    systemAdmins: z.array(z.strictObject(claimMatch)).default([]).describe('claims that make a person system administrator of this vault (tenants, quotas, usage, maintenance; never a tenant\'s contents)'),
  })
  .optional()
  .describe('single sign-on for operators: the identity providers are modules.sso');

const vaultSchema = z.strictObject({
  listen: z.strictObject({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(2222) }).default({ host: '127.0.0.1', port: 2222 }).describe('SSH listen address'),
  root: z.string().describe('directory holding one repository per tenant (with storage type s3: their catalogues; the objects go to the bucket)').meta({ examples: ['/var/lib/kura/vault'] }),
  storage: storageSchema({}).optional().describe('where tenants\' objects are kept: fs (default: under root/tenants) or s3, each tenant under <prefix>tenants/<tenant>/'),
  hostKey: z.string().optional().describe('SSH host key file (PEM/OpenSSH); created on first start when missing (default: <root>/host_key)'),
  auditLog: z.string().optional().describe('append-only JSON-lines audit log (default: <root>/audit.jsonl)'),
  maxFrame: z.number().int().min(1 << 20).max(1 << 30).default(16 << 20).describe('largest protocol frame accepted, in bytes'),
  metrics: z.strictObject({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535) }).optional().describe('Prometheus /metrics endpoint of `kura vault serve`'),
  leaseTtl: duration.default('1h').describe('how long chunks a session was told are present stay protected from GC without a commit'),
  limits: z
    .strictObject({
      sessionBytes: size.default('64MiB').describe('PUT data one session may hold before it FLUSHes; beyond it the session is refused (E_BUSY: the client flushes more often and retries; keep it above the relays\' relay.batchBytes)'),
      totalBytes: size.default('96MiB').describe('bytes all sessions of this vault process together may hold in memory (frames received and not yet handled, PUT data not yet flushed, packs being written); near it the vault stops reading, beyond it the session holding the most beyond an equal share is refused (E_BUSY, retried later)'),
    })
    .prefault({})
    .describe('memory for sessions, so that no client and no tenant can take the vault\'s memory from the others (`kura vault serve`, and each `kura vault stdio` process on its own)'),
  tenants: z
    .record(
      name('tenant'),
      z.strictObject({
        clients: z.array(vaultClient).default([]),
        quota: size.optional().describe('stored bytes this tenant may hold; uploads beyond it are refused (E_QUOTA)').meta({ examples: ['500GiB'] }),
        retention: retentionSchema.optional().describe('generations the vault keeps of each of this tenant\'s sources (kura vault prune)'),
        sources: z.record(name('source'), z.strictObject({ retention: retentionSchema })).default({}).describe('per-source retention overriding the tenant\'s'),
        forward: z.array(name('route')).default([]).describe('routes of vault.routes this tenant\'s committed snapshots are passed on to (store-and-forward, oldest first, no tenant key); retention and gc keep what a route still has to send').meta({ examples: [['dc-b']] }),
        operators: z
          .array(z.strictObject({ ...claimMatch, role: z.enum(['restore', 'tenant-admin']) }))
          .default([])
          .describe('signed-in people and their role on this tenant, by claim (vault.sso)')
          .meta({ examples: [[{ claim: 'groups', value: 'city-a-admins', role: 'tenant-admin' }]] }),
        minLevel: z.string().optional().describe('the lowest sign-in level (of vault.sso.levels) accepted for this tenant'),
        movedTo: name('route').optional().describe('the tenant now lives behind this route of vault.routes: a HELLO of the tenant is answered with MOVED (that route\'s endpoints and pinned host keys, signed by this vault\'s host key); forward the tenant there first').meta({ examples: ['dc-b'] }),
      }),
    )
    .default({})
    .describe('tenants and the keys allowed to act on them')
    .meta({ exampleKey: 'city-a' }),
  sso: vaultSsoSchema,
  system: z
    .strictObject({
      clients: z
        .array(
          z.strictObject({
            key: sshKeyLine.describe('public key of a system administrator').meta({ examples: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7x6Qm2 ops@vault-a'] }),
            networks: z.array(cidr).min(1).default(['127.0.0.0/8', '::1/128']).describe('source networks this key may connect from'),
          }),
        )
        .default([]),
    })
    .prefault({})
    .describe('system sessions (SSH user "_system"): the vault itself (USAGE of every tenant), never a tenant\'s contents (docs/operators.md)'),
  routes: moduleSchema('routing', 'static').describe('store-and-forward: the routing module (same routes, same options as modules.routing) this vault passes tenants\' snapshots on by (vault.tenants.<t>.forward), with relay.* timings'),
  maxClockSkew: duration.default('2s').describe('a relay whose clock (measured at HELLO) is off by more than this is a warning in kura status --vault, a metric and a notification'),
  node: z
    .strictObject({
      id: name('node').describe('this node\'s name, unique among the vault nodes sharing vault.storage (written in the tenant leases it holds)').meta({ examples: ['vault-1'] }),
      leaseTtl: duration
        .default('30s')
        .superRefine((v, ctx) => {
          const ms = parseDuration(v);
          if (ms !== null && (ms < 2000 || ms > 600_000)) ctx.addIssue({ code: 'custom', message: `vault.node.leaseTtl must be between 2s and 10m, not ${v}` });
        })
        .describe('how long a tenant lease lasts without renewal (renewed every third of it); a dead node\'s tenants are taken over this long (plus a second, judged by the store\'s clock) after its last renewal; 2s to 10m'),
      audit: z
        .strictObject({
          every: duration.default('5s').describe('ordinary audit lines go up to the bucket at most this long after they were written (refusals and errors at once)'),
          lines: z.number().int().min(1).default(500).describe('… or as soon as this many wait'),
        })
        .default({ every: '5s', lines: 500 })
        .describe('this node\'s audit log is also kept in the bucket, under <prefix>nodes/audit/<id>/ (kura vault audit reads every node\'s); the file in vault.root stays the record written first'),
    })
    .optional()
    .describe('several `kura vault serve` processes (nodes) on one shared vault.storage (s3): each tenant is served by the one node holding its lease in the bucket; a node asked for a tenant held elsewhere refuses (E_TENANT_ELSEWHERE) and the relay tries the route\'s next endpoint. A route\'s endpoints must be nodes sharing one store'),
  maintenance: z
    .strictObject({
      schedule: cronExpr.describe('when `kura vault serve` runs prune and then gc for every tenant').meta({ examples: ['0 12 * * *'] }),
      gc: z.boolean().default(true).describe('run gc after prune'),
    })
    .optional()
    .describe('scheduled prune and gc inside `kura vault serve`'),
});

const relaySchema = z.strictObject({
  pollInterval: duration.default('30s').describe('how often `kura relay run` looks for new queue entries'),
  backoff: z.strictObject({ initial: duration.default('5s'), max: duration.default('10m') }).default({ initial: '5s', max: '10m' }).describe('retry delays after a failure double from initial up to max'),
  keepalive: duration.default('15s').describe('SSH keepalive interval: a ping probes a quiet line (its answer counts as progress, see deadAfter); pings never end a line themselves'),
  deadAfter: duration
    .refine((v) => (parseDuration(v) ?? 1000) >= 1000, 'deadAfter must be at least 1s (a line is judged on what arrives in that time)')
    .default('60s')
    .describe(
      'a line from which nothing arrives for this long is down: the connection is torn down, the route waits for the line (E_LINK_DOWN) and the retry resumes from what the vault holds. Anything from the far end is progress: replies, ping answers, and the vault\'s acknowledgements of data it took (every 256 KiB; a vault older than this relay: every relay.batchBytes). Keep it well above one acknowledgement\'s time at the slowest line: 60s suits lines down to about 16 KiB/s (about 100 KiB/s with an older vault)',
    )
    .meta({ examples: ['60s'] }),
  connectTimeout: duration.default('20s'),
  maxClockSkew: duration.default('2s').describe('a vault whose clock (measured at HELLO, corrected by half the round trip) is off by more than this is a warning in kura status, a metric and a notification (clock.skew)'),
  batchBytes: z.number().int().min(64 << 10).max(64 << 20).default(4 << 20).describe('chunk data sent between durability acknowledgements'),
  metrics: z.strictObject({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535) }).optional().describe('Prometheus /metrics endpoint of `kura relay run`'),
});

/**
 * notifications: the channels' lists (one key per registered channel: email, webhooks, slack,
 * teams) and the rules every process follows: the durable queue, retries, de-duplication and
 * the watchers' thresholds.
 */
function notificationsSchema() {
  const channels = Object.fromEntries(registeredChannels().map((d) => [d.key, z.array(d.options).default([]).describe(d.description)]));
  return z
    .strictObject({
      ...channels,
      spool: z.string().optional().describe('the durable notification queue (SQLite) (default: notifications.db in the local repository, or in vault.root)'),
      dedupWindow: duration.default('1h').describe('the same event (same source, route or tenant and cause) is sent once per destination within this window'),
      retry: z
        .strictObject({
          initial: duration.default('30s').describe('first retry of an undelivered notification; doubles up to max'),
          max: duration.default('30m'),
          giveUpAfter: duration.default('7d').describe('an event still undelivered this long after it happened is given up (logged as an error)'),
        })
        .prefault({})
        .describe('delivery retries: queued notifications survive restarts and are sent by any kura process of this host'),
      evaluateEvery: duration.default('1m').describe('how often `kura agent daemon`, `kura relay run` and `kura vault serve` evaluate RPO exposure and line state, so a source that silently stopped is noticed with no command run'),
      lineDownAfter: duration.default('15m').describe('a route that cannot reach its vault for this long sends "line down" (and "line back" when it returns)'),
      refusedLogins: z
        .strictObject({ count: z.number().int().min(1).default(10), within: duration.default('5m') })
        .prefault({})
        .describe('the vault reports a burst of refused logins: this many within this time'),
      quotaWarnPercent: z.number().int().min(1).max(99).default(90).describe('the vault warns when a tenant holds this share of its quota (and again when it is exceeded)'),
      flushTimeout: duration.default('20s').describe('how long a one-shot command (agent run, relay once) waits at its end for its notifications to go out; what is left stays queued'),
    })
    .prefault({})
    .describe('notifications by mail and chat: agent, relay and vault events through a durable queue; a delivery failure is retried, never fatal to a backup');
}

export const configSchema = z.strictObject({
  tenant: name('tenant').default(DEFAULT_TENANT).describe('default tenant of this host\'s sources'),
  host: z.string().optional().describe('host name recorded in snapshots (default: the system host name)'),
  timezone: timeZone.optional().describe('time zone of daily/weekly/monthly retention periods (default: the system\'s)').meta({ examples: ['Asia/Tokyo'] }),
  rpo: duration.default('1d').describe('default RPO target: `kura status` fails, `kura top` colours and notifications report a source whose newest snapshot on a destination (or on site, without routes) is older'),
  repository: storageSchema({
    path: z.string().describe('local (on-site) repository directory; with type s3 it holds the catalogue and caches, the objects go to the bucket').meta({ examples: ['/var/lib/kura/repo'] }),
    passphraseFile: z.string().optional().describe('file holding the repository passphrase (or set KURA_PASSPHRASE)'),
    keyFile: z.string().optional().describe('key file from `kura repo init --key-file` / `kura key export` (or set KURA_KEY_FILE)'),
    compression: compressionLevel.default(COMPRESSION_LEVEL.default).describe(`zstd level of new chunks of a repository \`kura repo init\` creates (1..${COMPRESSION_LEVEL.max}, 0 = uncompressed); --compression overrides it`),
  })
    .optional()
    .describe('the local repository every command uses unless --repo is given'),
  sources: z.record(name('source'), sourceSchema).default({}).describe('what to back up, by source name').meta({ exampleKey: 'juki' }),
  vault: vaultSchema.optional().describe('vault mode: the SSH endpoint keeping tenants\' repositories'),
  relay: relaySchema.prefault({}).describe('relay mode: shipping queued snapshots along modules.routing routes'),
  modules: z
    .strictObject({
      sso: moduleListSchema('sso', 'none'),
      routing: moduleSchema('routing', 'static'),
      virtualization: moduleSchema('virtualization', 'none'),
    })
    .default({ sso: { type: 'none' }, routing: { type: 'static', routes: {} }, virtualization: { type: 'none' } } as never)
    .describe('pluggable modules, each selected by `type`'),
  notifications: notificationsSchema(),
  agent: z
    .strictObject({
      shutdownGrace: duration.default('30s').describe('on SIGTERM, how long `kura agent daemon` waits for the running export to stop cleanly'),
    })
    .prefault({})
    .describe('agent mode: `kura agent run` and `kura agent daemon`'),
  logging: z
    .strictObject({
      level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('info'),
    })
    .default({ level: 'info' })
    .describe('pino JSON logs on stderr'),
});

export type KuraConfig = z.infer<typeof configSchema>;
export type SourceConfig = z.infer<typeof sourceSchema>;
export type VaultConfig = z.infer<typeof vaultSchema>;
export type RelayConfig = z.infer<typeof relaySchema>;
