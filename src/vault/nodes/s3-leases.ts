import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { KuraError } from '../../errors.js';
import { S3Backend, s3Error } from '../../store/s3/index.js';
import { s3Options } from '../../store/s3/definition.js';
import type { StorageSpec } from '../../store/registry.js';
import type { LeaseStore, StoredObject } from './lease-store.js';

/**
 * Lease and node objects in the vault's bucket, under <prefix>nodes/: single PutObjects with
 * `If-None-Match: *` to create and `If-Match: <ETag>` to renew or take over (Ceph RGW honours
 * both on a single PUT, If-Match only with the ETag unquoted), and every response's Date header
 * kept: the store's own clock, which judges expiry (policy.ts).
 */
export class S3LeaseStore implements LeaseStore {
  private readonly backend: S3Backend;
  private readonly bucket: string;
  private readonly prefix: string;
  readonly location: string;

  constructor(spec: StorageSpec) {
    const o = s3Options.parse(Object.fromEntries(Object.keys(s3Options.shape).filter((k) => k in spec).map((k) => [k, spec[k]])));
    this.prefix = `${o.prefix}nodes/`;
    this.bucket = o.bucket;
    this.backend = new S3Backend({ endpoint: o.endpoint, bucket: o.bucket, prefix: this.prefix, region: o.region, forcePathStyle: o.forcePathStyle, credentialsFile: o.credentialsFile, requestTimeoutMs: 10_000 });
    this.location = this.backend.location;
    // the store's clock: the Date of each response, passed on in the output
    this.backend.client.middlewareStack.add(
      (next) => async (args) => {
        const out = await next(args);
        const date = (out.response as { headers?: Record<string, string> } | undefined)?.headers?.['date'];
        if (date) (out.output as { $storeDate?: number }).$storeDate = Date.parse(date);
        return out;
      },
      // the outermost step: by then the response is parsed into the output
      { step: 'initialize', name: 'kuraStoreDate' },
    );
  }

  async read(name: string): Promise<StoredObject | null> {
    try {
      const res = await this.backend.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + name }));
      const body = Buffer.from(await res.Body!.transformToByteArray());
      const storeNow = (res as { $storeDate?: number }).$storeDate;
      return { body, etag: unquote(res.ETag ?? ''), lastModifiedMs: res.LastModified?.getTime() ?? 0, storeNowMs: storeNow !== undefined && Number.isFinite(storeNow) ? storeNow : null };
    } catch (e) {
      if (statusOf(e) === 404) return null;
      throw s3Error(`cannot read ${name} in ${this.location}`, e);
    }
  }

  /** Create (`etag` null: only if absent) or replace the version `etag`; the new ETag, or null when the condition failed. */
  async write(name: string, body: Uint8Array, etag: string | null): Promise<string | null> {
    try {
      const res = await this.backend.client.send(
        new PutObjectCommand({ Bucket: this.bucket, Key: this.prefix + name, Body: body, ContentLength: body.length, ContentType: 'application/json', ...(etag === null ? { IfNoneMatch: '*' } : { IfMatch: unquote(etag) }) }),
      );
      if (!res.ETag) throw new KuraError('E_STORE_UNSAFE', `${this.location} answered a conditional PUT without an ETag; tenant leases need a store that gives one (Ceph RGW, AWS, MinIO)`);
      return unquote(res.ETag);
    } catch (e) {
      const st = statusOf(e);
      // 409: a concurrent conditional write to the same key (some gateways); the loser re-reads
      if (st === 412 || st === 409) return null;
      throw s3Error(`cannot write ${name} in ${this.location}`, e);
    }
  }

  async list(sub: string): Promise<string[]> {
    const out: string[] = [];
    let token: string | undefined;
    do {
      let res;
      try {
        res = await this.backend.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + sub, ContinuationToken: token }));
      } catch (e) {
        throw s3Error(`cannot list ${sub} in ${this.location}`, e);
      }
      for (const o of res.Contents ?? []) if (o.Key) out.push(o.Key.slice(this.prefix.length));
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
    return out.sort();
  }

  close(): void {
    this.backend.close();
  }
}

/** Ceph RGW refuses If-Match with the ETag quoted as S3 returns it (../shared/docs/ceph-rgw.md). */
function unquote(etag: string): string {
  return etag.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

function statusOf(e: unknown): number | undefined {
  return (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}
