import { z } from 'zod';
import { validate as validCron } from 'node-cron';
import { moduleSchema } from '../modules/index.js';
import { parseDuration } from './duration.js';

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

const compressionLevel = z.number().int().min(0).max(22).describe('zstd level 1..22, 0 = store uncompressed');

export const retentionSchema = z.strictObject({
  keepLast: z.number().int().min(0).optional().describe('keep the newest N snapshots'),
  keepDaily: z.number().int().min(0).optional().describe('keep the newest snapshot of each of the last N days'),
  keepWeekly: z.number().int().min(0).optional(),
  keepMonthly: z.number().int().min(0).optional(),
  keepYearly: z.number().int().min(0).optional(),
  keepWithin: duration.optional().describe('keep everything newer than this'),
});

const sourceCommon = {
  tenant: name('tenant').optional().describe('tenant (municipality) owning this data; default: the top-level tenant'),
  schedule: cronExpr.optional().describe('cron expression for `kura agent daemon`').meta({ examples: ['30 1 * * *'] }),
  routes: z.array(name('route')).default([]).describe('destinations (modules.routing) each snapshot is queued for'),
  retention: retentionSchema.optional().describe('on-site generations to keep'),
  compression: compressionLevel.optional(),
  timeout: duration.optional().describe('fail the job when the export runs longer').meta({ examples: ['2h'] }),
  tags: z.array(z.string()).default([]).describe('labels stored in each snapshot header'),
};

const postgresSource = z.strictObject({
  type: z.literal('postgres'),
  ...sourceCommon,
  uri: z.string().optional().describe('libpq connection URI without password (use passwordFile, PGPASSFILE or a service file)').meta({ examples: ['postgresql://backup@127.0.0.1:5432/juki'] }),
  database: z.string().optional().describe('database name, when not in the URI'),
  passwordFile: z.string().optional().describe('file holding the password; never put it in the URI'),
  format: z.enum(['plain', 'custom']).default('plain').describe('pg_dump format; output is always uncompressed so chunks deduplicate'),
  pgDump: z.string().default('pg_dump').describe('pg_dump executable'),
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

export const configSchema = z.strictObject({
  tenant: name('tenant').default('default').describe('default tenant of this host\'s sources'),
  host: z.string().optional().describe('host name recorded in snapshots (default: the system host name)'),
  repository: z
    .strictObject({
      path: z.string().describe('local (on-site) repository directory').meta({ examples: ['/var/lib/kura/repo'] }),
      passphraseFile: z.string().optional().describe('file holding the repository passphrase (or set KURA_PASSPHRASE)'),
      keyFile: z.string().optional().describe('key file from `kura repo init --key-file` / `kura key export` (or set KURA_KEY_FILE)'),
      compression: compressionLevel.default(3),
    })
    .optional()
    .describe('the local repository every command uses unless --repo is given'),
  sources: z.record(name('source'), sourceSchema).default({}).describe('what to back up, by source name').meta({ exampleKey: 'juki' }),
  modules: z
    .strictObject({
      sso: moduleSchema('sso', 'none'),
      routing: moduleSchema('routing', 'static'),
      virtualization: moduleSchema('virtualization', 'none'),
    })
    .default({ sso: { type: 'none' }, routing: { type: 'static', routes: {} }, virtualization: { type: 'none' } } as never)
    .describe('pluggable modules, each selected by `type`'),
  logging: z
    .strictObject({
      level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('info'),
    })
    .default({ level: 'info' })
    .describe('pino JSON logs on stderr'),
});

export type KuraConfig = z.infer<typeof configSchema>;
export type SourceConfig = z.infer<typeof sourceSchema>;
