import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import type { Rgw } from './rgw.js';

/**
 * An S3 front end that ignores `If-None-Match` on PutObject, as some S3-compatible gateways do:
 * a conditional PUT is carried out unconditionally (re-signed with the gateway's own user, since
 * the header is part of the client's signature); every other request is passed through as it
 * came. `repo init` must refuse the store behind it.
 */
export class OverwritingProxy {
  private server: http.Server;
  private client: S3Client;
  port = 0;
  conditionalPutsIgnored = 0;

  constructor(private readonly rgw: Rgw) {
    this.client = new S3Client({
      endpoint: rgw.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    this.server = http.createServer((req, res) => void this.handle(req, res));
  }

  async start(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    try {
      const url = new URL(req.url!, 'http://proxy');
      if (req.method === 'PUT' && req.headers['if-none-match'] && !url.searchParams.has('uploadId')) {
        const [, bucket, ...key] = decodeURIComponent(url.pathname).split('/');
        this.conditionalPutsIgnored++;
        const out = await this.client.send(new PutObjectCommand({ Bucket: bucket, Key: key.join('/'), Body: body }));
        res.writeHead(200, { etag: out.ETag ?? '""' }).end();
        return;
      }
      const up = http.request({ host: '127.0.0.1', port: this.rgw.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.writeHead(502).end());
      up.end(body);
    } catch (e) {
      res.writeHead(500).end(String(e));
    }
  }

  async stop(): Promise<void> {
    this.client.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
