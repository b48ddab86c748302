import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { scryptSync } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { kuraOk, tempDir } from './support/cli.js';
import { deriveAhead, takeAhead } from '../src/crypto/kdf-ahead.js';
import { unwrapMasterKey, type KeySlot } from '../src/crypto/keys.js';

const PASS = 'correct horse';

function slotsOf(repo: string): KeySlot[] {
  const dir = path.join(repo, 'keys');
  return readdirSync(dir)
    .map((n) => JSON.parse(readFileSync(path.join(dir, n), 'utf8')) as KeySlot)
    .sort((a, b) => a.created.localeCompare(b.created));
}

test('deriveAhead: the first slot of the repository on the command line, taken once, for the same passphrase only', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraOk(['repo', 'init', '--repo', repo]);
  const pf = path.join(dir, 'second.pass');
  writeFileSync(pf, 'second passphrase\n');
  kuraOk(['key', 'add', '--repo', repo, '--new-passphrase-file', pf]);
  const [first, second] = slotsOf(repo);
  assert.ok(first && second);
  const repositoryId = (JSON.parse(readFileSync(path.join(repo, 'config'), 'utf8')) as { id: string }).id;

  // the oldest slot, as the unlock tries it first; the same key scrypt gives
  assert.equal(deriveAhead(['restore', '--repo', repo, 'latest'], { KURA_PASSPHRASE: PASS }), true);
  assert.equal(takeAhead(PASS, second.kdf), undefined);
  const ahead = takeAhead(PASS, first.kdf);
  assert.ok(ahead);
  const want = scryptSync(PASS, Buffer.from(first.kdf.salt, 'base64'), 32, { N: first.kdf.N, r: first.kdf.r, p: first.kdf.p, maxmem: 64 << 20 });
  assert.ok((await ahead).equals(want));
  assert.equal(takeAhead(PASS, first.kdf), undefined, 'a derivation is taken once');

  // the unlock takes it: nothing is left after the slot opened
  assert.equal(deriveAhead([`--repo=${repo}`, 'restore', 'latest'], { KURA_PASSPHRASE: PASS }), true);
  assert.ok(await unwrapMasterKey(first, PASS, repositoryId));
  assert.equal(takeAhead(PASS, first.kdf), undefined);

  // a derivation for another passphrase is never used for this one: the right one still opens
  assert.equal(deriveAhead(['restore', '--repo', repo], { KURA_PASSPHRASE: 'wrong' }), true);
  assert.equal(takeAhead(PASS, first.kdf), undefined);
  assert.ok(await unwrapMasterKey(first, PASS, repositoryId));
  assert.equal(await unwrapMasterKey(first, 'wrong', repositoryId), null);

  // another copy of the module (the bundle's, beside the one bin/kura loaded) takes what this one
  // started, once
  const copy = (await import(`../src/crypto/kdf-ahead.js?copy=${Date.now()}`)) as typeof import('../src/crypto/kdf-ahead.js');
  assert.notEqual(copy.takeAhead, takeAhead, 'a second copy');
  assert.equal(deriveAhead(['restore', '--repo', repo], { KURA_PASSPHRASE: PASS }), true);
  const taken = copy.takeAhead(PASS, first.kdf);
  assert.ok(taken && (await taken).equals(want));
  assert.equal(takeAhead(PASS, first.kdf), undefined);

  // --passphrase-file wins over the environment, as on the command line
  assert.equal(deriveAhead(['restore', '--repo', repo, '--passphrase-file', pf], { KURA_PASSPHRASE: PASS }), true);
  assert.equal(takeAhead(PASS, first.kdf), undefined);
  assert.ok(takeAhead('second passphrase', first.kdf));

  // nothing is started without a repository directory, a passphrase, or with a key file
  assert.equal(deriveAhead(['restore', 'latest'], { KURA_PASSPHRASE: PASS }), false);
  assert.equal(deriveAhead(['restore', '--repo', repo], {}), false);
  assert.equal(deriveAhead(['restore', '--repo', repo, '--key-file', pf], { KURA_PASSPHRASE: PASS }), false);
  assert.equal(deriveAhead(['restore', '--repo', repo], { KURA_PASSPHRASE: PASS, KURA_KEY_FILE: pf }), false);
  assert.equal(deriveAhead(['restore', '--repo', path.join(dir, 'nothing')], { KURA_PASSPHRASE: PASS }), false);
  assert.equal(deriveAhead(['restore', '--', '--repo', repo], { KURA_PASSPHRASE: PASS }), false);
  assert.equal(deriveAhead(['restore', '--repo', repo, '--passphrase-file', path.join(dir, 'absent')], { KURA_PASSPHRASE: PASS }), false);
  // a pipe gives its passphrase once, and that is the command's: never read ahead (nor waited on)
  const fifo = path.join(dir, 'pass.fifo');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  assert.equal(deriveAhead(['restore', '--repo', repo, '--passphrase-file', fifo], { KURA_PASSPHRASE: PASS }), false);
});
