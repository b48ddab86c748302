import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { ed25519FromSeed, encodeEd25519OpenSsh } from '../src/vault/hostkey.js';
import { fingerprint } from '../src/vault/access.js';
import { tempDir } from './support/cli.js';
import { startVault } from './support/vault.js';

const ssh2 = createRequire(import.meta.url)('ssh2') as typeof import('ssh2');

/** The public key line OpenSSH derives from a private key file. */
function opensshPublic(file: string): string {
  return execFileSync('ssh-keygen', ['-y', '-f', file], { encoding: 'utf8' }).trim().split(' ').slice(0, 2).join(' ');
}

test('host keys are written so that ssh2 and OpenSSH read them, also when the public key starts with a zero byte', (t) => {
  const dir = tempDir(t);
  // ssh2's own generator drops a leading zero byte (one key in 256): find such keys on purpose,
  // from fixed seeds so the test is the same every time
  const pairs: Array<ReturnType<typeof ed25519FromSeed>> = [];
  for (let i = 0; i < 20_000 && pairs.filter((p) => p.pub[0] === 0).length < 2; i++) {
    const seed = Buffer.alloc(32);
    seed.writeUInt32BE(i, 28);
    const p = ed25519FromSeed(seed);
    if (p.pub[0] === 0 || pairs.length < 3) pairs.push(p);
  }
  assert.ok(pairs.filter((p) => p.pub[0] === 0).length >= 2, 'found keys whose public key starts with 0x00');
  for (const [i, { seed, pub }] of pairs.entries()) {
    const pem = encodeEd25519OpenSsh(seed, pub);
    const parsed = ssh2.utils.parseKey(pem);
    assert.ok(!(parsed instanceof Error), `ssh2 reads key ${i}: ${String(parsed)}`);
    const key = Array.isArray(parsed) ? parsed[0] : parsed;
    const expected = `ssh-ed25519 ${Buffer.concat([Buffer.from([0, 0, 0, 11]), Buffer.from('ssh-ed25519'), Buffer.from([0, 0, 0, 32]), pub]).toString('base64')}`;
    assert.equal(`ssh-ed25519 ${key.getPublicSSH().toString('base64')}`, expected);
    // the private half works: a signature verifies with the public half
    const sig = key.sign(Buffer.from('kura'));
    assert.ok(key.verify(Buffer.from('kura'), sig as Buffer));
    const file = path.join(dir, `key${i}`);
    writeFileSync(file, pem, { mode: 0o600 });
    assert.equal(opensshPublic(file), expected, `OpenSSH derives the same public key from key ${i}`);
  }
});

test('vault serve makes a host key on first start, keeps it on restart, and its fingerprint is what ssh-keygen prints', async (t) => {
  const dir = tempDir(t);
  const first = await startVault(dir, `    city-a:\n      clients: []\n`);
  await first.stop();
  const second = await startVault(dir, `    city-a:\n      clients: []\n`);
  await second.stop();
  assert.equal(second.hostKeySha256, first.hostKeySha256, 'the same key after a restart');
  const listed = execFileSync('ssh-keygen', ['-l', '-f', path.join(first.root, 'host_key')], { encoding: 'utf8' });
  assert.equal(listed.split(' ')[1], first.hostKeySha256);
  const pub = execFileSync('ssh-keygen', ['-y', '-f', path.join(first.root, 'host_key')], { encoding: 'utf8' }).trim().split(' ')[1]!;
  assert.equal(fingerprint(Buffer.from(pub, 'base64')), first.hostKeySha256);
});
