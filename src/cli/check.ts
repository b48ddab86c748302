import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';

export function registerCheck(program: Command): void {
  withRepoOptions(program.command('check'))
    .description('verify the repository structure; with --read-data also decrypt and re-hash every chunk')
    .option('--read-data', 'read, decrypt, decompress and re-hash every referenced chunk (needs the key)')
    .option('--json', 'print the report as one JSON line')
    .action(async (opts: RepoOptions & { readData?: boolean }, cmd: Command) => {
      const repo = await openRepo(cmd, opts, opts.readData ? 'required' : 'if-given');
      try {
        const { check } = await import('../checker/check.js');
        const report = await check(repo, { readData: Boolean(opts.readData) });
        if (opts.json) printJson(report);
        else {
          for (const p of report.problems) {
            process.stdout.write(`PROBLEM ${p.kind}: ${p.message}\n`);
            if (p.snapshots?.length) process.stdout.write(`  affects snapshot(s): ${p.snapshots.join(', ')}\n`);
          }
          process.stdout.write(
            `${report.snapshots} snapshot(s), ${report.chunksReferenced} chunk(s) referenced, ${report.chunksStored} stored, ${report.chunksUnreferenced} unreferenced` +
              (report.readData ? `, ${report.chunksRead} read and verified` : '') +
              `: ${report.ok ? 'no problems' : `${report.problems.length} problem(s)`}\n`,
          );
        }
        if (!report.ok) throw new KuraError('E_CHECK_FAILED', `check found ${report.problems.length} problem(s) in ${repo.location}; see above`, { reported: true });
      } finally {
        repo.close();
      }
    });
}
