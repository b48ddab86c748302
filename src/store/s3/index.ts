import { readFileSync } from 'node:fs';
import { KuraError } from '../../errors.js';
import type { PutHints, StoreBackend, StoreStat } from '../backend.js';
import { spansOf } from '../spans.js';
import { S3Client, S3RequestError, xmlAll, xmlFirst, type S3Credentials, type S3Request, type S3Response } from './client.js';

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

const RETRYABLE_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED']);

/** A failed request; `retryable` tells the retry wrapper whether trying again can help. */
export function s3Error(what: string, e: unknown): KuraError {
  if (e instanceof KuraError) return e;
  const status = e instanceof S3RequestError ? e.status : undefined;
  const name = (e as { name?: string }).name ?? 'Error';
  const code = (e as { code?: string }).code;
  const retryable = status === undefined ? code === undefined || RETRYABLE_CODES.has(code) || name === 'TimeoutError' : status >= 500 || status === 429 || name === 'SlowDown' || name === 'RequestTimeout';
  const message = (e as Error).message;
  return new KuraError('E_IO', `${what}: ${name}${status ? ` (HTTP ${status})` : ''}${message && message !== name ? `: ${message}` : ''}`, { retryable, httpStatus: status ?? null }, { cause: e });
}

function credentialsOf(file: string | undefined): S3Credentials | KuraError {
  if (!file) {
    const env = process.env;
    if (!env.AWS_ACCESS_KEY_ID || !env.AWS_SECRET_ACCESS_KEY) {
      return new KuraError('E_CONFIG', 'no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or name a credentialsFile in the storage options');
    }
    return { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY, sessionToken: env.AWS_SESSION_TOKEN || undefined };
  }
  let parsed: { accessKeyId?: unknown; secretAccessKey?: unknown; sessionToken?: unknown };
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8')) as typeof parsed;
  } catch (e) {
    throw new KuraError('E_CONFIG', `cannot read S3 credentials file ${file}: ${(e as Error).message} (it holds {"accessKeyId": "...", "secretAccessKey": "..."})`);
  }
  if (typeof parsed.accessKeyId !== 'string' || typeof parsed.secretAccessKey !== 'string') {
    throw new KuraError('E_CONFIG', `S3 credentials file ${file} must hold {"accessKeyId": "...", "secretAccessKey": "..."}`);
  }
  return { accessKeyId: parsed.accessKeyId, secretAccessKey: parsed.secretAccessKey, sessionToken: typeof parsed.sessionToken === 'string' ? parsed.sessionToken : undefined };
}

/** Ranges closer than this are fetched with one GET and cut apart here. */
const RANGE_GAP = 1 << 20;

/**
 * An S3 bucket (Ceph RGW, AWS, MinIO …) under a key prefix. Every create of an immutable object
 * (packs, snapshots) is one PutObject with `If-None-Match: *`: multipart completion ignores the
 * condition on Ceph 16 and would overwrite, so objects go up whole. No retries here: `withRetry`
 * decides.
 */
export class S3Backend implements StoreBackend {
  readonly location: string;
  private readonly client: S3Client | null;
  /** why there is no client (no credentials): thrown by the first request, not by opening */
  private readonly unusable: KuraError | null = null;

  constructor(readonly opts: S3Options) {
    const credentials = credentialsOf(opts.credentialsFile);
    if (credentials instanceof KuraError) {
      this.unusable = credentials;
      this.client = null;
    } else {
      this.client = new S3Client({ endpoint: opts.endpoint, region: opts.region, forcePathStyle: opts.forcePathStyle, credentials, requestTimeoutMs: opts.requestTimeoutMs ?? 60_000, connectionTimeoutMs: 10_000 });
    }
    this.location = `s3://${opts.bucket}/${opts.prefix}${opts.endpoint ? ` at ${opts.endpoint}` : ''}`;
  }

  private key(name: string): string {
    return this.opts.prefix + name;
  }

