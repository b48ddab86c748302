import { createHash, createHmac } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { bytesRead } from './scavenge.js';

/**
 * The few S3 requests kura makes, signed with AWS Signature Version 4, on node:http. Chosen over
 * @aws-sdk/client-s3 by measurement (bench/s3): the SDK took 0.4-1 s of the main thread to load
 * in every kura process, and its per-request middleware (a copy of each request, signing that
 * hashes the payload on the main thread, `Expect: 100-continue` waiting a round trip before each
 * pack's body) cost the first backup to RGW more than a tenth of its throughput. This client
 * takes the payload's SHA-256 from the caller when it has one (a seal worker hashes each pack
 * beside compressing it), so a pack's body is neither copied nor hashed here.
 *
 * No retries here (the store's retry wrapper decides), no multipart (kura's immutable objects
 * go up as single conditional PUTs: Ceph 16 ignores If-None-Match on multipart completion).
 */
export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string | undefined;
}

export interface S3ClientOptions {
  /** http(s)://host[:port][/base]; AWS's regional endpoint when absent */
  endpoint?: string | undefined;
  region: string;
  /** http://host/bucket/key rather than http://bucket.host/key */
  forcePathStyle: boolean;
  credentials: S3Credentials;
  /** a request whose socket stays silent this long fails (TimeoutError) */
  requestTimeoutMs: number;
  /** a connection not made within this fails (TimeoutError) */
  connectionTimeoutMs: number;
}

export interface S3Request {
  method: 'GET' | 'PUT' | 'HEAD' | 'DELETE';
  bucket: string;
  /** object key, unencoded; absent for a bucket request */
  key?: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Uint8Array;
  /** hex SHA-256 of body, when the caller has it (else computed here) */
  bodySha256?: string | undefined;
  /**
   * Where a successful (2xx) answer's body goes, piece by piece as it arrives (`at`: the piece's
   * offset in the body), instead of into S3Response.body (then empty): a reader that keeps only
   * parts of the bytes, in a buffer of its own, allocates nothing per answer.
   */
  onData?: ((piece: Buffer, at: number) => void) | undefined;
}

export interface S3Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/**
 * A request that failed: `status` the HTTP status (undefined: no answer), `name` the S3 error
 * code from the answer's XML (NoSuchKey, SlowDown, PreconditionFailed …) or the transport's
 * (TimeoutError), `code` the system error (ECONNREFUSED …).
 */
export class S3RequestError extends Error {
  constructor(
    message: string,
    override readonly name: string,
    readonly status: number | undefined,
    readonly code?: string,
  ) {
    super(message);
  }
}

const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** RFC 3986 percent-encoding as SigV4 wants it: everything but A-Z a-z 0-9 - _ . ~ (and "/" in paths). */
export function encodeRfc3986(s: string, keepSlash: boolean): string {
  const e = encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return keepSlash ? e.replace(/%2F/g, '/') : e;
}

const XML_ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

/** Text of an XML element's content, entities decoded. */
export function xmlText(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (m, e: string) =>
    e.startsWith('#x') ? String.fromCodePoint(parseInt(e.slice(2), 16)) : e.startsWith('#') ? String.fromCodePoint(parseInt(e.slice(1), 10)) : (XML_ENTITIES[e] ?? m),
  );
}

/** The contents of each `<tag>…</tag>` in `xml` (flat: no nesting of the same tag). */
export function xmlAll(xml: string, tag: string): string[] {
  const out: string[] = [];
  const open = `<${tag}>`;
  const close = `</${tag}>`;
  for (let at = xml.indexOf(open); at >= 0; at = xml.indexOf(open, at)) {
    const end = xml.indexOf(close, at + open.length);
    if (end < 0) break;
    out.push(xml.slice(at + open.length, end));
    at = end + close.length;
  }
  return out;
}

export function xmlFirst(xml: string, tag: string): string | undefined {
  const v = xmlAll(xml, tag)[0];
  return v === undefined ? undefined : xmlText(v);
}

/** The SigV4 key of a day (yyyymmdd), region and service s3. */
export function signingKey(secretAccessKey: string, day: string, region: string): Buffer {
  const hmac = (k: Buffer | string, v: string) => createHmac('sha256', k).update(v).digest();
  return hmac(hmac(hmac(hmac(`AWS4${secretAccessKey}`, day), region), 's3'), 'aws4_request');
}

