import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { Repository } from '../repository/repository.js';
import { chunkerParamsForAverage, defaultChunkerParams, validateChunkerParams, type ChunkerParams } from '../chunker/fastcdc.js';
import { configOf, keySourceOf, openRepo, printJson, repoLocationOf, withRepoOptions, type RepoOptions } from './context.js';
import { COMPRESSION_LEVEL } from '../repository/compression-level.js';

function intOption(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new KuraError('E_USAGE', `${what} must be an integer, got "${v}"`);
  return n;
}

function sizeOption(v: string, what: string): number {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(v.trim());
  if (!m) throw new KuraError('E_USAGE', `${what} must be a size like 65536, 64KiB or 1MiB, got "${v}"`);
  const mult = { k: 1024, m: 1 << 20, g: 1 << 30 }[(m[2] ?? '').charAt(0).toLowerCase()] ?? 1;
  return Number(m[1]) * mult;
}

/** `repo init`'s chunk sizes: those given; a minimum or maximum not given follows the average as `--chunk-avg` alone sets it (avg/4, avg×4). */
function chunkerOptions(opts: { chunkMin?: string | undefined; chunkAvg?: string | undefined; chunkMax?: string | undefined }): ChunkerParams {
  const around = opts.chunkAvg === undefined ? defaultChunkerParams : chunkerParamsForAverage(sizeOption(opts.chunkAvg, '--chunk-avg'));
  const p = {
    minSize: opts.chunkMin === undefined ? around.minSize : sizeOption(opts.chunkMin, '--chunk-min'),
    avgSize: around.avgSize,
    maxSize: opts.chunkMax === undefined ? around.maxSize : sizeOption(opts.chunkMax, '--chunk-max'),
  };
  const problem = validateChunkerParams(p);
  if (problem) throw new KuraError('E_USAGE', `chunk sizes min ${p.minSize}, avg ${p.avgSize}, max ${p.maxSize}: ${problem}; --chunk-avg alone (a power of two) sets min to a quarter and max to four times it`);
  return p;
}

export function registerRepo(program: Command): void {
  const repo = program.command('repo').description('create and maintain repositories');

  withRepoOptions(repo.command('init'))
    .description('create a new repository (needs KURA_PASSPHRASE, --passphrase-file, or --key-file PATH to create a key file)')
    .option('--compression <level>', `default zstd level for new chunks (0 = none; default: repository.compression from the config, else ${COMPRESSION_LEVEL.default})`)
    .option('--chunk-avg <size>', `FastCDC average chunk size, a power of two (default ${defaultChunkerParams.avgSize})`)
    .option('--chunk-min <size>', 'FastCDC minimum chunk size (default: a quarter of the average)')
    .option('--chunk-max <size>', 'FastCDC maximum chunk size (default: four times the average)')
    .option('--json', 'print the result as one JSON line')
    .action(async (opts: RepoOptions & { compression?: string; chunkMin?: string; chunkAvg?: string; chunkMax?: string }, cmd: Command) => {
      const loc = repoLocationOf(cmd, opts);
      const keys = keySourceOf(cmd, opts);
      // the config's level applies to the repository it names, not to one given with --repo
      const configured = opts.repo || opts.vaultTenant ? undefined : configOf(cmd).config.repository?.compression;
      const { repo: r, keyFileWritten } = await Repository.init(loc, {
        keys,
        compressionLevel: opts.compression !== undefined ? intOption(opts.compression, '--compression') : configured, // else Repository.init's default
        chunker: chunkerOptions(opts),
      });
      const dir = r.location;
      const result = { repository: dir, id: r.config.id, chunker: r.config.chunker, compression: r.config.compression, keyFile: keyFileWritten ?? null };
      r.close();
      if (opts.json) printJson(result);
      else {
        process.stdout.write(`created repository ${r.config.id} at ${dir}\n`);
        if (keyFileWritten) process.stdout.write(`key file written to ${keyFileWritten}: keep a copy off this server; without it the data cannot be read\n`);
      }
    });

  withRepoOptions(repo.command('rebuild-index'))
    .description('rebuild the SQLite catalogue from the store alone (no key needed)')
    .option('--json', 'print the result as one JSON line')
    .action(async (opts: RepoOptions, cmd: Command) => {
      const r = await openRepo(cmd, opts, 'none', { rebuildIfMissing: false });
      try {
        const res = await (await import('../checker/check.js')).rebuildIndex(r);
        if (opts.json) printJson(res);
        else process.stdout.write(`catalogue rebuilt: ${res.chunks} chunks, ${res.snapshots} snapshots${res.quarantined ? `; ${res.quarantined} damaged blob(s) quarantined (kura check says which snapshots they damage)` : ''}\n`);
      } finally {
        r.close();
      }
    });
}
