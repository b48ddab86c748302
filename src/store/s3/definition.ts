import { z } from 'zod';
import { registerStorage, type StorageSpec, type StoreScope } from '../registry.js';
import { S3Backend, type S3Options } from './index.js';

const prefix = z
  .string()
  .regex(/^([A-Za-z0-9!_.*'()-]+\/)*$/, 'a key prefix like "kura/" or "" (path segments ending in "/")')
  .default('')
  .describe('key prefix inside the bucket (ends in "/"); a vault puts each tenant under <prefix>tenants/<tenant>/');

export const s3Options = z.strictObject({
  type: z.literal('s3'),
  endpoint: z.string().url().optional().describe('S3 endpoint URL (Ceph RGW, MinIO …); AWS when absent').meta({ examples: ['http://rgw.dc-a.example:7480'] }),
  bucket: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'an S3 bucket name (3-63 lowercase letters, digits, "." and "-")').describe('bucket; `kura repo init` and `kura vault serve` create it when absent').meta({ examples: ['kura-backups'] }),
  prefix,
  region: z.string().default('us-east-1').describe('region (Ceph RGW accepts any; us-east-1 by convention)'),
  forcePathStyle: z.boolean().default(true).describe('path-style URLs (http://host/bucket/key), as Ceph RGW and MinIO expect without wildcard DNS'),
  credentialsFile: z.string().optional().describe('JSON file {"accessKeyId": "...", "secretAccessKey": "..."[, "sessionToken": "..."]}; default: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) from the environment'),
});

function optionsOf(spec: StorageSpec, where: StoreScope): S3Options {
  const o = s3Options.parse(Object.fromEntries(Object.keys(s3Options.shape).filter((k) => k in spec).map((k) => [k, spec[k]])));
  return { endpoint: o.endpoint, bucket: o.bucket, prefix: o.prefix + where.scope, region: o.region, forcePathStyle: o.forcePathStyle, credentialsFile: o.credentialsFile };
}

registerStorage({
  type: 's3',
  description: 'an S3 bucket (Ceph RGW, MinIO, AWS); packs and snapshots go up as single conditional PUTs',
  options: s3Options,
  open: (spec, where): S3Backend => new S3Backend(optionsOf(spec, where)),
  prepare: async (spec, where) => {
    const b = new S3Backend(optionsOf(spec, where));
    try {
      await b.ensureBucket();
    } finally {
      b.close();
    }
  },
  probeConditionalCreate: true,
});