export interface SigV4Request {
  method: string;
  /** the path as sent, each segment percent-encoded */
  canonicalUri: string;
  /** the query as sent, in canonical form (sorted, encoded) */
  query: string;
  /** lower-case names, `host` among them; every one is signed, and the signature headers are added here */
  headers: Record<string, string>;
  payloadHash: string;
  /** yyyymmddThhmmssZ */
  amzDate: string;
  region: string;
  credentials: S3Credentials;
}

/**
 * Sign a request with AWS Signature Version 4 (service s3), adding x-amz-date,
 * x-amz-content-sha256, x-amz-security-token (with a session token) and authorization to its
 * headers. Every header is signed: a proxy that drops one (If-None-Match) breaks the signature
 * rather than the request's meaning.
 */
export function signV4(r: SigV4Request, keyOf: (day: string) => Buffer = (day) => signingKey(r.credentials.secretAccessKey, day, r.region)): void {
  const headers = r.headers;
  headers['x-amz-date'] = r.amzDate;
  headers['x-amz-content-sha256'] = r.payloadHash;
  if (r.credentials.sessionToken) headers['x-amz-security-token'] = r.credentials.sessionToken;
  const day = r.amzDate.slice(0, 8);
  const names = Object.keys(headers).sort();
  const signed = names.join(';');
  const canonical = `${r.method}\n${r.canonicalUri}\n${r.query}\n${names.map((n) => `${n}:${headers[n]!.trim().replace(/\s+/g, ' ')}\n`).join('')}\n${signed}\n${r.payloadHash}`;
  const scope = `${day}/${r.region}/s3/aws4_request`;
  const toSign = `AWS4-HMAC-SHA256\n${r.amzDate}\n${scope}\n${createHash('sha256').update(canonical).digest('hex')}`;
  const signature = createHmac('sha256', keyOf(day)).update(toSign).digest('hex');
  headers.authorization = `AWS4-HMAC-SHA256 Credential=${r.credentials.accessKeyId}/${scope}, SignedHeaders=${signed}, Signature=${signature}`;
}

/** A query in SigV4's canonical form, as sent. */
export function canonicalQuery(query: Record<string, string>): string {
  return Object.entries(query)
    .map(([k, v]) => [encodeRfc3986(k, false), encodeRfc3986(v, false)] as const)
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
}

export class S3Client {
  private readonly url: URL;
  private readonly agent: http.Agent;
  private readonly transport: typeof http | typeof https;
  private signingKey: { day: string; key: Buffer } | null = null;

  constructor(private readonly opts: S3ClientOptions) {
    this.url = new URL(opts.endpoint ?? `https://s3.${opts.region}.amazonaws.com`);
    const secure = this.url.protocol === 'https:';
    this.transport = secure ? https : http;
    // keep-alive: a backup's packs reuse a few connections; bytes in flight are bounded by the caller
    const agentOpts = { keepAlive: true, maxSockets: 64, maxFreeSockets: 16 };
    this.agent = secure ? new https.Agent(agentOpts) : new http.Agent(agentOpts);
  }

  private key(day: string): Buffer {
    if (this.signingKey?.day !== day) this.signingKey = { day, key: signingKey(this.opts.credentials.secretAccessKey, day, this.opts.region) };
    return this.signingKey.key;
  }

