import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { KuraError } from '../../errors.js';
import type { StoreBackend, StoreStat } from '../backend.js';

export interface S3Options {
  endpoint?: string | undefined;
  bucket: string;
  /** key prefix of this repository inside the bucket ("" or ending in "/") */
  prefix: string;
  region: string;
  forcePathStyle: boolean;
  /** JSON file {"accessKeyId", "secretAccessKey"[, "sessionToken"]}; the AWS environment variables when absent */
  credentialsFile?: string | undefined;
  /** per-request timeout */
  requestTimeoutMs?: number;
}

/** A failed request; `retryable` tells the retry wrapper whether trying again can help. */
export function s3Error(what: string, e: unknown): KuraError {
  if (e instanceof KuraError) return e;
  const status = e instanceof S3ServiceException ? e.$metadata.httpStatusCode : undefined;
  const name = (e as { name?: string }).name ?? 'Error';
  const code = (e as { code?: string }).code;
  const retryable =
    status === undefined || status >= 500 || status === 429 || name === 'SlowDown' || name === 'RequestTimeout' || name === 'TimeoutError' || name === 'AbortError' || code === 'ECONNRESET' || code === 'ECONNREFUSED' || code === 'EPIPE' || code === 'ETIMEDOUT';
  return new KuraError('E_IO', `${what}: ${name}${status ? ` (HTTP ${status})` : ''}${(e as Error).message && (e as Error).message !== name ? `: ${(e as Error).message}` : ''}`, { retryable, httpStatus: status ?? null }, { cause: e });
}

