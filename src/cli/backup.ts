import { statSync } from 'node:fs';
import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { compressionLevelProblem } from '../repository/compression-level.js';
import { FileInput, inputFailed } from '../archiver/input.js';
import { chunkerParamsForAverage, validateChunkerParams, type ChunkerParams } from '../chunker/fastcdc.js';
import { parseSize } from '../config/size.js';
import { meterFor } from './progress.js';
import { configOf, directRootOf, formatBytes, openRepo, printJson, repoLocationOf, repoPathOf, tenantOf, withRepoOptions, type RepoOptions } from './context.js';

interface BackupCliOptions extends RepoOptions {
  name: string;
  stdin?: boolean;
  file?: string;
  tenant?: string;
  tag: string[];
  compression?: string;
  route: string[];
  chunkAvg?: string;
  delta: boolean;
  scrub?: string;
  json?: boolean;
  progress?: boolean;
}

/** Wrap an input so that a read error becomes a coded "input failed" error: no snapshot. */
async function* guarded(input: AsyncIterable<Uint8Array>, what: string): AsyncIterable<Uint8Array> {
  try {
    yield* input;
  } catch (e) {
    throw inputFailed(`reading ${what} failed`, e);
  }
}

export function registerBackup(program: Command): void {
  withRepoOptions(program.command('backup'))
    .description('back up one stream or file as a new snapshot; prints the snapshot ID')
    .requiredOption('--name <source>', 'source name the snapshot is filed under')
    .option('--stdin', 'read the data from standard input (e.g. pg_dump ... | kura backup --stdin)')
    .option('--file <path>', 'read the data from a file')
    .option('--tenant <tenant>', 'tenant owning the data (default: from the config)')
    .option('--tag <tag>', 'label stored in the snapshot header (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--compression <level>', 'zstd level for new chunks (default: the repository\'s)')
    .option('--no-delta', 'store every changed chunk whole, not as a delta of the previous generation\'s (restores read fewer chunks; more bytes stored)')
    .option('--chunk-avg <bytes>', 'average chunk size, a power of two (min = avg/4, max = avg×4; default: the repository\'s, 256 KiB unless set at init: on the database dumps measured it stores the least per night, smaller chunks more)')
    .option('--scrub <size>', 'stored bytes of packs read and verified before the backup deduplicates against them (default 4GiB; the next backup goes on where this one stopped); 0: none, damage is then found by the relay or kura check')
    .option('--route <name>', 'queue the snapshot for this route of modules.routing (repeatable); the relay ships it', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--json', 'print one JSON line: id, logical bytes, new bytes stored, chunks, new chunks, seconds')
    .option('--progress', 'show progress even when standard error is no terminal (with --json: JSON lines on standard error)')
    .option('--no-progress', 'no progress line on a terminal')
    .action(async (opts: BackupCliOptions, cmd: Command) => {
      if (Boolean(opts.stdin) === Boolean(opts.file)) throw new KuraError('E_USAGE', 'give exactly one input: --stdin or --file PATH');
      if (!/^[a-z0-9][a-z0-9_.-]*$/i.test(opts.name)) throw new KuraError('E_USAGE', `source name "${opts.name}" must be letters, digits, ".", "-" and "_"`);
      let level: number | undefined;
      if (opts.compression !== undefined) {
        level = Number(opts.compression);
        const problem = compressionLevelProblem(level);
        if (problem) throw new KuraError('E_USAGE', `--compression ${problem.replace(/got .*$/, `got "${opts.compression}"`)}`);
      }
      let chunker: ChunkerParams | undefined;
      if (opts.chunkAvg !== undefined) {
        const avg = Number(opts.chunkAvg);
        chunker = chunkerParamsForAverage(avg);
        const problem = Number.isInteger(avg) ? validateChunkerParams(chunker) : 'not a whole number';
        if (problem) throw new KuraError('E_USAGE', `--chunk-avg ${opts.chunkAvg}: ${problem}`);
      }
      const scrub = opts.scrub === undefined ? undefined : parseSize(opts.scrub);
      if (scrub === null) throw new KuraError('E_USAGE', `--scrub must be a size such as 4GiB, 512MiB or 0, not "${opts.scrub}"`);
      let input: AsyncIterable<Uint8Array> | FileInput;
      let what: string;
      let size: number | undefined;
      if (opts.file) {
        try {
          const st = statSync(opts.file);
          if (!st.isFile()) throw new Error('not a regular file');
          size = st.size;
        } catch (e) {
          throw new KuraError('E_INPUT', `cannot back up ${opts.file}: ${(e as Error).message}`);
        }
        input = new FileInput(opts.file);
        what = opts.file;
      } else {
        if (process.stdin.isTTY) throw new KuraError('E_USAGE', '--stdin needs data piped in, e.g. pg_dump mydb | kura backup --stdin --name mydb');
        input = process.stdin;
        what = 'standard input';
      }
      const { backup, SealPool, ChunkPipeline } = await import('../archiver/backup.js');
      let pool: InstanceType<typeof SealPool> | null = null;
      let pipeline: InstanceType<typeof ChunkPipeline> | null = null;
      let opening: ReturnType<typeof openRepo> | null = null;
      let repo: Awaited<ReturnType<typeof openRepo>>;
      let tenant: string;
      try {
        // the compression and chunking workers start first (each is a Node isolate to boot, ~0.1 s):
        // the catalogue's opening and the key derivation (scrypt, off the main thread) overlap
        // their start, and so does the backup's reading of the previous snapshot (backup() awaits the keys)
        pool = new SealPool(null, directRootOf(repoLocationOf(cmd, opts)));
        pipeline = new ChunkPipeline();
        opening = openRepo(cmd, opts, 'deferred');
        opening.catch(() => {}); // awaited below
        if (opts.route.length > 0) {
          const { routesOf } = await import('../relay/routes.js');
          const known = routesOf(configOf(cmd).config);
          for (const r of opts.route) if (!known[r]) throw new KuraError('E_CONFIG', `route "${r}" is not in modules.routing.routes of the config; known: ${Object.keys(known).join(', ') || 'none'}`);
        }
        tenant = opts.tenant ?? tenantOf(cmd);
        repo = await opening;
      } catch (e) {
        await pool?.close();
        await pipeline?.close();
        await opening?.then((r) => r.close()).catch(() => {});
        throw e;
      }
      const job = repo.catalogue.ops.startJob(opts.name);
      const meter = meterFor(opts, 'backup', opts.name, size);
      let ok = false;
      try {
        // a pipe is counted as it is read (the chunker reports only whole segments); a file by what was chunked
        let read = 0;
        let stored = 0;
        const counted = async function* (src: AsyncIterable<Uint8Array>) {
          for await (const b of src) {
            read += b.length;
            meter.update(read, { newBytes: stored });
            yield b;
          }
        };
        const res = await backup(repo, input instanceof FileInput ? input : counted(guarded(input, what)), {
          source: opts.name,
          tenant,
          tags: opts.tag,
          ...(level !== undefined ? { compressionLevel: level } : {}),
          delta: opts.delta !== false,
          ...(scrub !== undefined ? { scrubBytes: scrub } : {}),
          private: { input: opts.file ? { file: opts.file } : { stdin: true } },
          routes: opts.route,
          chunker,
          pool,
          pipeline,
          progress: (bytes, newBytes) => {
            stored = newBytes;
            meter.update(input instanceof FileInput ? bytes : read, { newBytes });
          },
        });
        ok = true;
        meter.finish(true);
        const h = res.header;
        repo.catalogue.ops.finishJob(job, { result: 'ok', snapshot: res.id, newBytes: h.newBytes });
        if (opts.json) {
          printJson({ id: res.id, source: h.source, tenant: h.tenant, logicalBytes: h.logicalBytes, newBytes: h.newBytes, chunks: h.chunkCount, newChunks: h.newChunks, seconds: Number(res.seconds.toFixed(3)), ...(res.damage ? { damage: res.damage } : {}) });
        } else {
          process.stdout.write(`${res.id}\n`);
          process.stderr.write(
            `snapshot ${res.id.slice(0, 12)} of ${h.source}: ${formatBytes(h.logicalBytes)} in ${h.chunkCount} chunks, ${h.newChunks} new (${formatBytes(h.newBytes)} stored), ${res.seconds.toFixed(2)} s\n`,
          );
        }
      } catch (e) {
        // the failure is recorded for kura status / top; no snapshot was written
        const err = e as { code?: string; message?: string };
        repo.catalogue.ops.finishJob(job, { result: 'failed', errorCode: err.code ?? 'E_INTERNAL', error: err.message ?? String(e) });
        throw e;
      } finally {
        if (!ok) meter.finish(false);
        await pool.close(); // normally closed by backup(); this covers a failure before it started
        await pipeline.close();
        repo.close();
      }
    });
}
