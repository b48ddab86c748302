import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, readdirSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
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
  for (const f of ['kura.cjs', 'kura.json']) cpSync(path.join(ROOT, 'dist', f), path.join(root, 'dist', f), { preserveTimestamps: true });
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

test('bin/kura writes the code cache of its bundle when it has none or V8 refuses it, and runs either way', (t) => {
  const root = copyCheckout(tempDir(t));
  const caches = () => readdirSync(path.join(root, 'dist')).filter((f) => /^kura\.cjs\..*\.cache$/.test(f));
  // the build's cache is named after the build's bundle: a copy of the bundle starts without one
  assert.deepEqual(caches(), []);
  assert.equal(versionOf(root).code, 'bundle');
  const [cache] = caches();
  assert.ok(cache, 'written at exit');
  writeFileSync(path.join(root, 'dist', cache), Buffer.from('not a code cache'));
  assert.equal(versionOf(root).code, 'bundle');
  assert.notEqual(readFileSync(path.join(root, 'dist', cache), 'utf8'), 'not a code cache', 'a refused cache is replaced');
  // V8 compares a cache with its source by length alone: the same bytes written again make
  // another bundle as far as the cache goes, so it gets a cache of its own
  const bundle = path.join(root, 'dist', 'kura.cjs');
  const later = new Date(Date.now() + 5000);
  utimesSync(bundle, later, later);
  assert.equal(versionOf(root).code, 'bundle');
  assert.equal(caches().length, 2);
  assert.ok(!caches().some((f) => f.includes('.tmp') || /\.\d+$/.test(f)), 'no temporary file is left');
});

test('kura runs with the thread pool size bin/kura sets, on both paths (it must be set before the first async I/O)', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  kuraJson(['repo', 'init', '--repo', repo]);
  // libuv starts all its pool threads at its first job (here the key derivation): a backup that
  // waits on standard input shows them. With Node's default of 4 the process has 13 threads.
  const { UV_THREADPOOL_SIZE: _fromTheRunner, ...env } = process.env;
  for (const bundle of ['1', '0']) {
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'kura'), 'backup', '--repo', repo, '--name', `stdin-${bundle}`, '--stdin'], {
      env: { ...env, KURA_PASSPHRASE: 'correct horse', KURA_BUNDLE: bundle },
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    let threads = 0;
    for (const end = Date.now() + 15_000; Date.now() < end && threads <= 16; await new Promise((r) => setTimeout(r, 100))) {
      try {
        threads = readdirSync(`/proc/${child.pid}/task`).length;
      } catch {
        break; // it exited: the assertion below says so
      }
    }
    child.stdin.end('rows\n');
    assert.equal(await exited, 0, `the backup (KURA_BUNDLE=${bundle}) failed`);
    assert.ok(threads > 16, `KURA_BUNDLE=${bundle}: ${threads} threads, so fewer than 16 in libuv's pool`);
  }
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