function statusOf(e: unknown): number | undefined {
  return (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

function credentialsOf(file: string | undefined) {
  if (!file) return undefined; // the SDK's chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles
  let parsed: { accessKeyId?: unknown; secretAccessKey?: unknown; sessionToken?: unknown };
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8')) as typeof parsed;
  } catch (e) {
    throw new KuraError('E_CONFIG', `cannot read S3 credentials file ${file}: ${(e as Error).message} (it holds {"accessKeyId": "...", "secretAccessKey": "..."})`);
  }
  if (typeof parsed.accessKeyId !== 'string' || typeof parsed.secretAccessKey !== 'string') {
    throw new KuraError('E_CONFIG', `S3 credentials file ${file} must hold {"accessKeyId": "...", "secretAccessKey": "..."}`);
  }
  return { accessKeyId: parsed.accessKeyId, secretAccessKey: parsed.secretAccessKey, ...(typeof parsed.sessionToken === 'string' ? { sessionToken: parsed.sessionToken } : {}) };
}

/** Ranges closer than this are fetched with one GET and cut apart here. */
const RANGE_GAP = 1 << 20;

/**
 * An S3 bucket (Ceph RGW, AWS, MinIO …) under a key prefix. Every create of an immutable object
 * (packs, snapshots) is one PutObject with `If-None-Match: *`: multipart completion ignores the
 * condition on Ceph 16 and would overwrite, so objects go up whole. No retries here: the SDK
 * tries once and `withRetry` decides.
 */
export class S3Backend implements StoreBackend {
  readonly location: string;
  readonly client: S3Client;

  constructor(readonly opts: S3Options) {
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true'; // Node 20: one stderr warning per process otherwise
    const credentials = credentialsOf(opts.credentialsFile);
    const agentOpts = { keepAlive: true, maxSockets: 64 };
    this.client = new S3Client({
      region: opts.region,
      forcePathStyle: opts.forcePathStyle,
      ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
      ...(credentials ? { credentials } : {}),
      maxAttempts: 1,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { requestTimeout: opts.requestTimeoutMs ?? 60_000, connectionTimeout: 10_000, httpAgent: new http.Agent(agentOpts), httpsAgent: new https.Agent(agentOpts) },
    });
    this.location = `s3://${opts.bucket}/${opts.prefix}${opts.endpoint ? ` at ${opts.endpoint}` : ''}`;
  }

  private key(name: string): string {
    return this.opts.prefix + name;
  }

  async get(name: string): Promise<Buffer | null> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.key(name) }));
      return Buffer.from(await res.Body!.transformToByteArray());
    } catch (e) {
      if (statusOf(e) === 404) return null;
      throw s3Error(`cannot read ${name} in ${this.location}`, e);
    }
  }

  /** bytes first..last inclusive (last null: to the end; first negative: a suffix of -first bytes) */
  private async fetchRange(name: string, range: string): Promise<Buffer | null> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.key(name), Range: range }));
      return Buffer.from(await res.Body!.transformToByteArray());
    } catch (e) {
      const st = statusOf(e);
      if (st === 404) return null;
      if (st === 416) return Buffer.alloc(0); // wholly past the end
      throw s3Error(`cannot read ${name} in ${this.location}`, e);
    }
  }

  async getRange(name: string, offset: number, length: number): Promise<Buffer | null> {
    return (await this.getRanges(name, [{ offset, length }]))?.[0] ?? null;
  }

  async getRanges(name: string, ranges: ReadonlyArray<{ offset: number; length: number }>): Promise<Buffer[] | null> {
    if (ranges.length === 0) return (await this.stat(name)) ? [] : null;
    let resolved = ranges.map((r) => ({ ...r }));
    if (ranges.some((r) => r.offset < 0)) {
      // one suffix range needs no size; anything else negative needs the object's size first
      if (ranges.length === 1 && ranges[0]!.offset + ranges[0]!.length >= 0 && ranges[0]!.length > 0) {
        const { offset, length } = ranges[0]!;
        const suffix = await this.fetchRange(name, `bytes=-${-offset}`);
        if (!suffix) return null;
        // the suffix may be shorter than asked (a small object): it starts at max(0, size + offset)
        return [suffix.subarray(0, Math.min(length, suffix.length))];
      }
      const st = await this.stat(name);
      if (!st) return null;
      resolved = ranges.map((r) => (r.offset < 0 ? { offset: Math.max(0, st.size + r.offset), length: r.length } : { ...r }));
    }
    // coalesce nearby ranges into spans: one GET per span
    const order = resolved.map((r, i) => ({ ...r, i })).sort((a, b) => a.offset - b.offset);
    const spans: Array<{ start: number; end: number; members: typeof order }> = [];
    for (const r of order) {
      const last = spans.at(-1);
      if (last && r.offset <= last.end + RANGE_GAP) {
        last.end = Math.max(last.end, r.offset + r.length);
        last.members.push(r);
      } else spans.push({ start: r.offset, end: r.offset + r.length, members: [r] });
    }
    const out: Buffer[] = new Array(ranges.length);
    let missing = false;
    await Promise.all(
      spans.map(async (s) => {
        if (s.end <= s.start) {
          for (const m of s.members) out[m.i] = Buffer.alloc(0);
          return;
        }
        const bytes = await this.fetchRange(name, `bytes=${s.start}-${s.end - 1}`);
        if (!bytes) {
          missing = true;
          return;
        }
        for (const m of s.members) out[m.i] = bytes.subarray(m.offset - s.start, Math.min(bytes.length, m.offset - s.start + m.length));
      }),
    );
    return missing ? null : out;
  }

  /** One conditional PutObject; false when the name exists (HTTP 412). */
  private async putConditional(name: string, body: Uint8Array): Promise<boolean> {
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.opts.bucket, Key: this.key(name), Body: body, ContentLength: body.length, IfNoneMatch: '*' }));
      return true;
    } catch (e) {
      if (statusOf(e) === 412) return false;
      throw s3Error(`cannot write ${name} in ${this.location}`, e);
    }
  }

  async putIfAbsent(name: string, data: Uint8Array): Promise<boolean> {
    return this.putConditional(name, data);
  }

  async put(name: string, data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    // content-addressed: an existing object of this name holds these very bytes
    await this.putConditional(name, data instanceof Uint8Array ? data : Buffer.concat(data));
  }

  async replace(name: string, data: Uint8Array): Promise<void> {
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.opts.bucket, Key: this.key(name), Body: data, ContentLength: data.length }));
    } catch (e) {
      throw s3Error(`cannot write ${name} in ${this.location}`, e);
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    let token: string | undefined;
    const full = this.key(prefix);
    do {
      let res;
      try {
        res = await this.client.send(new ListObjectsV2Command({ Bucket: this.opts.bucket, Prefix: full, ContinuationToken: token, MaxKeys: 1000 }));
      } catch (e) {
        throw s3Error(`cannot list ${prefix} in ${this.location}`, e);
      }
      for (const o of res.Contents ?? []) if (o.Key) yield o.Key.slice(this.opts.prefix.length);
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(name: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.opts.bucket, Key: this.key(name) }));
    } catch (e) {
      if (statusOf(e) === 404) return;
      throw s3Error(`cannot delete ${name} in ${this.location}`, e);
    }
  }

  async stat(name: string): Promise<StoreStat | null> {
    try {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: this.opts.bucket, Key: this.key(name) }));
      return { size: res.ContentLength ?? 0, mtimeMs: res.LastModified?.getTime() ?? 0 };
    } catch (e) {
      if (statusOf(e) === 404) return null;
      throw s3Error(`cannot stat ${name} in ${this.location}`, e);
    }
  }

  /** A successful PUT is durable on S3: nothing to flush. */
  async sync(): Promise<void> {}

  /** Create the bucket unless it exists (repo init, a vault's first start). */
  async ensureBucket(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.opts.bucket }));
      return;
    } catch (e) {
      if (statusOf(e) !== 404) throw s3Error(`cannot reach bucket ${this.opts.bucket} at ${this.opts.endpoint ?? 'AWS'}`, e);
    }
    try {
      await this.client.send(new CreateBucketCommand({ Bucket: this.opts.bucket }));
    } catch (e) {
      const name = (e as { name?: string }).name;
      if (name === 'BucketAlreadyOwnedByYou') return;
      throw s3Error(`cannot create bucket ${this.opts.bucket} at ${this.opts.endpoint ?? 'AWS'}`, e);
    }
  }

  close(): void {
    this.client.destroy();
  }
}
