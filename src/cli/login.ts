import type { Command } from 'commander';
import { configOf, printJson } from './context.js';

/**
 * `kura login --from ROUTE`: sign in at the vault of a route through one of its identity
 * providers (docs/sso.md). The vault answers with a URL and a short code; the person opens the
 * URL, checks the code and signs in at the provider; the vault then hands over an operator
 * ticket, kept in the operator's config directory (tickets/<route>.json, mode 0600) for the
 * commands that act on that vault.
 */
export function registerLogin(program: Command): void {
  program
    .command('login')
    .description('sign in at the vault of a route through its identity provider (SSO) and keep the operator ticket')
    .requiredOption('--from <route>', 'the route whose vault to sign in at')
    .option('--step-up', 'sign in again, with the stronger factor sensitive operations need (vault.sso.sensitive)')
    .option('--provider <name>', 'the identity provider to use (a name of the vault\'s modules.sso; default: choose in the browser)')
    .option('--tenant <tenant>', 'tenant on the vault (default: the config\'s tenant)')
    .option('--identity <file>', 'SSH private key for the vault (default: the route\'s clientKey)')
    .option('--system', 'sign in over a system session (SSH user _system, a key of vault.system.clients): for a system administrator with no tenant key')
    .option('--json', 'print the result as JSON (the URL and code still go to stderr)')
    .action(async (opts: { from: string; stepUp?: boolean; provider?: string; tenant?: string; identity?: string; system?: boolean; json?: boolean }, cmd: Command) => {
      const { withRoute } = await import('../restorer/remote.js');
      const { Frame, jsonOf } = await import('../protocol/frames.js');
      const { saveTicket, ticketPath } = await import('../sso/ticket-file.js');
      const { describeRoles } = await import('../sso/describe.js');
      const { token } = await withRoute(configOf(cmd).config, { ...opts, system: opts.system === true, auth: false }, async (conn) => {
        const begin: { provider?: string; stepUp?: boolean } = {};
        if (opts.provider) begin.provider = opts.provider;
        if (opts.stepUp) begin.stepUp = true;
        const u = jsonOf<{ url: string; code: string; expires: number }>(await conn.request(Frame.LOGIN_BEGIN, begin, Frame.LOGIN_URL));
        process.stderr.write(`Open ${u.url} in a browser and sign in${opts.stepUp ? ' (step-up: with your strongest factor)' : ''}.\nThe page shows the code ${u.code}. Waiting until ${new Date(u.expires).toISOString()} ...\n`);
        return jsonOf<{ token: string }>(await conn.request(Frame.LOGIN_WAIT, {}, Frame.TICKET));
      });
      const saved = saveTicket(opts.from, token);
      const t = saved.ticket;
      if (opts.json) {
        printJson({ ok: true, route: opts.from, file: ticketPath(opts.from), ticket: t });
        return;
      }
      const who = t.display?.name ?? t.display?.email ?? t.subject;
      process.stdout.write(
        `Signed in at ${opts.from} as ${who} (${t.provider}, subject ${t.subject}${t.acr ? `, level ${t.acr}` : ''}): ${describeRoles(t)}; valid until ${new Date(t.expires).toISOString()}\n` +
          `Ticket kept in ${ticketPath(opts.from)}\n`,
      );
    });
}