  /**
   * One request in this bucket (`key` as given: with the prefix, or none for a bucket request);
   * an answer of any status. Used here and by the vault nodes' lease objects (conditional PUTs,
   * the store's Date and Last-Modified).
   */
  async send(what: string, r: Omit<S3Request, 'bucket'>): Promise<S3Response> {
    if (!this.client) throw this.unusable!;
    try {
      return await this.client.send({ ...r, bucket: this.opts.bucket });
    } catch (e) {
      throw s3Error(what, e);
    }
  }

  private failed(what: string, res: S3Response): KuraError {
    return s3Error(what, S3Client.errorOf(res));
  }

  async get(name: string): Promise<Buffer | null> {
    const what = `cannot read ${name} in ${this.location}`;
    const res = await this.send(what, { method: 'GET', key: this.key(name) });
    if (res.status === 404) return null;
    if (res.status !== 200) throw this.failed(what, res);
    return res.body;
  }

  /** bytes first..last inclusive (last null: to the end; first negative: a suffix of -first bytes) */
  private async fetchRange(name: string, range: string, onData?: (piece: Buffer, at: number) => void): Promise<Buffer | null> {
    const what = `cannot read ${name} in ${this.location}`;
    const res = await this.send(what, { method: 'GET', key: this.key(name), headers: { range }, onData });
    if (res.status === 404) return null;
    if (res.status === 416) return Buffer.alloc(0); // wholly past the end
    if (res.status !== 206 && res.status !== 200) throw this.failed(what, res);
    return res.body;
  }

  async getRange(name: string, offset: number, length: number): Promise<Buffer | null> {
    return (await this.getRanges(name, [{ offset, length }]))?.[0] ?? null;
  }

  async getRanges(name: string, ranges: ReadonlyArray<{ offset: number; length: number }>, into?: Buffer): Promise<Buffer[] | null> {
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
    const spans = spansOf(resolved, RANGE_GAP);
    const out: Buffer[] = new Array(ranges.length);
    // with `into`, the ranges' bytes are copied there back to back as they arrive (the gaps
    // between them dropped), and no buffer is allocated for an answer
    const place = new Float64Array(ranges.length);
    if (into) for (let i = 1; i < ranges.length; i++) place[i] = place[i - 1]! + ranges[i - 1]!.length;
    const fits = into !== undefined && place[ranges.length - 1]! + ranges.at(-1)!.length <= into.length;
    let missing = false;
    // every span settled before the answer: a caller that reuses `into` once this returns (or
    // throws) must find no request still writing into it
    const settled = await Promise.allSettled(
      spans.map(async (s) => {
        if (s.end <= s.start) {
          for (const m of s.members) out[m.i] = Buffer.alloc(0);
          return;
        }
        let got = 0;
        const sink = fits
          ? (piece: Buffer, at: number) => {
              got = at + piece.length;
              for (const m of s.members) {
                const from = Math.max(m.offset - s.start, at);
                const to = Math.min(m.offset - s.start + m.length, got);
                if (from < to) piece.copy(into!, place[m.i]! + from - (m.offset - s.start), from - at, to - at);
              }
            }
          : undefined;
        const bytes = await this.fetchRange(name, `bytes=${s.start}-${s.end - 1}`, sink);
        if (!bytes) {
          missing = true;
          return;
        }
        if (!sink) got = bytes.length;
        for (const m of s.members) {
          const length = Math.max(0, Math.min(m.length, got - (m.offset - s.start)));
          out[m.i] = sink ? into!.subarray(place[m.i]!, place[m.i]! + length) : bytes.subarray(m.offset - s.start, m.offset - s.start + length);
        }
      }),
    );
    const failed = settled.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
    return missing ? null : out;
  }

