import type { Command } from 'commander';
import { KuraError } from '../errors.js';

/**
 * Commands whose contract is fixed but whose implementation is not in this version yet: they
 * exist with accurate help, and fail with E_NOT_IMPLEMENTED (exit 69), never pretend to work.
 */
function planned(cmd: Command, what: string): Command {
  return cmd.allowUnknownOption().allowExcessArguments().action(() => {
    throw new KuraError('E_NOT_IMPLEMENTED', `"kura ${cmd.parent && cmd.parent.name() !== 'kura' ? cmd.parent.name() + ' ' : ''}${cmd.name()}" (${what}) is not available in this version of kura`);
  });
}

export function registerPlanned(program: Command): void {
  const agent = program.command('agent').description('agent mode: export sources on a schedule into the local repository and queue them for routes');
  planned(agent.command('run').description('run sources once (for cron, systemd timers, job schedulers)'), 'one-shot agent run');
  planned(agent.command('daemon').description('run sources on their cron schedules'), 'agent daemon');

}