  /** One request, signed; resolves with any HTTP answer (the caller judges the status), rejects when none came. */
  async send(r: S3Request): Promise<S3Response> {
    const base = this.url.pathname.replace(/\/+$/, '');
    const keyPath = r.key === undefined ? '' : `/${encodeRfc3986(r.key, true)}`;
    const pathStyle = this.opts.forcePathStyle;
    const host = pathStyle ? this.url.host : `${r.bucket}.${this.url.host}`;
    const canonicalUri = `${base}${pathStyle ? `/${r.bucket}` : ''}${keyPath || '/'}`;
    const query = canonicalQuery(r.query ?? {});
    const body = r.body;
    const payload = body === undefined || body.length === 0 ? EMPTY_SHA256 : (r.bodySha256 ?? createHash('sha256').update(body).digest('hex'));
    const headers: Record<string, string> = { host };
    for (const [k, v] of Object.entries(r.headers ?? {})) headers[k.toLowerCase()] = v;
    if (body !== undefined || r.method === 'PUT') headers['content-length'] = String(body?.length ?? 0);
    const amzDate = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
    signV4({ method: r.method, canonicalUri, query, headers, payloadHash: payload, amzDate, region: this.opts.region, credentials: this.opts.credentials }, (day) => this.key(day));

    return new Promise<S3Response>((resolve, reject) => {
      let settled = false;
      // the answer is handed on only once the body is off too (or its socket gone): a caller may
      // reuse the body's buffer as soon as the promise settles, even if the server answered early
      let sent = false;
      let answer: S3Response | null = null;
      const done = () => {
        if (settled || !sent || !answer) return;
        settled = true;
        resolve(answer);
      };
      const fail = (e: S3RequestError) => {
        if (settled) return;
        settled = true;
        reject(e);
      };
      const req = this.transport.request(
        { protocol: this.url.protocol, hostname: pathStyle ? this.url.hostname : `${r.bucket}.${this.url.hostname}`, port: this.url.port || undefined, method: r.method, path: canonicalUri + (query ? `?${query}` : ''), headers, agent: this.agent },
        (res) => {
          const status = res.statusCode ?? 0;
          const length = Number(res.headers['content-length']);
          const sink = r.onData && status >= 200 && status < 300 ? r.onData : null;
          // one buffer of the announced length: a pack's bytes are not gathered and copied again
          const whole = sink ? Buffer.alloc(0) : Number.isSafeInteger(length) && length >= 0 && r.method !== 'HEAD' ? Buffer.allocUnsafe(length) : null;
          const parts: Buffer[] = [];
          let got = 0;
          res.on('data', (c: Buffer) => {
            if (sink) sink(c, got);
            else if (whole && got + c.length <= whole.length) c.copy(whole, got);
            else if (!whole) parts.push(c);
            got += c.length;
          });
          res.on('error', (e: NodeJS.ErrnoException) => fail(new S3RequestError(e.message, 'Error', undefined, e.code ?? 'ECONNRESET')));
          res.on('close', () => {
            if (!res.complete || (!sink && whole && got !== whole.length)) fail(new S3RequestError(`the answer was cut off (${got}${Number.isSafeInteger(length) ? ` of ${length}` : ''} bytes)`, 'Error', undefined, 'ECONNRESET'));
          });
          res.on('end', () => {
            bytesRead(got);
            if (settled || (!sink && whole && got !== whole.length)) return;
            answer = { status, headers: res.headers, body: whole ?? Buffer.concat(parts) };
            done();
          });
        },
      );
      req.setTimeout(this.opts.requestTimeoutMs, () => {
        req.destroy();
        fail(new S3RequestError(`no answer within ${this.opts.requestTimeoutMs} ms`, 'TimeoutError', undefined, 'ETIMEDOUT'));
      });
      req.on('socket', (sock) => {
        if (!sock.connecting) return;
        const t = setTimeout(() => {
          req.destroy();
          fail(new S3RequestError(`no connection within ${this.opts.connectionTimeoutMs} ms`, 'TimeoutError', undefined, 'ETIMEDOUT'));
        }, this.opts.connectionTimeoutMs);
        sock.once('connect', () => clearTimeout(t));
        sock.once('close', () => clearTimeout(t));
      });
      req.on('error', (e: NodeJS.ErrnoException) => fail(new S3RequestError(e.message, 'Error', undefined, e.code)));
      const off = () => {
        sent = true;
        done();
      };
      req.once('finish', off);
      req.once('close', off);
      req.end(body);
    });
  }

  /** The error an answer of `status` carries (the S3 code from its XML body when there is one). */
  static errorOf(res: S3Response): S3RequestError {
    const xml = res.body.length > 0 && res.body.length < 64 << 10 ? res.body.toString('utf8') : '';
    const code = xmlFirst(xml, 'Code') ?? (res.status === 404 ? 'NotFound' : res.status === 412 ? 'PreconditionFailed' : `HTTP${res.status}`);
    const message = xmlFirst(xml, 'Message') ?? '';
    return new S3RequestError(message || code, code, res.status);
  }

  destroy(): void {
    this.agent.destroy();
  }
}
