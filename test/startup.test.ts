import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, kuraJson, tempDir } from './support/cli.js';

/** `kura --version --json` of the checkout at `root` (bin/kura there), with its exit status. */
function versionOf(root: string, env: Record<string, string> = {}): { code: string; executable: string } {
  const r = spawnSync(process.execPath, [path.join(root, 'bin', 'kura'), '--version', '--json'], { encoding: 'utf8', env: { ...process.env, ...env } });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { code: string; executable: string };
}

/** A checkout of its own: bin/ and the built dist/src and bundle copied with their times, the libraries and addons linked. */
function copyCheckout(dir: string): string {
  const root = path.join(dir, 'checkout');
  mkdirSync(path.join(root, 'dist'), { recursive: true });
  cpSync(path.join(ROOT, 'bin'), path.join(root, 'bin'), { recursive: true, preserveTimestamps: true });
  cpSync(path.join(ROOT, 'package.json'), path.join(root, 'package.json'), { preserveTimestamps: true });
  cpSync(path.join(ROOT, 'dist', 'src'), path.join(root, 'dist', 'src'), { recursive: true, preserveTimestamps: true });
  for (const f of ['kura.cjs', 'kura.cjs.cache', 'kura.json']) cpSync(path.join(ROOT, 'dist', f), path.join(root, 'dist', f), { preserveTimestamps: true });
  symlinkSync(path.join(ROOT, 'node_modules'), path.join(root, 'node_modules'));
  symlinkSync(path.join(ROOT, 'build'), path.join(root, 'build'));
  return root;
}

test('bin/kura runs the bundle of the build, and the modules themselves once a file it was made from changed', (t) => {
  // npm run build made it (npm test builds first): the checkout under test starts from it
  assert.equal(versionOf(ROOT).code, 'bundle');
  assert.equal(versionOf(ROOT, { KURA_BUNDLE: '0' }).code, 'modules');

  const root = copyCheckout(tempDir(t));
  assert.equal(versionOf(root).code, 'bundle', 'a copy that kept the files and their times still uses it');

  // a module compiled again after the bundle (tsc on its own, an editor's watch): the modules run
  const mod = path.join(root, 'dist', 'src', 'repository', 'pack.js');
  const later = new Date(Date.now() + 5000);
  utimesSync(mod, later, later);
  assert.equal(versionOf(root).code, 'modules');
  // a library installed again likewise (its package.json is what the bundle records)
  const made = JSON.parse(readFileSync(path.join(root, 'dist', 'kura.json'), 'utf8')) as { files: Array<[string, number, number]> };
  assert.ok(made.files.some(([f]) => f === '../node_modules/zod/package.json'), 'zod is bundled and recorded');
  assert.ok(made.files.every(([f]) => !f.includes('node_modules/better-sqlite3/')), 'a library that loads an addon by path stays outside');
});

test('bin/kura writes the code cache when it has none or V8 refuses it, and runs either way', (t) => {
  const root = copyCheckout(tempDir(t));
  const cache = path.join(root, 'dist', 'kura.cjs.cache');
  rmSync(cache);
  assert.equal(versionOf(root).code, 'bundle');
  assert.ok(existsSync(cache), 'written at exit');
  writeFileSync(cache, Buffer.from('not a code cache'));
  assert.equal(versionOf(root).code, 'bundle');
  assert.notEqual(readFileSync(cache, 'utf8'), 'not a code cache', 'a refused cache is replaced');
  assert.equal(versionOf(root).code, 'bundle');
});

test('the bundle loads what it keeps outside only when a command needs it, through bin/kura', (t) => {
  // a command that opens a repository (SQLite, zstd, BLAKE3 outside the bundle) works from it
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  const input = path.join(dir, 'in.txt');
  writeFileSync(input, 'kura\n'.repeat(1000));
  kuraJson(['repo', 'init', '--repo', repo]);
  const snap = kuraJson<{ id: string }>(['backup', '--repo', repo, '--name', 'in', '--file', input]);
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'kura'), 'restore', '--repo', repo, snap.id], { env: { ...process.env, KURA_PASSPHRASE: 'correct horse' } });
  assert.equal(r.status, 0, r.stderr.toString());
  assert.equal(r.stdout.toString(), 'kura\n'.repeat(1000));
  const bundle = readFileSync(path.join(ROOT, 'dist', 'kura.cjs'), 'utf8');
  // no module of kura's is left for Node to load beside the bundle (a second copy, with registries
  // of its own: the modules registered in one and looked up in the other)
  assert.doesNotMatch(bundle, /\brequire\("\.\.?\//);
  assert.doesNotMatch(bundle, /\bimport\("/);
  // and it holds no SAML library: that is loaded when a SAML login is handled
  assert.ok(!bundle.includes('xml-crypto'), 'xml-crypto is not in the bundle');
});
