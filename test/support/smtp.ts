import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { SMTPServer } from 'smtp-server';

export interface Mail {
  from: string;
  to: string[];
  subject: string;
  body: string;
  headers: Record<string, string>;
  /** the session had switched to TLS (STARTTLS) before the message */
  secure: boolean;
  user: string | undefined;
}

/** A self-signed certificate for 127.0.0.1, made by openssl; returns the PEM file paths. */
export function selfSignedCert(dir: string): { key: string; cert: string } {
  const key = path.join(dir, 'smtp.key');
  const cert = path.join(dir, 'smtp.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' });
  return { key, cert };
}

function decodeQuotedPrintable(s: string): string {
  const bytes: number[] = [];
  const text = s.replace(/=\r?\n/g, '');
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '=' && /^[0-9A-F]{2}$/i.test(text.slice(i + 1, i + 3))) {
      bytes.push(parseInt(text.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(...Buffer.from(text[i]!, 'utf8'));
  }
  return Buffer.from(bytes).toString('utf8');
}

function decodeWords(s: string): string {
  return s.replace(/=\?utf-8\?([QB])\?([^?]*)\?=/gi, (_m, enc: string, data: string) => (enc.toUpperCase() === 'B' ? Buffer.from(data, 'base64').toString('utf8') : decodeQuotedPrintable(data.replace(/_/g, ' '))));
}

/** Just enough RFC 5322 for the tests: unfolded headers, a text body in 7bit, QP or base64. */
export function parseMail(raw: string): { headers: Record<string, string>; subject: string; body: string } {
  const split = raw.indexOf('\r\n\r\n');
  const head = raw.slice(0, split).replace(/\r\n[ \t]+/g, ' ');
  const headers: Record<string, string> = {};
  for (const line of head.split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  let body = raw.slice(split + 4);
  const te = (headers['content-transfer-encoding'] ?? '').toLowerCase();
  if (te === 'quoted-printable') body = decodeQuotedPrintable(body);
  else if (te === 'base64') body = Buffer.from(body.replace(/\s+/g, ''), 'base64').toString('utf8');
  return { headers, subject: decodeWords(headers['subject'] ?? ''), body: body.replace(/\r\n/g, '\n') };
}

/**
 * A real SMTP server on loopback (the `smtp-server` package): STARTTLS with a self-signed
 * certificate, login required (user "kura", the given password), every accepted message kept.
 * stop() and start() again on the same port stand for a mail server that goes down and back.
 */
export class TestSmtp {
  readonly mails: Mail[] = [];
  private server: SMTPServer | null = null;
  constructor(
    readonly port: number,
    private readonly tls: { key: string; cert: string },
    private readonly password: string,
  ) {}

  async start(): Promise<this> {
    const server = new SMTPServer({
      key: readFileSync(this.tls.key),
      cert: readFileSync(this.tls.cert),
      authMethods: ['PLAIN', 'LOGIN'],
      logger: false,
      onAuth: (auth, _session, cb) => (auth.username === 'kura' && auth.password === this.password ? cb(null, { user: 'kura' }) : cb(new Error('invalid login'))),
      onData: (stream, session, cb) => {
        const parts: Buffer[] = [];
        stream.on('data', (d: Buffer) => parts.push(d));
        stream.on('end', () => {
          const m = parseMail(Buffer.concat(parts).toString('utf8'));
          this.mails.push({
            from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
            to: session.envelope.rcptTo.map((r) => r.address),
            subject: m.subject,
            body: m.body,
            headers: m.headers,
            secure: session.secure,
            user: session.user as string | undefined,
          });
          cb();
        });
      },
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.server = server;
    return this;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  /** The mails whose X-Kura-Event header is `event`. */
  of(event: string): Mail[] {
    return this.mails.filter((m) => m.headers['x-kura-event'] === event);
  }
}

/** The `notifications.email` entry of a config for this server. */
export function emailYaml(smtp: TestSmtp, o: { caFile: string; passwordFile: string; to?: string; extra?: string }): string {
  return `  email:\n    - { host: 127.0.0.1, port: ${smtp.port}, starttls: true, caFile: ${o.caFile}, user: kura, passwordFile: ${o.passwordFile}, from: kura@dc-a.test, to: ["${o.to ?? 'ops@city-a.test'}"], timeout: 5s${o.extra ?? ''} }\n`;
}
