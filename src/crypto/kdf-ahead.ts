import { scrypt, type ScryptOptions } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

/*
 * A passphrase slot's key derivation, started before the command's modules are loaded.
 *
 * scrypt takes ~0.15 s here and loading kura's modules ~0.2 s. `kura restore --repo DIR` used to
 * do them one after the other: the derivation could begin only once the code that opens the
 * repository was loaded. bin/kura calls `deriveAhead` first, with a few file reads and no
 * dependencies: when the command line names a repository directory (`--repo`) and a passphrase
 * (KURA_PASSPHRASE or `--passphrase-file`), the derivation for the slot the unlock tries first
 * runs in the thread pool while the modules load. `unwrapMasterKey` takes it (`takeAhead`)
 * when it is for the same passphrase and slot parameters, and derives afresh otherwise. A guess
 * that does not match (another slot, a key file given too) costs one derivation in the thread
 * pool, nothing else: nothing here decides whether a key opens the repository.
 */

/** A key slot's scrypt parameters, as stored in keys/<id>. */
export interface ScryptParams {
  name: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string; // base64
}

/**
 * Derivations started ahead, process-wide: bin/kura starts one before it loads the bundle
 * (dist/kura.cjs), whose own copy of this module takes it.
 */
const ahead: Map<string, Promise<Buffer>> = ((globalThis as Record<symbol, unknown>)[Symbol.for('kura.kdf-ahead')] ??= new Map()) as Map<string, Promise<Buffer>>;

const aheadKey = (passphrase: string, kdf: ScryptParams) => JSON.stringify([passphrase.normalize('NFC'), kdf.salt, kdf.N, kdf.r, kdf.p]);

export function scryptOptions(kdf: ScryptParams): ScryptOptions {
  return { N: kdf.N, r: kdf.r, p: kdf.p, maxmem: 256 * kdf.N * kdf.r + (1 << 20) };
}

/** scrypt off the main thread (libuv's pool): a backup's workers start while the key is being derived. */
export function scryptAsync(passphrase: string, kdf: ScryptParams): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scrypt(passphrase.normalize('NFC'), Buffer.from(kdf.salt, 'base64'), 32, scryptOptions(kdf), (err, key) => (err ? reject(err) : resolve(key))),
  );
}

/** The value of `--name VALUE` or `--name=VALUE` on a command line (the last one given). */
function optionValue(argv: readonly string[], name: string): string | undefined {
  let value: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a === name && i + 1 < argv.length) value = argv[++i];
    else if (a.startsWith(`${name}=`)) value = a.slice(name.length + 1);
  }
  return value;
}

/** Starts the derivation for the first passphrase slot of the repository the command line names; whether it did. */
export function deriveAhead(argv: readonly string[], env: NodeJS.ProcessEnv): boolean {
  try {
    const repo = optionValue(argv, '--repo');
    if (!repo || optionValue(argv, '--key-file') !== undefined || env.KURA_KEY_FILE || optionValue(argv, '--vault-tenant') !== undefined) return false;
    const passFile = optionValue(argv, '--passphrase-file');
    // a regular file only: a pipe (a FIFO, /dev/stdin) gives its passphrase once, to the command
    if (passFile !== undefined && !statSync(passFile).isFile()) return false;
    const passphrase = passFile !== undefined ? readFileSync(passFile, 'utf8').replace(/\r?\n$/, '') : env.KURA_PASSPHRASE;
    if (!passphrase) return false;
    const dir = path.join(repo, 'keys');
    // the slot the unlock tries first: the oldest (repository.ts, loadSlots)
    let first: { created: string; kdf: ScryptParams } | undefined;
    for (const name of readdirSync(dir)) {
      const s = JSON.parse(readFileSync(path.join(dir, name), 'utf8')) as { kind?: string; created?: unknown; kdf?: Partial<ScryptParams> };
      const kdf = s.kdf;
      if (s.kind !== 'passphrase' || typeof s.created !== 'string' || kdf?.name !== 'scrypt' || typeof kdf.salt !== 'string') continue;
      if (![kdf.N, kdf.r, kdf.p].every((v) => Number.isSafeInteger(v) && v! > 0)) continue;
      if (!first || s.created.localeCompare(first.created) < 0) first = { created: s.created, kdf: kdf as ScryptParams };
    }
    if (!first) return false;
    const derivation = scryptAsync(passphrase, first.kdf);
    derivation.catch(() => {}); // the unlock derives again and reports what is wrong
    ahead.set(aheadKey(passphrase, first.kdf), derivation);
    return true;
  } catch {
    return false; // the command reads the same files itself and says what is wrong with them
  }
}

/** The derivation started ahead for exactly this passphrase and these parameters, once. */
export function takeAhead(passphrase: string, kdf: ScryptParams): Promise<Buffer> | undefined {
  const k = aheadKey(passphrase, kdf);
  const derivation = ahead.get(k);
  ahead.delete(k);
  return derivation;
}
