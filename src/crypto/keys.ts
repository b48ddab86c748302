import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, scryptSync } from 'node:crypto';
import { KuraError } from '../errors.js';
import { scryptAsync, scryptOptions, takeAhead, type ScryptParams } from './kdf-ahead.js';

export type { ScryptParams };

/**
 * Key hierarchy (docs/format.md): a random 64-byte master key, wrapped in one or more key
 * slots (scrypt(passphrase) → AES-256-GCM) or kept in a key file. Everything the repository
 * uses is derived from it with HKDF-SHA256, salted with the repository ID:
 *   id key    keyed BLAKE3 chunk IDs (the store reveals equality of chunks, nothing else)
 *   data key  AES-256-GCM of chunk blobs and of snapshots' private parts
 *   gear seed the chunker's gear table, so boundaries are secret per repository
 */
export const MASTER_KEY_BYTES = 64;

export interface RepoKeys {
  idKey: Buffer;
  dataKey: Buffer;
  gearSeed: Buffer;
}

export function deriveKeys(master: Buffer, repositoryId: string): RepoKeys {
  const derive = (info: string) => Buffer.from(hkdfSync('sha256', master, Buffer.from(repositoryId, 'utf8'), `kura v1 ${info}`, 32));
  return { idKey: derive('chunk id key'), dataKey: derive('data key'), gearSeed: derive('gear seed') };
}

/** A key slot as stored under keys/<id> in the repository. */
export interface KeySlot {
  version: 1;
  id: string;
  kind: 'passphrase';
  created: string;
  label?: string;
  kdf: ScryptParams;
  nonce: string; // base64
  wrapped: string; // base64, ciphertext || tag
}

/** A key file outside the repository: the raw master key, or a copy of a passphrase slot. */
export interface KeyFile {
  version: 1;
  kind: 'kura-key';
  repository: string;
  master?: string; // base64 raw master key
  slot?: KeySlot;
}

// ~0.1 s and 32 MiB on a current core: slow enough against guessing, quick enough for cron jobs.
const DEFAULT_SCRYPT = { N: 1 << 15, r: 8, p: 1 };

function slotAad(repositoryId: string, slotId: string): Buffer {
  return Buffer.from(`kura key slot v1:${repositoryId}:${slotId}`, 'utf8');
}

function kek(passphrase: string, kdf: ScryptParams): Buffer {
  return scryptSync(passphrase.normalize('NFC'), Buffer.from(kdf.salt, 'base64'), 32, scryptOptions(kdf));
}

/** The derivation bin/kura started ahead for this passphrase and slot, or a new one (both off the main thread). */
function kekAsync(passphrase: string, kdf: ScryptParams): Promise<Buffer> {
  return takeAhead(passphrase, kdf) ?? scryptAsync(passphrase, kdf);
}

export function newMasterKey(): Buffer {
  return randomBytes(MASTER_KEY_BYTES);
}

export function wrapMasterKey(master: Buffer, passphrase: string, repositoryId: string, label?: string, scrypt = DEFAULT_SCRYPT): KeySlot {
  const id = randomBytes(4).toString('hex');
  const kdf: ScryptParams = { name: 'scrypt', ...scrypt, salt: randomBytes(16).toString('base64') };
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', kek(passphrase, kdf), nonce);
  c.setAAD(slotAad(repositoryId, id));
  const wrapped = Buffer.concat([c.update(master), c.final(), c.getAuthTag()]);
  const slot: KeySlot = { version: 1, id, kind: 'passphrase', created: new Date().toISOString(), kdf, nonce: nonce.toString('base64'), wrapped: wrapped.toString('base64') };
  if (label) slot.label = label;
  return slot;
}

/** Returns the master key, or null when the passphrase does not open this slot. */
export async function unwrapMasterKey(slot: KeySlot, passphrase: string, repositoryId: string): Promise<Buffer | null> {
  const wrapped = Buffer.from(slot.wrapped, 'base64');
  if (wrapped.length !== MASTER_KEY_BYTES + 16) return null;
  const d = createDecipheriv('aes-256-gcm', await kekAsync(passphrase, slot.kdf), Buffer.from(slot.nonce, 'base64'));
  d.setAAD(slotAad(repositoryId, slot.id));
  d.setAuthTag(wrapped.subarray(MASTER_KEY_BYTES));
  try {
    return Buffer.concat([d.update(wrapped.subarray(0, MASTER_KEY_BYTES)), d.final()]);
  } catch {
    return null;
  }
}

export function parseKeySlot(text: string, where: string): KeySlot {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new KuraError('E_REPO_FORMAT', `${where} is not a valid key slot (not JSON); restore it from a backup copy or use another slot`);
  }
  const s = v as Partial<KeySlot>;
  if (s.version !== 1 || s.kind !== 'passphrase' || !s.kdf || s.kdf.name !== 'scrypt' || typeof s.wrapped !== 'string' || typeof s.nonce !== 'string' || typeof s.id !== 'string') {
    throw new KuraError('E_REPO_FORMAT', `${where} is not a valid version 1 key slot; restore it from a backup copy or use another slot`);
  }
  return s as KeySlot;
}

export function parseKeyFile(text: string, path: string): KeyFile {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new KuraError('E_KEY_FILE', `key file ${path} is not valid JSON; give the file written by "kura key export" or "kura repo init --key-file"`);
  }
  const k = v as Partial<KeyFile>;
  if (k.version !== 1 || k.kind !== 'kura-key' || typeof k.repository !== 'string' || (typeof k.master !== 'string' && !k.slot)) {
    throw new KuraError('E_KEY_FILE', `${path} is not a kura key file; give the file written by "kura key export" or "kura repo init --key-file"`);
  }
  if (k.master !== undefined && Buffer.from(k.master, 'base64').length !== MASTER_KEY_BYTES) {
    throw new KuraError('E_KEY_FILE', `key file ${path} holds a damaged key (wrong length); use another copy of the key file`);
  }
  return k as KeyFile;
}
