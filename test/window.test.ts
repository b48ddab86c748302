import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import ssh2 from 'ssh2';
import { tempDir } from './support/cli.js';
import { Prng } from './support/generate.js';
import { sleep } from './support/proxy.js';
import { sshKey } from './support/vault.js';
import { CHANNEL_WINDOW, keepChannelWindow } from '../src/protocol/window.js';

const MiB = 1 << 20;

test('the protocol channel grants a wide window, only for data read: a reader that stops stops the sender, and nothing is lost', async (t) => {
  const dir = tempDir(t);
  const host = sshKey(dir, 'host');
  const client = sshKey(dir, 'client');
  const data = new Prng(5).bytes(64 * MiB);
  let received = 0;
  let sent = 0;
  const hash = createHash('sha256');
  let serverChannel: import('ssh2').ServerChannel | null = null;
  const gotChannel = new Promise<void>((resolve) => {
    const server = new ssh2.Server({ hostKeys: [readFileSync(host.private)] }, (conn) => {
      conn.on('authentication', (ctx) => ctx.accept());
      conn.on('ready', () =>
        conn.on('session', (accept) =>
          accept().on('exec', (acceptExec) => {
            const ch = acceptExec();
            serverChannel = ch;
            const consumed = keepChannelWindow(ch);
            ch.on('data', (d: Buffer) => {
              consumed();
              received += d.length;
              hash.update(d);
              if (received === data.length) ch.end();
            });
            ch.pause(); // a reader busy elsewhere
            resolve();
          }),
        ),
      );
    });
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as AddressInfo).port;
      const c = new ssh2.Client();
      t.after(() => {
        c.end();
        server.close();
      });
      c.on('ready', () =>
        c.exec('x', (err, ch) => {
          assert.ifError(err);
          const pump = () => {
            while (sent < data.length) {
              const piece = data.subarray(sent, sent + 256 * 1024);
              sent += piece.length;
              if (!ch.write(piece)) return void ch.once('drain', pump);
            }
          };
          pump();
        }),
      ).connect({ host: '127.0.0.1', port, username: 'u', privateKey: readFileSync(client.private) });
    });
  });
  await gotChannel;
  await sleep(1000);
  // paused: what the sender got through is what the granted window allows (plus its own buffer)
  const buffered = serverChannel!.readableLength;
  t.diagnostic(`paused reader: ${buffered} bytes buffered at the vault side, ${sent} written by the sender`);
  assert.equal(received, 0);
  assert.ok(buffered > 2 * MiB, `the window is wider than ssh2's 2 MiB (${buffered} buffered)`);
  assert.ok(buffered <= CHANNEL_WINDOW, `a reader that stops stops the sender (${buffered} buffered, window ${CHANNEL_WINDOW})`);
  assert.ok(sent < data.length, 'the sender is held back');
  serverChannel!.resume();
  const start = Date.now();
  while (received < data.length && Date.now() - start < 20_000) await sleep(20);
  assert.equal(received, data.length, 'every byte arrives once the reader reads');
  assert.equal(hash.digest('hex'), createHash('sha256').update(data).digest('hex'));
});
