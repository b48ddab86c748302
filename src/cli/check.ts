import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';

export function registerCheck(program: Command): void {
  withRepoOptions(program.command('check'))
    .description('verify the repository structure; with --read-data also every referenced blob (against its digest, and with the key decrypted and re-hashed)')
    .option('--read-data', 'read every referenced blob: against the digest recorded when written (no key needed), and with the key also decrypt, decompress and re-hash it')
    .option('--repair', 'quarantine the damaged blobs found (out of the index: the next backup that meets the same data stores them anew) and mark the snapshots they damage')
    .option('--json', 'print the report as one JSON line')
    .action(async (opts: RepoOptions & { readData?: boolean; repair?: boolean }, cmd: Command) => {
      const repo = await openRepo(cmd, opts, 'if-given');
      try {
        const { check } = await import('../checker/check.js');
        const report = await check(repo, { readData: Boolean(opts.readData), repair: Boolean(opts.repair) });
        if (opts.json) printJson(report);
        else printCheck(report);
        if (!report.ok) throw new KuraError('E_CHECK_FAILED', `check found ${report.problems.length} problem(s) in ${repo.location}; see above${report.quarantined.length ? ` (${report.quarantined.length} damaged blob(s) quarantined)` : opts.readData && !opts.repair ? '; --repair quarantines damaged blobs so the next backup stores them anew' : ''}`, { reported: true });
      } finally {
        repo.close();
      }
    });
}

export function printCheck(report: import('../checker/check.js').CheckReport, prefix = ''): void {
  const w = (s: string) => process.stdout.write(prefix + s + '\n');
  for (const p of report.problems) {
    w(`PROBLEM ${p.kind}: ${p.message}`);
    if (p.snapshots?.length) w(`  affects snapshot(s): ${p.snapshots.join(', ')}`);
  }
  for (const q of report.quarantined) w(`QUARANTINED chunk ${q.chunk} (pack ${q.pack}, offset ${q.offset}): ${q.reason}`);
  if (report.damagedSnapshots.length) w(`damaged snapshot(s): ${report.damagedSnapshots.join(', ')}`);
  if (report.readData && report.keyless) {
    w(`read without a key: blobs verified against their digests${report.chunksUnverified ? `; ${report.chunksUnverified} blob(s) written before pack format 2 have none and were checked for their structure only (the key verifies them)` : ''}`);
  }
  w(
    `${report.snapshots} snapshot(s), ${report.chunksReferenced} chunk(s) referenced, ${report.chunksStored} stored, ${report.chunksUnreferenced} unreferenced` +
      (report.readData ? `, ${report.chunksRead} read and verified` : '') +
      `: ${report.ok ? 'no problems' : `${report.problems.length} problem(s)`}`,
  );
}
