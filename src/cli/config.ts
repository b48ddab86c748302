import type { Command } from 'commander';
import { configLoader, configOf, globalsOf, printJson } from './context.js';
import { KuraError } from '../errors.js';
import { existsSync } from 'node:fs';

export function registerConfig(program: Command): void {
  const config = program.command('config').description('validate the config file or print an example');

  config
    .command('check')
    .description('validate the config (--config, KURA_CONFIG or ./kura.yaml): its shape, the routes its sources name, and the key, password and certificate files it names (readable here); every error names its exact path')
    .option('--json', 'print the validated config as one JSON line')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const where = configLoader().configPath(globalsOf(cmd).config);
      if (!where.explicit && !existsSync(where.path)) throw new KuraError('E_CONFIG', `no config file: give --config FILE, set KURA_CONFIG, or create ./kura.yaml ("kura config example" prints one)`);
      const { config: c, path } = configOf(cmd);
      const { checkFiles } = await import('../config/load.js');
      checkFiles(c, { agent: Object.keys(c.sources).length > 0, relay: true, vault: Boolean(c.vault) }, path);
      if (opts.json) printJson({ ok: true, path, config: c });
      else process.stdout.write(`${path}: ok (${Object.keys(c.sources).length} source(s), routing ${c.modules.routing.type}, sso ${[c.modules.sso].flat().map((m) => (m.name ? `${m.type as string}:${m.name as string}` : (m.type as string))).join(', ')}, virtualization ${c.modules.virtualization.type})\n`);
    });

  config
    .command('example')
    .description('print a commented example config generated from the schema')
    .action(async () => {
      process.stdout.write((await import('../config/example.js')).configExample());
    });
}
