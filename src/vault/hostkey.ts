import { createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/**
 * The vault's SSH host key as OpenSSH writes it ("openssh-key-v1", unencrypted ed25519).
 *
 * Encoded here rather than by ssh2's generateKeyPairSync, which drops a leading zero byte of the
 * public key (about one key in 256) and so writes a file that neither ssh2 nor OpenSSH can read.
 */
export function encodeEd25519OpenSsh(seed: Buffer, pub: Buffer, comment = 'kura-vault'): string {
  if (seed.length !== 32 || pub.length !== 32) throw new Error('an ed25519 key is 32 bytes of seed and 32 of public key');
  const str = (b: Buffer | string): Buffer => {
    const body = typeof b === 'string' ? Buffer.from(b) : b;
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    return Buffer.concat([len, body]);
  };
  const u32 = (n: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n >>> 0);
    return b;
  };
  const publicBlob = Buffer.concat([str('ssh-ed25519'), str(pub)]);
  const check = randomBytes(4).readUInt32BE(0);
  let priv = Buffer.concat([u32(check), u32(check), publicBlob, str(Buffer.concat([seed, pub])), str(comment)]);
  const pad = (8 - (priv.length % 8)) % 8;
  priv = Buffer.concat([priv, Buffer.from(Array.from({ length: pad }, (_, i) => i + 1))]);
  const body = Buffer.concat([Buffer.from('openssh-key-v1\0'), str('none'), str('none'), str(''), u32(1), str(publicBlob), str(priv)]);
  const lines = body.toString('base64').match(/.{1,70}/g)!;
  return `-----BEGIN OPENSSH PRIVATE KEY-----\n${lines.join('\n')}\n-----END OPENSSH PRIVATE KEY-----\n`;
}

const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');

/**
 * The ed25519 key pair of a 32-byte seed. (Made from random bytes rather than with
 * generateKeyPairSync, whose job object has been seen to deadlock Node 20 in a garbage
 * collection when many keys are made in a row.)
 */
export function ed25519FromSeed(seed: Buffer): { seed: Buffer; pub: Buffer } {
  const priv = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: 'der', type: 'pkcs8' });
  const jwk = createPublicKey(priv).export({ format: 'jwk' });
  return { seed, pub: Buffer.from(jwk.x!, 'base64url') };
}

export function generateHostKey(): string {
  const { seed, pub } = ed25519FromSeed(randomBytes(32));
  return encodeEd25519OpenSsh(seed, pub);
}

/** The host key: kept across restarts (clients pin it); made on first start. */
export function loadOrCreateHostKey(file: string): Buffer {
  if (!existsSync(file)) {
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, generateHostKey(), { mode: 0o600, flag: 'wx' });
  }
  return readFileSync(file);
}
