// A stand-in for a vault that lies about where a tenant moved: it speaks SSH with a host key of
// its own (which the relay pins) and answers every HELLO with a MOVED that is unsigned
// ("unsigned"), signed by another key that it names ("other-key"), or names its own host key
// with another key's signature ("forged"). Run as a child process by the tests:
//   node fake-moved-vault.js <kind> <host> <port>   → prints {"port", "hostKeySha256"}
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { generateHostKey } from '../../src/vault/hostkey.js';
import { signMoved } from '../../src/relay/moved.js';
import { encodeFrame, Frame, FrameParser } from '../../src/protocol/frames.js';

const require = createRequire(import.meta.url);
const ssh2 = require('ssh2') as typeof import('ssh2');
const [kind, host, port] = process.argv.slice(2) as ['unsigned' | 'other-key' | 'forged', string, string];
const hostKey = generateHostKey();
const other = generateHostKey();
const parsed = ssh2.utils.parseKey(hostKey) as import('ssh2').ParsedKey;
const pub = parsed.getPublicSSH();
const fp = 'SHA256:' + createHash('sha256').update(pub).digest('base64').replace(/=+$/, '');

const server = new ssh2.Server({ hostKeys: [hostKey] }, (client) => {
  client.on('authentication', (ctx) => ctx.accept());
  client.on('error', () => {});
  client.on('ready', () => {
    client.on('session', (accept) => {
      accept().on('exec', (acceptExec) => {
        const ch = acceptExec();
        const parser = new FrameParser(1 << 20);
        ch.on('data', (d: Buffer) => {
          for (const f of parser.push(d)) {
            if (f.type !== Frame.HELLO) continue;
            const tenant = (JSON.parse(f.payload.toString()) as { tenant: string }).tenant;
            const base = { tenant, route: 'elsewhere', endpoints: [{ host, port: Number(port) }], issued: new Date().toISOString() };
            const answer =
              kind === 'unsigned' ? base
              : kind === 'other-key' ? signMoved(base, other)
              : { ...signMoved(base, other), hostKey: `${parsed.type} ${pub.toString('base64')}` };
            ch.write(encodeFrame(Frame.MOVED, answer));
            ch.end();
          }
        });
      });
    });
  });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: (server.address() as AddressInfo).port, hostKeySha256: fp }) + '\n');
});
process.on('SIGTERM', () => process.exit(0));
