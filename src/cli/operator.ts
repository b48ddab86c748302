import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import type { PruneReport } from '../retention/prune.js';
import { configOf, printJson } from './context.js';

/**
 * Operator commands on the vault of a route (docs/operators.md): they present the person's
 * ticket (kura login --from ROUTE) in AUTH on the session the SSH key opens.
 */
interface RemoteOptions {
  from: string;
  tenant?: string;
  identity?: string;
  json?: boolean;
}

const remote = (c: Command) =>
  c
    .requiredOption('--from <route>', 'the vault of this route (modules.routing.routes)')
    .option('--tenant <tenant>', "tenant on the vault (default: the config's tenant)")
    .option('--identity <file>', "SSH private key for the vault (default: the route's clientKey)")
    .option('--json', 'print the result as one JSON line');

/** `kura prune --from ROUTE`: the vault applies the tenant's retention from its own config. */
export async function remotePrune(cmd: Command, opts: RemoteOptions & { dryRun?: boolean; source?: string[] }): Promise<PruneReport> {
  const { withRoute } = await import('../restorer/remote.js');
  const { Frame, jsonOf } = await import('../protocol/frames.js');
  if ((opts.source?.length ?? 0) > 1) throw new KuraError('E_USAGE', 'with --from, give one --source (or none: every source of the tenant)');
  return withRoute(configOf(cmd).config, opts, async (conn) => jsonOf<PruneReport>(await conn.request(Frame.PRUNE, { dryRun: Boolean(opts.dryRun), ...(opts.source?.[0] ? { source: opts.source[0] } : {}) }, Frame.PRUNED)));
}

export function registerOperator(program: Command): void {
  remote(program.command('delete'))
    .description("delete one snapshot on the vault (tenant-admin; a protected one is refused: unprotect it first); its chunks go at the vault's next gc")
    .argument('<snapshot>', 'snapshot ID, unique prefix or latest:SOURCE')
    .action(async (ref: string, opts: RemoteOptions, cmd: Command) => {
      const { remoteList, resolveRemote, withRoute } = await import('../restorer/remote.js');
      const { Frame, jsonOf } = await import('../protocol/frames.js');
      const r = await withRoute(configOf(cmd).config, opts, async (conn) => {
        const id = resolveRemote(await remoteList(conn), ref);
        return jsonOf<{ id: string; deleted: boolean }>(await conn.request(Frame.DELETE, { id }, Frame.DELETED));
      });
      if (opts.json) printJson({ ok: true, ...r, route: opts.from });
      else process.stdout.write(`snapshot ${r.id} deleted from the vault of route ${opts.from}\n`);
    });

  program
    .command('logout')
    .description('end the operator ticket of a route at its vault (it is refused from now on, everywhere) and remove it from this machine')
    .requiredOption('--from <route>', 'the route whose ticket ends')
    .option('--tenant <tenant>', "tenant on the vault (default: the config's tenant)")
    .option('--identity <file>', "SSH private key for the vault (default: the route's clientKey)")
    .option('--system', 'end it on a system session (SSH user _system; the default for a ticket that names no tenant)')
    .action(async (opts: RemoteOptions & { system?: boolean }, cmd: Command) => {
      const { loadTicket, removeTicket } = await import('../sso/ticket-file.js');
      const saved = loadTicket(opts.from);
      if (!saved) {
        process.stdout.write(`no operator ticket saved for route ${opts.from}\n`);
        return;
      }
      let ended = 'ended at the vault';
      if (saved.ticket.expires <= Date.now()) ended = 'had expired';
      else {
        const { withRoute } = await import('../restorer/remote.js');
        const { Frame } = await import('../protocol/frames.js');
        try {
          // a system administrator's ticket (no tenant) is ended on a system session
          const system = opts.system ?? (saved.ticket.systemAdmin && Object.keys(saved.ticket.tenants).length === 0);
          await withRoute(configOf(cmd).config, { ...opts, system }, async (conn) => {
            if (!conn.operator) throw new KuraError('E_TICKET_MISSING', 'the vault did not take the ticket');
            await conn.request(Frame.LOGOUT, {}, Frame.LOGGED_OUT);
          });
        } catch (e) {
          // a ticket the vault refuses (revoked, of another vault) is worth nothing: it goes anyway
          if (!(e instanceof KuraError) || !['E_TICKET_INVALID', 'E_TICKET_EXPIRED', 'E_TICKET_REVOKED'].includes(e.code)) throw e;
          ended = `was refused by the vault (${e.code})`;
        }
      }
      removeTicket(opts.from);
      process.stdout.write(`operator ticket of ${saved.ticket.subject} (${saved.ticket.provider}) for route ${opts.from} ${ended}; removed from this machine\n`);
    });
}
