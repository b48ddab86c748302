import { promises as fsp } from 'node:fs';
import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { wrapMasterKey, type KeyFile } from '../crypto/keys.js';
import { keySourceOf, openRepo, printJson, withRepoOptions, type RepoOptions } from './context.js';

async function newPassphrase(file: string | undefined): Promise<string> {
  if (file) return (await fsp.readFile(file, 'utf8').catch((e: Error) => Promise.reject(new KuraError('E_KEY_MISSING', `cannot read ${file}: ${e.message}`)))).replace(/\r?\n$/, '');
  const p = process.env.KURA_NEW_PASSPHRASE;
  if (!p) throw new KuraError('E_KEY_MISSING', 'give the new passphrase with --new-passphrase-file FILE or KURA_NEW_PASSPHRASE');
  return p;
}

export function registerKey(program: Command): void {
  const key = program.command('key').description('manage the repository key slots');

  withRepoOptions(key.command('list'))
    .description('list key slots (no secrets are shown)')
    .option('--json', 'print a JSON array')
    .action(async (opts: RepoOptions, cmd: Command) => {
      const repo = await openRepo(cmd, opts, 'none');
      try {
        const slots = (await repo.keySlots()).map((s) => ({ id: s.id, kind: s.kind, label: s.label ?? null, created: s.created, kdf: `${s.kdf.name} N=${s.kdf.N} r=${s.kdf.r} p=${s.kdf.p}` }));
        if (opts.json) printJson(slots);
        else for (const s of slots) process.stdout.write(`${s.id}  ${s.kind}  ${s.created}  ${s.label ?? ''}  ${s.kdf}\n`);
      } finally {
        repo.close();
      }
    });

  withRepoOptions(key.command('add'))
    .description('add a passphrase key slot (unlock with an existing passphrase or key file)')
    .option('--new-passphrase-file <file>', 'file holding the new passphrase (or set KURA_NEW_PASSPHRASE)')
    .option('--label <label>', 'note stored with the slot, e.g. who holds it')
    .option('--json', 'print the new slot as one JSON line')
    .action(async (opts: RepoOptions & { newPassphraseFile?: string; label?: string }, cmd: Command) => {
      const pass = await newPassphrase(opts.newPassphraseFile);
      const repo = await openRepo(cmd, opts, 'required');
      try {
        const slot = await repo.addKeySlot(pass, opts.label);
        if (opts.json) printJson({ id: slot.id, label: slot.label ?? null, created: slot.created });
        else process.stdout.write(`added key slot ${slot.id}\n`);
      } finally {
        repo.close();
      }
    });

  withRepoOptions(key.command('export'))
    .description('write the key to a file, to keep off-site: without it, data in a vault cannot be restored')
    .requiredOption('--to <file>', 'key file to create (must not exist)')
    .option('--raw', 'store the master key unprotected (guard the file!) instead of under the current passphrase')
    .action(async (opts: RepoOptions & { to: string; raw?: boolean }, cmd: Command) => {
      const repo = await openRepo(cmd, opts, 'required');
      try {
        const master = repo.masterForExport;
        const kf: KeyFile = { version: 1, kind: 'kura-key', repository: repo.config.id };
        if (opts.raw) kf.master = master.toString('base64');
        else {
          const pass = keySourceOf(cmd, opts).passphrase;
          if (!pass) throw new KuraError('E_KEY_MISSING', 'a protected export uses the current passphrase: set KURA_PASSPHRASE / --passphrase-file, or use --raw');
          kf.slot = wrapMasterKey(master, pass, repo.config.id, 'export');
        }
        try {
          await fsp.writeFile(opts.to, JSON.stringify(kf, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
        } catch (e) {
          throw new KuraError('E_KEY_FILE', `cannot create ${opts.to}: ${(e as Error).message} (it must not exist yet)`);
        }
        process.stdout.write(`key of repository ${repo.config.id} exported to ${opts.to}${opts.raw ? ' (unprotected)' : ' (protected by the current passphrase)'}\n`);
      } finally {
        repo.close();
      }
    });
}