  /** One conditional PutObject; false when the name exists (HTTP 412). */
  private async putConditional(name: string, body: Uint8Array, sha256?: string): Promise<boolean> {
    const what = `cannot write ${name} in ${this.location}`;
    const res = await this.send(what, { method: 'PUT', key: this.key(name), body, bodySha256: sha256, headers: { 'if-none-match': '*' } });
    if (res.status === 412) return false;
    if (res.status !== 200) throw this.failed(what, res);
    return true;
  }

  async putIfAbsent(name: string, data: Uint8Array): Promise<boolean> {
    return this.putConditional(name, data);
  }

  async put(name: string, data: Uint8Array | readonly Uint8Array[], hints?: PutHints): Promise<void> {
    // content-addressed: an existing object of this name holds these very bytes
    await this.putConditional(name, data instanceof Uint8Array ? data : data.length === 1 ? data[0]! : Buffer.concat(data), hints?.sha256);
  }

  async replace(name: string, data: Uint8Array): Promise<void> {
    const what = `cannot write ${name} in ${this.location}`;
    const res = await this.send(what, { method: 'PUT', key: this.key(name), body: data });
    if (res.status !== 200) throw this.failed(what, res);
  }

  /** Objects under a prefix with their sizes, a page (up to 1000) per request. */
  async *listWithSizes(prefix: string): AsyncIterable<{ name: string; size: number }> {
    let token: string | undefined;
    const full = this.key(prefix);
    const what = `cannot list ${prefix} in ${this.location}`;
    do {
      const query: Record<string, string> = { 'list-type': '2', prefix: full, 'max-keys': '1000' };
      if (token) query['continuation-token'] = token;
      const res = await this.send(what, { method: 'GET', query });
      if (res.status !== 200) throw this.failed(what, res);
      const xml = res.body.toString('utf8');
      for (const c of xmlAll(xml, 'Contents')) {
        const key = xmlFirst(c, 'Key');
        if (key !== undefined) yield { name: key.slice(this.opts.prefix.length), size: Number(xmlFirst(c, 'Size') ?? 0) };
      }
      token = xmlFirst(xml, 'IsTruncated') === 'true' ? xmlFirst(xml, 'NextContinuationToken') : undefined;
    } while (token);
  }

  async *list(prefix: string): AsyncIterable<string> {
    for await (const o of this.listWithSizes(prefix)) yield o.name;
  }

  async delete(name: string): Promise<void> {
    const what = `cannot delete ${name} in ${this.location}`;
    const res = await this.send(what, { method: 'DELETE', key: this.key(name) });
    if (res.status !== 204 && res.status !== 200 && res.status !== 404) throw this.failed(what, res);
  }

  async stat(name: string): Promise<StoreStat | null> {
    const what = `cannot stat ${name} in ${this.location}`;
    const res = await this.send(what, { method: 'HEAD', key: this.key(name) });
    if (res.status === 404) return null;
    if (res.status !== 200) throw this.failed(what, res);
    const modified = Date.parse(String(res.headers['last-modified'] ?? ''));
    return { size: Number(res.headers['content-length'] ?? 0), mtimeMs: Number.isNaN(modified) ? 0 : modified };
  }

  /** A successful PUT is durable on S3: nothing to flush. */
  async sync(): Promise<void> {}

  /** Create the bucket unless it exists (repo init, a vault's first start). */
  async ensureBucket(): Promise<void> {
    const where = `bucket ${this.opts.bucket} at ${this.opts.endpoint ?? 'AWS'}`;
    const head = await this.send(`cannot reach ${where}`, { method: 'HEAD' });
    if (head.status === 200) return;
    if (head.status !== 404) throw this.failed(`cannot reach ${where}`, head);
    const res = await this.send(`cannot create ${where}`, { method: 'PUT' });
    if (res.status === 200) return;
    const e = S3Client.errorOf(res);
    if (e.name === 'BucketAlreadyOwnedByYou') return;
    throw s3Error(`cannot create ${where}`, e);
  }

  close(): void {
    this.client?.destroy();
  }
}
