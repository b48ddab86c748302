import { Command, CommanderError } from 'commander';
import { ExitStatus, KuraError } from '../errors.js';
import { registerBackup } from './backup.js';
import { registerCheck } from './check.js';
import { registerConfig } from './config.js';
import { registerKey } from './key.js';
import { registerAgent } from './agent.js';
import { registerPrune } from './prune.js';
import { registerOperator } from './operator.js';
import { registerRepo } from './repo.js';
import { registerRestore } from './restore.js';
import { registerSnapshots } from './snapshots.js';
import { registerRelay, registerRouteControls } from './relay.js';
import { registerStatus } from './status.js';
import { registerTop } from './top.js';
import { registerVault } from './vault.js';
import { registerNotify } from './notify.js';
import { registerPlan } from './plan.js';
import { registerLog } from './log.js';
import { registerLogin } from './login.js';
import { kuraVersion } from '../version.js';

export function buildProgram(): Command {
  const program = new Command('kura')
    .description('kura (蔵): deduplicating, encrypted backups of database exports, shipped to a vault in a peer data centre')
    .version(kuraVersion(), '-V, --version', 'print the version (with --json: commit, format versions, Node and library versions)')
    .option('--config <file>', 'config file (default: KURA_CONFIG or ./kura.yaml)')
    .option('--debug', 'print stack traces of errors')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerAgent(program);
  registerRelay(program);
  registerRouteControls(program);
  registerStatus(program);
  registerTop(program);
  registerVault(program);
  registerBackup(program);
  registerSnapshots(program);
  registerRestore(program);
  registerPrune(program);
  registerOperator(program);
  registerCheck(program);
  registerRepo(program);
  registerKey(program);
  registerConfig(program);
  registerNotify(program);
  registerPlan(program);
  registerLog(program);
  registerLogin(program);
  // subcommands inherit exitOverride so usage errors reach our handler
  const walk = (c: Command) => c.commands.forEach((s) => (s.exitOverride(), walk(s)));
  walk(program);
  return program;
}

function wantsJson(argv: string[]): boolean {
  return argv.includes('--json');
}

export async function main(argv = process.argv): Promise<number> {
  const debug = argv.includes('--debug');
  try {
    const args = argv.slice(2);
    if (args.length === 2 && args.includes('--json') && (args.includes('--version') || args.includes('-V'))) {
      const { versionReport } = await import('../version.js');
      process.stdout.write(JSON.stringify(await versionReport(), null, 2) + '\n');
      return ExitStatus.OK;
    }
    await buildProgram().parseAsync(argv);
    return ExitStatus.OK;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return ExitStatus.OK;
      return ExitStatus.USAGE;
    }
    const err =
      e instanceof KuraError ? e : new KuraError('E_INTERNAL', `internal error: ${(e as Error)?.message ?? String(e)} (rerun with --debug and report it)`, undefined, { cause: e });
    // a command that already printed its JSON report (check) does not get a second line
    if (wantsJson(argv) && !err.details?.reported) process.stdout.write(JSON.stringify({ ok: false, error: { code: err.code, message: err.message, ...(err.details ?? {}) } }) + '\n');
    process.stderr.write(`kura: ${err.code}: ${err.message}\n`);
    if (debug) process.stderr.write(`${(err.cause as Error)?.stack ?? err.stack}\n`);
    return err.exitStatus;
  }
}
