import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { z } from 'zod';
import { KuraError } from '../../errors.js';
import { parseDuration } from '../../config/duration.js';
import type { NotifyEvent } from '../events.js';
import { commonChannelOptions, registerChannel } from './registry.js';

const require = createRequire(import.meta.url);

/** The mail's text: what happened, what to do, and where it came from. */
export function mailText(e: NotifyEvent): string {
  const where = [e.tenant && `tenant ${e.tenant}`, e.source && `source ${e.source}`, e.route && `route ${e.route}`].filter(Boolean).join(', ');
  return `${e.text}\n\n--\n${e.event} (${e.severity}) from kura ${e.mode} on ${e.host}${where ? `, ${where}` : ''}, ${e.time}\n`;
}

function readSecret(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new KuraError('E_CONFIG', `cannot read ${what} ${file}: ${(err as Error).message}`);
  }
}

registerChannel({
  key: 'email',
  description: 'e-mail over SMTP (STARTTLS or TLS, optional login)',
  options: z.strictObject({
    host: z.string().describe('SMTP server').meta({ examples: ['smtp.city-a.example'] }),
    port: z.number().int().min(1).max(65535).default(587),
    starttls: z.boolean().default(true).describe('require STARTTLS before login and sending (port 587); false sends in the clear unless tls is set'),
    tls: z.boolean().default(false).describe('implicit TLS from the first byte (port 465)'),
    caFile: z.string().optional().describe('PEM file of the CA that signed the server\'s certificate (default: the system\'s CAs)'),
    user: z.string().optional().describe('login name, when the server wants one'),
    passwordFile: z.string().optional().describe('file holding the login password'),
    from: z.string().describe('sender address').meta({ examples: ['kura@dc-a.example'] }),
    to: z.array(z.string()).min(1).describe('recipients').meta({ examples: [['backup-ops@city-a.example']] }),
    ...commonChannelOptions,
  }),
  create: (o, label) => {
    const nodemailer = require('nodemailer') as typeof import('nodemailer');
    const timeout = parseDuration(o.timeout)!;
    const transport = nodemailer.createTransport({
      host: o.host,
      port: o.port,
      secure: o.tls,
      requireTLS: o.starttls && !o.tls,
      ignoreTLS: !o.starttls && !o.tls,
      ...(o.user ? { auth: { user: o.user, pass: o.passwordFile ? readSecret(o.passwordFile, 'the SMTP password file') : '' } } : {}),
      tls: { ...(o.caFile ? { ca: readSecret(o.caFile, 'the SMTP CA file') } : {}), minVersion: 'TLSv1.2' },
      connectionTimeout: timeout,
      greetingTimeout: timeout,
      socketTimeout: timeout,
    });
    return {
      label: `${label} (${o.to.join(', ')} via ${o.host}:${o.port})`,
      send: async (e) => {
        await transport.sendMail({ from: o.from, to: o.to, subject: e.title, text: mailText(e), headers: { 'X-Kura-Event': e.event, 'X-Kura-Key': e.key } });
      },
      close: () => transport.close(),
    };
  },
});
