import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { formatBytes, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';

export function registerRestore(program: Command): void {
  withRepoOptions(program.command('restore'))
    .description('restore a snapshot (ID, unique ID prefix, or latest:SOURCE) to a file or stdout; every chunk is verified')
    .argument('<snapshot>', 'snapshot ID, unique prefix, or latest:SOURCE')
    .option('--to <path>', 'output file, or - for standard output', '-')
    .option('--json', 'print a JSON summary line (on stderr when restoring to stdout)')
    .action(async (ref: string, opts: RepoOptions & { to: string }, cmd: Command) => {
      if (opts.to === '-' && process.stdout.isTTY) throw new KuraError('E_USAGE', 'refusing to write a restore to a terminal; use --to PATH or pipe the output');
      const repo = await openRepo(cmd, opts, 'required');
      try {
        const { restoreTo, restoreToFile } = await import('../restorer/restore.js');
        const id = repo.resolveSnapshot(ref);
        const res = opts.to === '-' ? await restoreTo(repo, id, process.stdout) : await restoreToFile(repo, id, opts.to);
        const summary = { id: res.id, bytes: res.bytes, chunks: res.chunks, seconds: Number(res.seconds.toFixed(3)), to: opts.to };
        if (opts.json) {
          if (opts.to === '-') process.stderr.write(JSON.stringify(summary) + '\n');
          else printJson(summary);
        } else {
          process.stderr.write(`restored ${res.id.slice(0, 12)}: ${formatBytes(res.bytes)} in ${res.chunks} chunks, verified, ${res.seconds.toFixed(2)} s\n`);
        }
      } finally {
        repo.close();
      }
    });
}
