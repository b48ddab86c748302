import type { Command } from 'commander';
import { configLoader, configOf, globalsOf, printJson } from './context.js';
import { KuraError } from '../errors.js';
import { existsSync } from 'node:fs';

export function registerConfig(program: Command): void {
  const config = program.command('config').description('validate the config file or print an example');

  config
    .command('check')
    .description('validate the config (--config, KURA_CONFIG or ./kura.yaml); every error names its exact path')
    .option('--json', 'print the validated config as one JSON line')
    .action((opts: { json?: boolean }, cmd: Command) => {
      const where = configLoader().configPath(globalsOf(cmd).config);
      if (!where.explicit && !existsSync(where.path)) throw new KuraError('E_CONFIG', `no config file: give --config FILE, set KURA_CONFIG, or create ./kura.yaml ("kura config example" prints one)`);
      const { config: c, path } = configOf(cmd);
      if (opts.json) printJson({ ok: true, path, config: c });
      else process.stdout.write(`${path}: ok (${Object.keys(c.sources).length} source(s), routing ${c.modules.routing.type}, sso ${c.modules.sso.type}, virtualization ${c.modules.virtualization.type})\n`);
    });

  config
    .command('example')
    .description('print a commented example config generated from the schema')
    .action(async () => {
      process.stdout.write((await import('../config/example.js')).configExample());
    });
}
