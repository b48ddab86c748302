import type { Writable } from 'node:stream';
import type { Command } from 'commander';
import type { Progress, RestoreResult } from '../restorer/restore.js';
import { meterFor, type ProgressFlags } from './progress.js';
import { KuraError } from '../errors.js';
import { configOf, formatBytes, keySourceOf, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';
import { keysFromKeyFile } from '../repository/repository.js';

export function registerRestore(program: Command): void {
  withRepoOptions(program.command('restore'))
    .description('restore a snapshot (ID, unique ID prefix, or latest:SOURCE) to a file or stdout; every chunk is verified')
    .argument('<snapshot>', 'snapshot ID, unique prefix, or latest:SOURCE')
    .option('--to <path>', 'output file, or - for standard output', '-')
    .option('--from <route>', 'restore from the vault of this route (over SSH) instead of the local repository')
    .option('--tenant <tenant>', 'tenant on the vault (default: the config\'s tenant)')
    .option('--identity <file>', 'SSH private key for the vault (default: the route\'s clientKey); needs the restore role')
    .option('--into <target>', 'rebuild a database instead: postgresql://user@host:port/db, mariadb://user@host:port/db or sqlite:PATH (password: in the URI or --password-file; never shown)')
    .option('--force', 'with --into: replace the contents of a target that is not empty')
    .option('--password-file <file>', 'with --into: the database password')
    .option('--json', 'print a JSON summary line (on stderr when restoring to stdout)')
    .option('--progress', 'show progress even when standard error is no terminal (with --json: JSON lines on standard error)')
    .option('--no-progress', 'no progress line on a terminal')
    .action(async (ref: string, opts: RepoOptions & IntoFlags & { to: string; from?: string; tenant?: string; identity?: string }, cmd: Command) => {
      if (opts.into) return restoreIntoDb(ref, opts as RepoOptions & IntoFlags & { into: string; from?: string; tenant?: string; identity?: string }, cmd);
      if (opts.to === '-' && process.stdout.isTTY) throw new KuraError('E_USAGE', 'refusing to write a restore to a terminal; use --to PATH or pipe the output');
      if (opts.from) return restoreFromVault(ref, opts as RepoOptions & { to: string; from: string; tenant?: string; identity?: string }, cmd);
      const repo = await openRepo(cmd, opts, 'required');
      try {
        const { restoreTo, restoreToFile } = await import('../restorer/restore.js');
        const id = repo.resolveSnapshot(ref);
        const res = await metered(opts, id, (progress) => (opts.to === '-' ? restoreTo(repo, id, process.stdout, progress) : restoreToFile(opts.to, (out) => restoreTo(repo, id, out, progress))));
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

/** Run a restore under a progress meter (a terminal line, or JSON lines with --json --progress). */
async function metered<T>(flags: ProgressFlags, id: string, run: (progress: Progress) => Promise<T>): Promise<T> {
  const meter = meterFor(flags, 'restore', id.slice(0, 12));
  let ok = false;
  try {
    const r = await run((bytes, total) => meter.update(bytes, undefined, total));
    ok = true;
    return r;
  } finally {
    meter.finish(ok);
  }
}

interface IntoFlags {
  into?: string;
  force?: boolean;
  passwordFile?: string;
  json?: boolean;
}

type RunRestore = (out: Writable) => Promise<RestoreResult>;
type RouteOptions = RepoOptions & { from: string; tenant?: string; identity?: string };

/**
 * Over SSH from a route's vault, decrypting with the local repository's key or a key file:
 * `use` gets the snapshot's ID and a function that streams it, verified, into a writable.
 * SIGTERM or SIGINT cuts the line whatever it does (a black hole never answers): the restore
 * fails with E_INTERRUPTED and a file target's partial output is removed.
 */
async function fromVault<T>(ref: string, opts: RouteOptions, cmd: Command, use: (run: RunRestore) => Promise<T>): Promise<T> {
  const stop = new AbortController();
  const stopOn = (sig: NodeJS.Signals) => () => stop.abort(new KuraError('E_INTERRUPTED', `the restore was stopped by ${sig} before it finished; nothing of it was kept, run it again`));
  const onTerm = stopOn('SIGTERM');
  const onInt = stopOn('SIGINT');
  process.once('SIGTERM', onTerm);
  process.once('SIGINT', onInt);
  try {
    const { restoreStream } = await import('../restorer/restore.js');
    const { holdHeapGrowth } = await import('../heap-growth.js');
    const { VAULT_READING, remoteBlobs, remoteList, remoteSnapshotBytes, resolveRemote, withRoute } = await import('../restorer/remote.js');
    const { decodeSnapshot } = await import('../repository/snapshot.js');
    const keys = await keysFor(cmd, opts);
    return await withRoute(configOf(cmd).config, { ...opts, signal: stop.signal }, async (conn) => {
      const id = resolveRemote(await remoteList(conn), ref);
      const snap = decodeSnapshot(await remoteSnapshotBytes(conn, id), id);
      // segments read ahead: heaps held as for a restore from an object store (heap-growth.ts)
      const release = holdHeapGrowth();
      try {
        return await metered(opts as ProgressFlags, id, (progress) => use((out) => restoreStream(snap, keys, remoteBlobs(conn), out, progress, VAULT_READING)));
      } finally {
        release();
      }
    });
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
  }
}

/** --into: the snapshot, local or from a vault, streamed into a database client. */
async function restoreIntoDb(ref: string, opts: RepoOptions & IntoFlags & { into: string; from?: string; tenant?: string; identity?: string }, cmd: Command): Promise<void> {
  const { restoreInto } = await import('../restorer/into.js');
  const into = (run: RunRestore) => restoreInto(opts.into, { force: Boolean(opts.force), passwordFile: opts.passwordFile }, run);
  let out: Awaited<ReturnType<typeof restoreInto>>;
  if (opts.from) out = await fromVault(ref, opts as RouteOptions, cmd, into);
  else {
    const { restoreTo } = await import('../restorer/restore.js');
    const repo = await openRepo(cmd, opts, 'required');
    try {
      const id = repo.resolveSnapshot(ref);
      out = await metered(opts as ProgressFlags, id, (progress) => into((w) => restoreTo(repo, id, w, progress)));
    } finally {
      repo.close();
    }
  }
  const r = out.result;
  if (opts.json) printJson({ ok: true, id: r.id, bytes: r.bytes, chunks: r.chunks, seconds: Number(r.seconds.toFixed(3)), into: out.target, commands: out.commands });
  else {
    for (const c of out.commands) process.stdout.write(`ran: ${c}\n`);
    process.stdout.write(`restored ${r.id.slice(0, 12)} into ${out.target}: ${formatBytes(r.bytes)} in ${r.chunks} chunks, verified, ${r.seconds.toFixed(2)} s\n`);
  }
}

/** Restore from a route's vault to a file or standard output. */
async function restoreFromVault(ref: string, opts: RouteOptions & { to: string; json?: boolean }, cmd: Command): Promise<void> {
  const { restoreToFile } = await import('../restorer/restore.js');
  const res = await fromVault(ref, opts, cmd, (run) => (opts.to === '-' ? run(process.stdout) : restoreToFile(opts.to, run)));
  const summary = { id: res.id, bytes: res.bytes, chunks: res.chunks, seconds: Number(res.seconds.toFixed(3)), to: opts.to, from: opts.from };
  if (opts.json && opts.to !== '-') printJson(summary);
  else process.stderr.write(opts.json ? JSON.stringify(summary) + '\n' : `restored ${res.id.slice(0, 12)} from ${opts.from}: ${formatBytes(res.bytes)} in ${res.chunks} chunks, verified, ${res.seconds.toFixed(2)} s\n`);
}

/** The key: from --key-file alone when given (the local repository may be gone), else the local repository's. */
async function keysFor(cmd: Command, opts: RepoOptions) {
  const source = keySourceOf(cmd, opts);
  if (source.keyFile) return (await keysFromKeyFile(source.keyFile, source.passphrase)).keys;
  const repo = await openRepo(cmd, opts, 'required');
  try {
    return repo.keys;
  } finally {
    repo.close();
  }
}
