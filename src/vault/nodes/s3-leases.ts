import { KuraError } from '../../errors.js';
import { S3Backend, s3Error } from '../../store/s3/index.js';
import { S3Client, type S3Response } from '../../store/s3/client.js';
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
  private readonly prefix: string;
  readonly location: string;

  constructor(spec: StorageSpec) {
    const o = s3Options.parse(Object.fromEntries(Object.keys(s3Options.shape).filter((k) => k in spec).map((k) => [k, spec[k]])));
    this.prefix = `${o.prefix}nodes/`;
    this.backend = new S3Backend({ endpoint: o.endpoint, bucket: o.bucket, prefix: this.prefix, region: o.region, forcePathStyle: o.forcePathStyle, credentialsFile: o.credentialsFile, requestTimeoutMs: 10_000 });
    this.location = this.backend.location;
  }

  async read(name: string): Promise<StoredObject | null> {
    const what = `cannot read ${name} in ${this.location}`;
    const res = await this.backend.send(what, { method: 'GET', key: this.prefix + name });
    if (res.status === 404) return null;
    if (res.status !== 200) throw s3Error(what, S3Client.errorOf(res));
    const modified = Date.parse(String(res.headers['last-modified'] ?? ''));
    return { body: res.body, etag: unquote(String(res.headers.etag ?? '')), lastModifiedMs: Number.isNaN(modified) ? 0 : modified, storeNowMs: storeDate(res) };
  }

  /** Create (`etag` null: only if absent) or replace the version `etag`; the new ETag, or null when the condition failed. */
  async write(name: string, body: Uint8Array, etag: string | null): Promise<string | null> {
    const what = `cannot write ${name} in ${this.location}`;
    const condition: Record<string, string> = etag === null ? { 'if-none-match': '*' } : { 'if-match': unquote(etag) };
    const res = await this.backend.send(what, { method: 'PUT', key: this.prefix + name, body, headers: { 'content-type': 'application/json', ...condition } });
    // 409: a concurrent conditional write to the same key (some gateways); the loser re-reads
    if (res.status === 412 || res.status === 409) return null;
    if (res.status !== 200) throw s3Error(what, S3Client.errorOf(res));
    const tag = res.headers.etag;
    if (!tag) throw new KuraError('E_STORE_UNSAFE', `${this.location} answered a conditional PUT without an ETag; tenant leases need a store that gives one (Ceph RGW, AWS, MinIO)`);
    return unquote(String(tag));
  }

  async put(name: string, body: Uint8Array): Promise<void> {
    const what = `cannot write ${name} in ${this.location}`;
    const res = await this.backend.send(what, { method: 'PUT', key: this.prefix + name, body, headers: { 'content-type': 'application/x-ndjson' } });
    if (res.status !== 200) throw s3Error(what, S3Client.errorOf(res));
  }

  async list(sub: string): Promise<string[]> {
    const out: string[] = [];
    for await (const name of this.backend.list(sub)) out.push(name);
    return out.sort();
  }

  close(): void {
    this.backend.close();
  }
}

/** The store's clock: the Date of its answer (null when it sends none). */
function storeDate(res: S3Response): number | null {
  const date = Date.parse(String(res.headers.date ?? ''));
  return Number.isFinite(date) ? date : null;
}

/** Ceph RGW refuses If-Match with the ETag quoted as S3 returns it (../shared/docs/ceph-rgw.md). */
function unquote(etag: string): string {
  return etag.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}
