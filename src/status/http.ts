import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { log } from '../log.js';

/** A tiny Prometheus endpoint: GET /metrics renders on each scrape; nothing else is served. */
export async function serveMetrics(host: string, port: number, render: () => string | Promise<string>): Promise<{ port: number; close: () => Promise<void> }> {
  const server = http.createServer(async (req, res) => {
    if (req.method !== 'GET' || req.url !== '/metrics') {
      res.writeHead(404).end('only GET /metrics\n');
      return;
    }
    try {
      const body = await render();
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(body);
    } catch (e) {
      res.writeHead(500).end(`${(e as Error).message}\n`);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const actual = (server.address() as AddressInfo).port;
  log().info({ host, port: actual }, 'metrics listening');
  return { port: actual, close: () => new Promise((r) => server.close(() => r())) };
}
