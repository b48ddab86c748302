import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { ROOT, tempDir } from './support/cli.js';
import { exitOf } from './support/proc.js';
import { REPO_FORMAT } from '../src/repository/repository.js';
import { READABLE_FORMATS, SNAPSHOT_FORMAT } from '../src/repository/snapshot.js';
import { SCHEMA_VERSION } from '../src/repository/catalogue.js';
import { OLDEST_PROTOCOL, OLDEST_RELAY_PROTOCOL, PROTOCOL_VERSION } from '../src/protocol/frames.js';
import { checkoutCommit, checkoutLibraries, type VersionReport } from '../src/version.js';

/**
 * The single executable and the Debian package (npm run package). They are built here when
 * missing or older than what goes into them (~1 min on 2 cores), so the suite tests what the
 * checkout would ship.
 */
const VERSION = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const EXE = path.join(ROOT, 'build', 'package', 'kura');
const DEB = path.join(ROOT, 'build', 'package', `kura_${VERSION}_amd64.deb`);
const ADDONS = ['kura_native', 'better_sqlite3', 'zstd', 'blake', 'sshcrypto', 'cpufeatures'];
const IS_ROOT = process.getuid?.() === 0;

function newest(dir: string, filter: (f: string) => boolean): number {
  let t = 0;
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    const p = path.join(e.parentPath, e.name);
    if (e.isFile() && filter(p)) t = Math.max(t, statSync(p).mtimeMs);
  }
  return t;
}

/** The report of an executable, in a fresh HOME (so its cache is its own). */
function versionOf(exe: string, home: string): { r: SpawnSyncReturns<string>; report: VersionReport | null } {
  const r = spawnSync(exe, ['--version', '--json'], { encoding: 'utf8', env: { PATH: '/usr/bin:/bin', HOME: home } });
  let report: VersionReport | null = null;
  try {
    report = JSON.parse(r.stdout) as VersionReport;
  } catch {
    /* reported by the caller */
  }
  return { r, report };
}

before(() => {
  const inputs = Math.max(
    newest(path.join(ROOT, 'dist', 'src'), (f) => f.endsWith('.js')),
    newest(path.join(ROOT, 'systemd'), () => true),
    // a missing addon is left to the package step, which names it
    ...['scripts/package.mjs', 'scripts/deb.mjs', 'package-lock.json', 'build/Release/kura_native.node'].map((f) => statSync(path.join(ROOT, f), { throwIfNoEntry: false })?.mtimeMs ?? 0),
  );
  let fresh = existsSync(EXE) && existsSync(DEB) && Math.min(statSync(EXE).mtimeMs, statSync(DEB).mtimeMs) > inputs;
  if (fresh) {
    const home = mkdtempSync('/tmp/kura-pkg-home-');
    fresh = versionOf(EXE, home).report?.commit === checkoutCommit(ROOT).commit;
    rmSync(home, { recursive: true, force: true });
  }
  if (fresh) return;
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'package.mjs')], { cwd: ROOT, encoding: 'utf8', timeout: 15 * 60_000 });
  assert.equal(r.status, 0, `npm run package failed:\n${r.stderr}`);
  console.error(`# built the executable and the .deb in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
});

test('the package step refuses to build without a native addon prebuilt, and says which one and how to get it', (t) => {
  const dir = tempDir(t);
  // a checkout with everything but kura's own addon (never built there)
  mkdirSync(path.join(dir, 'scripts'));
  for (const f of ['package.mjs', 'deb.mjs']) copyFileSync(path.join(ROOT, 'scripts', f), path.join(dir, 'scripts', f));
  for (const f of ['node_modules', 'dist', 'systemd', 'package.json']) symlinkSync(path.join(ROOT, f), path.join(dir, f));
  const r = spawnSync(process.execPath, [path.join(dir, 'scripts', 'package.mjs')], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /missing prebuilt native addon/);
  assert.match(r.stderr, /kura_native: build\/Release\/kura_native\.node not found: run "npm run build"/);
  assert.doesNotMatch(r.stderr, /better_sqlite3/, 'only the missing one is named');
  assert.ok(!existsSync(path.join(dir, 'build', 'package', 'kura')), 'no executable without it');
});

test('kura --version --json from the executable tells its version, commit, the formats it reads and writes, and the Node and libraries inside', (t) => {
  const home = tempDir(t);
  const { r, report } = versionOf(EXE, home);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(report, r.stdout);
  assert.equal(report.kura, VERSION);
  assert.equal(report.executable, 'single');
  assert.equal(report.commit, checkoutCommit(ROOT).commit);
  assert.deepEqual(report.formats, {
    repository: { reads: [REPO_FORMAT], writes: REPO_FORMAT },
    snapshot: { reads: [...READABLE_FORMATS].sort(), writes: SNAPSHOT_FORMAT },
    catalogue: { reads: Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1), writes: SCHEMA_VERSION },
    keyFile: { reads: [1], writes: 1 },
    protocol: { vault: { oldest: OLDEST_PROTOCOL, newest: PROTOCOL_VERSION }, relay: { oldest: OLDEST_RELAY_PROTOCOL, newest: PROTOCOL_VERSION } },
  });
  // the node inside is the one that built it, and the libraries those of the checkout
  assert.equal(report.node.node, process.versions.node);
  assert.equal(report.node.openssl, process.versions.openssl);
  const libs = checkoutLibraries(ROOT);
  for (const [name, v] of Object.entries(libs)) assert.equal(report.libraries[name], v, name);
  const db = new Database(':memory:');
  assert.equal(report.libraries.sqlite, (db.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v);
  db.close();
  assert.equal(report.native.kura, 'loaded');
  // `kura --version` alone is the bare version, as before
  const plain = spawnSync(EXE, ['--version'], { encoding: 'utf8', env: { PATH: '/usr/bin:/bin', HOME: home } });
  assert.equal(plain.stdout.trim(), VERSION);
});

test('the executable writes its native addons once to a private cache, checks each before loading, and never loads a changed or half-written copy', (t) => {
  const home = tempDir(t);
  const first = versionOf(EXE, home);
  assert.equal(first.r.status, 0, first.r.stderr);
  const written = Object.entries(first.report!.native).filter(([, v]) => v.startsWith('written '));
  assert.deepEqual(written.map(([k]) => k).sort(), ['better_sqlite3', 'blake', 'kura_native', 'zstd'], 'what --version --json loads, written on first use');
  const fileOf = (addon: string) => first.report!.native[addon]!.split(' ')[1]!;
  const cacheDir = path.dirname(fileOf('zstd'));
  assert.ok(cacheDir.startsWith(path.join(home, '.cache', 'kura')), cacheDir);
  assert.equal(statSync(cacheDir).mode & 0o777, 0o700);
  const original = readFileSync(fileOf('kura_native'));

  const second = versionOf(EXE, home);
  assert.ok(Object.values(second.report!.native).filter((v) => v.startsWith('verified ')).length >= 4, JSON.stringify(second.report!.native));
  assert.equal(second.r.stderr, '');

  // a copy replaced by another valid addon (that would load!) and one cut in half
  chmodSync(fileOf('kura_native'), 0o600);
  copyFileSync(fileOf('zstd'), fileOf('kura_native'));
  chmodSync(fileOf('blake'), 0o600);
  truncateSync(fileOf('blake'), Math.floor(statSync(fileOf('blake')).size / 2));
  const third = versionOf(EXE, home);
  assert.equal(third.r.status, 0, third.r.stderr);
  assert.match(third.r.stderr, /kura_native-[0-9a-f]+\.node did not match its checksum \(changed or half-written\); it is replaced and never loaded/);
  assert.match(third.r.stderr, /blake-[0-9a-f]+\.node did not match its checksum/);
  assert.match(third.report!.native.kura_native!, /^replaced /);
  assert.match(third.report!.native.blake!, /^replaced /);
  assert.equal(third.report!.native.kura, 'loaded', 'kura native functions answer, so the real addon was loaded');
  assert.ok(readFileSync(fileOf('kura_native')).equals(original));

  // a cache others may write is refused, not used
  chmodSync(cacheDir, 0o777);
  const open = versionOf(EXE, home);
  assert.equal(open.r.status, 74, open.r.stderr);
  assert.match(open.r.stderr, /E_IO: the native code cache .* must be a directory owned by uid \d+ with mode 0700 \(it is uid \d+, mode 777\)/);
  chmodSync(cacheDir, 0o700);
});

/** A kura process from the extracted package, with a PATH that holds no node. */
function packaged(bin: string, env: Record<string, string>) {
  const base = { PATH: path.dirname(bin), HOME: env.HOME!, KURA_LOG_LEVEL: 'warn' };
  return {
    run(args: string[]): SpawnSyncReturns<Buffer> {
      const r = spawnSync(bin, args, { env: { ...base, ...env }, maxBuffer: 1 << 28 });
      if (r.status !== 0) throw new Error(`kura ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
      return r;
    },
    spawn(args: string[]): ChildProcess {
      return spawn(bin, args, { env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    },
  };
}

function tablesOf(file: string): Record<string, string> {
  const db = new Database(file, { readonly: true });
  const out: Record<string, string> = {};
  for (const { name } of db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`).all() as Array<{ name: string }>) {
    const h = createHash('sha256');
    let n = 0;
    for (const row of db.prepare(`SELECT * FROM ${name} ORDER BY 1`).iterate()) {
      h.update(JSON.stringify(row));
      n++;
    }
    out[name] = `${n} rows ${h.digest('hex')}`;
  }
  db.close();
  return out;
}

function sampleDatabase(file: string, rows: number): void {
  const db = new Database(file);
  db.exec('CREATE TABLE residents (id INTEGER PRIMARY KEY, name TEXT, address TEXT, born TEXT); CREATE TABLE tax (resident INTEGER, year INTEGER, amount INTEGER)');
  const r = db.prepare('INSERT INTO residents VALUES (?, ?, ?, ?)');
  const x = db.prepare('INSERT INTO tax VALUES (?, ?, ?)');
  db.transaction(() => {
    for (let i = 1; i <= rows; i++) {
      r.run(i, `住民 ${i}`, `千代田区丸の内 ${i % 97}-${i % 13}`, `19${10 + (i % 90)}-0${1 + (i % 9)}-1${i % 10}`);
      x.run(i, 2026, (i * 7919) % 1_000_000);
    }
  })();
  db.close();
}

async function firstLine(child: ChildProcess): Promise<string> {
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    child.once('exit', (c) => reject(new Error(`exited ${c}: ${err}`)));
  });
}

test('from the extracted .deb, with no node on PATH, the demo job runs: backup, relay to a vault over SSH, restore from both', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'root');
  const x = spawnSync('dpkg-deb', ['-x', DEB, root], { encoding: 'utf8' });
  assert.equal(x.status, 0, x.stderr);
  const bin = path.join(root, 'usr', 'bin', 'kura');
  assert.equal(spawnSync('/bin/sh', ['-c', 'command -v node'], { env: { PATH: path.dirname(bin) } }).status, 127, 'no node on the PATH kura runs with');

  const home = path.join(dir, 'home');
  mkdirSync(home, { mode: 0o700 });
  const dbFile = path.join(dir, 'juki.sqlite');
  sampleDatabase(dbFile, 20_000);
  spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, 'relay_key')]);
  const pub = readFileSync(path.join(dir, 'relay_key.pub'), 'utf8').trim();
  writeFileSync(path.join(dir, 'passphrase'), 'correct horse\n', { mode: 0o600 });
  writeFileSync(
    path.join(dir, 'vault.yaml'),
    `vault:\n  listen: { host: 127.0.0.1, port: 0 }\n  root: ${path.join(dir, 'vault')}\n  tenants:\n    demo-city:\n      clients:\n        - key: ${pub}\n          role: tenant-admin\n`,
  );
  const kura = packaged(bin, { HOME: home, KURA_CONFIG: path.join(dir, 'kura.yaml') });
  const vault = kura.spawn(['vault', 'serve', '--config', path.join(dir, 'vault.yaml')]);
  t.after(async () => {
    vault.kill('SIGTERM');
    await exitOf(vault);
  });
  const hello = JSON.parse(await firstLine(vault)) as { listening: string; hostKeySha256: string };
  // the vault is this very executable, not a node found somewhere
  assert.equal(readFileSync(`/proc/${vault.pid}/cmdline`, 'utf8').split('\0')[0], bin);
  writeFileSync(
    path.join(dir, 'kura.yaml'),
    `tenant: demo-city
repository:
  path: ${path.join(dir, 'repo')}
  passphraseFile: ${path.join(dir, 'passphrase')}
sources:
  juki:
    type: sqlite
    path: ${dbFile}
    routes: [peer-dc]
modules:
  routing:
    type: static
    routes:
      peer-dc:
        endpoints:
          - host: 127.0.0.1
            port: ${hello.listening.split(':')[1]}
            hostKeySha256: "${hello.hostKeySha256}"
        clientKey: ${path.join(dir, 'relay_key')}
`,
  );
  kura.run(['repo', 'init']);
  kura.run(['agent', 'run']);
  const backedUp = tablesOf(dbFile);
  const sent = JSON.parse(kura.run(['relay', 'once', '--json']).stdout.toString()) as { sent: number };
  assert.equal(sent.sent, 1);

  const fromVault = path.join(dir, 'from-vault.sqlite');
  const local = path.join(dir, 'local.sqlite');
  kura.run(['restore', '--from', 'peer-dc', 'latest:juki', '--into', `sqlite:${fromVault}`]);
  kura.run(['restore', 'latest:juki', '--into', `sqlite:${local}`]);
  assert.deepEqual(tablesOf(fromVault), backedUp);
  assert.deepEqual(tablesOf(local), backedUp);
  kura.run(['check', '--read-data']);
  // and kura top without a terminal prints the status once
  assert.match(kura.run(['top']).stdout.toString(), /^relay stopped\n[^]*juki/);
});

test('lintian reports no error in the Debian package', () => {
  const r = spawnSync('lintian', ['--tag-display-limit', '0', DEB], { encoding: 'utf8', timeout: 10 * 60_000 });
  if (r.error) throw r.error;
  const lines = (r.stdout + r.stderr).split('\n').filter((l) => /^[EWX]: /.test(l));
  assert.deepEqual(lines.filter((l) => l.startsWith('E: ')), [], r.stdout);
  assert.deepEqual(lines, [], 'no warnings either');
});

/** The processes below `pid` (runuser's child is the unit's main process, which systemd would signal). */
function descendants(pid: number): number[] {
  let kids: number[] = [];
  try {
    kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
  return kids.flatMap((k) => [k, ...descendants(k)]);
}

/** Sends `signal` to the unit's main process (the deepest one: runuser → kura) and waits for runuser to end. */
async function stopUnit(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const main = descendants(child.pid!).at(-1);
  if (main) process.kill(main, signal);
  else child.kill(signal);
  return exitOf(child);
}

/**
 * A throw-away copy of this machine: an overlay over / whose writes go to a tmpfs, in a mount
 * namespace held by one process, entered with nsenter + chroot. dpkg, adduser and the units
 * change only the copy; killing the holder ends it.
 */
class MachineCopy {
  readonly dir: string;
  readonly merged: string;
  private readonly holder: ChildProcess;
  private readonly children: ChildProcess[] = [];
  private constructor(dir: string, holder: ChildProcess) {
    this.dir = dir;
    this.merged = path.join(dir, 'merged');
    this.holder = holder;
  }
  static async start(): Promise<MachineCopy> {
    const dir = mkdtempSync('/dev/shm/kura-machine-');
    for (const d of ['upper', 'work', 'merged']) mkdirSync(path.join(dir, d));
    const m = path.join(dir, 'merged');
    const script = [
      `mount -t overlay overlay -o lowerdir=/,upperdir=${dir}/upper,workdir=${dir}/work ${m}`,
      `mount --rbind /proc ${m}/proc`,
      `mount --rbind /dev ${m}/dev`,
      `mount --rbind /sys ${m}/sys`,
      `mount -t tmpfs tmpfs ${m}/run`,
      'echo ready',
      'exec sleep 900', // ends the copy by itself if this test process dies
    ].join(' && ');
    const holder = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    const line = await firstLine(holder);
    assert.equal(line, 'ready');
    return new MachineCopy(dir, holder);
  }
  /** Runs argv as root in the copy. */
  run(argv: string[], opts: { input?: string; timeout?: number } = {}): SpawnSyncReturns<string> {
    return spawnSync('nsenter', ['-t', String(this.holder.pid), '-m', 'chroot', this.merged, ...argv], { encoding: 'utf8', input: opts.input, timeout: opts.timeout ?? 120_000 });
  }
  ok(argv: string[], opts: { input?: string } = {}): string {
    const r = this.run(argv, opts);
    assert.equal(r.status, 0, `${argv.join(' ')}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  }
  spawn(argv: string[]): ChildProcess {
    const child = spawn('nsenter', ['-t', String(this.holder.pid), '-m', 'chroot', this.merged, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.children.push(child);
    return child;
  }
  /** Every file of the overlay's upper layer (what the copy has written) with its mtime and size. */
  written(): Map<string, string> {
    const upper = path.join(this.dir, 'upper');
    const out = new Map<string, string>();
    for (const e of readdirSync(upper, { recursive: true, withFileTypes: true })) {
      const p = path.join(e.parentPath, e.name);
      const st = statSync(p, { throwIfNoEntry: false });
      if (st && !st.isDirectory()) out.set('/' + path.relative(upper, p), `${st.mtimeMs} ${st.size}`);
    }
    return out;
  }
  /** Paths written since `before` (a written() result). */
  writtenSince(before: Map<string, string>): string[] {
    return [...this.written()].filter(([p, v]) => before.get(p) !== v).map(([p]) => p);
  }
  async stop(): Promise<void> {
    for (const c of this.children) {
      if (c.exitCode === null && c.signalCode === null) {
        for (const pid of descendants(c.pid!)) process.kill(pid, 'SIGKILL');
        c.kill('SIGKILL');
        await exitOf(c);
      }
    }
    this.holder.kill('SIGKILL');
    await exitOf(this.holder);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

interface UnitSandbox {
  execStart: string;
  user: string;
  environment: Record<string, string>;
  writable: string[];
  script: string;
}

/** What systemd would do for a service unit, as a shell script: ProtectSystem=strict, ReadWritePaths, PrivateTmp, ProtectHome, User, a clean environment. */
function sandboxOf(unitText: string, instance = ''): UnitSandbox {
  const one = (key: string) => new RegExp(`^${key}=(.*)$`, 'm').exec(unitText)?.[1]?.trim();
  const all = (key: string) => [...unitText.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].flatMap((m) => m[1]!.trim().split(/\s+/)).filter(Boolean);
  const execStart = one('ExecStart')!.replaceAll('%i', instance);
  const user = one('User')!;
  const environment = Object.fromEntries(all('Environment').map((kv) => kv.split('=') as [string, string]));
  const writable = [...all('ReadWritePaths'), ...all('StateDirectory').map((d) => `/var/lib/${d}`)];
  assert.equal(one('ProtectSystem'), 'strict');
  const lines = ['set -e', 'mount -o remount,bind,ro /', 'mount -o remount,bind,ro /run'];
  for (const w of writable) lines.push(`mount --bind ${w} ${w}`, `mount -o remount,bind,rw ${w}`);
  if (one('PrivateTmp') === 'yes') lines.push('mount -t tmpfs -o mode=1777 tmpfs /tmp', 'mount -t tmpfs -o mode=1777 tmpfs /var/tmp');
  if (one('ProtectHome') === 'yes') lines.push('mount -t tmpfs -o ro,mode=755 tmpfs /home', 'mount -t tmpfs -o ro,mode=755 tmpfs /root');
  const env = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/var/lib/kura', USER: user, LOGNAME: user, ...environment };
  lines.push(`exec runuser -u ${user} -- env -i ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')} ${execStart}`);
  return { execStart, user, environment, writable, script: lines.join('\n') };
}

test('dpkg -i makes the kura user and directories; each unit runs as kura inside its sandbox and writes only where it may; remove and install again keep the edited config and the repositories; purge says what it keeps', async (t) => {
  if (!IS_ROOT) {
    assert.notEqual(process.env.CI, 'true', 'CI runs as root: installing the package needs it');
    t.skip('needs root (dpkg -i, unshare, runuser)');
    return;
  }
  // the operator's source database, made before the copy starts so the copy sees it
  const hostDir = tempDir(t);
  sampleDatabase(path.join(hostDir, 'juki.sqlite'), 5_000);
  chmodSync(hostDir, 0o755);
  const machine = await MachineCopy.start();
  t.after(() => machine.stop());
  assert.notEqual(spawnSync('getent', ['passwd', 'kura']).status, 0, 'this machine itself has no kura user (and keeps none)');
  const deb = DEB;

  machine.ok(['dpkg', '-i', deb]);
  assert.match(machine.ok(['getent', 'passwd', 'kura']), /^kura:x:\d+:\d+:[^:]*:\/var\/lib\/kura:\/usr\/sbin\/nologin$/m);
  assert.equal(machine.ok(['stat', '-c', '%U:%G %a', '/var/lib/kura', '/var/log/kura']), 'kura:kura 750\nkura:kura 750\n');
  assert.equal(machine.ok(['stat', '-c', '%U %a', '/usr/bin/kura']), 'root 755\n');
  assert.equal(machine.ok(['dpkg-query', '-W', '-f', '${Conffiles}', 'kura']).trim().split(' ')[0], '/etc/kura/kura.yaml');
  assert.match(machine.ok(['cat', '/etc/kura/kura.yaml']), /^# kura configuration \(generated from the schema by `kura config example`\)$/m);
  assert.match(machine.ok(['man', '-P', 'cat', 'kura']), /kura backup/);

  // the installed units as systemd reads them (executable and man page in place)
  const units = machine.ok(['sh', '-c', 'ls /lib/systemd/system/kura-*']).trim().split('\n');
  assert.equal(units.length, 6, units.join(' '));
  const verify = machine.run(['systemd-analyze', 'verify', ...units.filter((u) => !u.includes('@'))]);
  assert.equal(verify.status, 0, verify.stderr);
  assert.equal((verify.stdout + verify.stderr).trim(), '');
  machine.ok(['sh', '-c', 'cp /lib/systemd/system/kura-agent@.service /etc/systemd/system/kura-agent@juki.service && cp /lib/systemd/system/kura-agent@.timer /etc/systemd/system/kura-agent@juki.timer']);
  const tmpl = machine.run(['systemd-analyze', 'verify', '/etc/systemd/system/kura-agent@juki.timer', '/etc/systemd/system/kura-agent@juki.service']);
  assert.equal((tmpl.stdout + tmpl.stderr).trim(), '', 'an instance of the per-source template verifies');
  machine.ok(['rm', '/etc/systemd/system/kura-agent@juki.service', '/etc/systemd/system/kura-agent@juki.timer']);

  // the operator's setup: a source, a passphrase and a relay key the kura group may read, the vault on loopback
  machine.ok(['sh', '-c', [
    'set -e',
    `install -d /srv && install -m 0644 ${path.join(hostDir, 'juki.sqlite')} /srv/juki.sqlite`,
    "printf 'correct horse\\n' > /etc/kura/passphrase",
    "ssh-keygen -q -t ed25519 -N '' -C relay -f /etc/kura/relay_key",
    'chgrp kura /etc/kura/passphrase /etc/kura/relay_key && chmod 0640 /etc/kura/passphrase /etc/kura/relay_key',
    `printf 'vault:\\n  listen: { host: 127.0.0.1, port: 0 }\\n  root: /var/lib/kura/vault\\n  tenants:\\n    city-a:\\n      clients:\\n        - key: %s\\n          role: tenant-admin\\n' "$(cat /etc/kura/relay_key.pub)" > /etc/kura/vault.yaml`,
  ].join('\n')]);
  const sandboxes = Object.fromEntries(
    units.filter((u) => u.endsWith('.service')).map((u) => [path.basename(u), sandboxOf(machine.ok(['cat', u]), 'juki')]),
  );
  assert.deepEqual(Object.keys(sandboxes).sort(), ['kura-agent.service', 'kura-agent@.service', 'kura-relay.service', 'kura-vault.service']);
  const allowed = (s: UnitSandbox, p: string) => s.writable.some((w) => p === w || p.startsWith(w + '/'));
  const inSandbox = (name: string) => machine.spawn(['unshare', '--mount', 'sh', '-c', sandboxes[name]!.script]);
  const onceInSandbox = (name: string) => machine.run(['unshare', '--mount', 'sh', '-c', sandboxes[name]!.script], { timeout: 120_000 });

  // the vault first: the agent's config pins its host key
  let since = machine.written();
  const vault = inSandbox('kura-vault.service');
  const hello = JSON.parse(await firstLine(vault)) as { listening: string; hostKeySha256: string };
  const port = Number(hello.listening.split(':')[1]);
  assert.deepEqual(machine.writtenSince(since).filter((p) => !allowed(sandboxes['kura-vault.service']!, p)), [], 'the starting vault wrote only where its unit allows');
  machine.ok(['sh', '-c', `cat > /etc/kura/kura.yaml <<'EOF'
# edited by the operator
tenant: city-a
repository:
  path: /var/lib/kura/repo
  passphraseFile: /etc/kura/passphrase
sources:
  juki:
    type: sqlite
    path: /srv/juki.sqlite
    routes: [peer-dc]
relay:
  pollInterval: 1s
modules:
  routing:
    type: static
    routes:
      peer-dc:
        endpoints:
          - host: 127.0.0.1
            port: ${port}
            hostKeySha256: "${hello.hostKeySha256}"
        clientKey: /etc/kura/relay_key
EOF`]);
  machine.ok(['runuser', '-u', 'kura', '--', 'env', 'HOME=/var/lib/kura', 'KURA_CONFIG=/etc/kura/kura.yaml', '/usr/bin/kura', 'repo', 'init']);

  for (const name of ['kura-agent.service', 'kura-agent@.service']) {
    since = machine.written();
    const r = onceInSandbox(name);
    assert.equal(r.status, 0, `${name}: ${sandboxes[name]!.execStart}: ${r.stderr}`);
    const report = JSON.parse(r.stdout.trim().split('\n').pop()!) as { ok?: boolean; sources?: unknown };
    assert.ok(report, r.stdout);
    const outside = machine.writtenSince(since).filter((p) => !allowed(sandboxes[name]!, p));
    assert.deepEqual(outside, [], `${name} wrote only under ${sandboxes[name]!.writable.join(' ')}`);
  }
  since = machine.written();
  const relay = inSandbox('kura-relay.service');
  let relayErr = '';
  relay.stderr!.on('data', (d) => (relayErr += d));
  // the relay ships both nights' snapshots to the vault, then idles
  const deadline = Date.now() + 60_000;
  let listed: Array<{ id: string }> = [];
  while (Date.now() < deadline && listed.length < 2) {
    await new Promise((r) => setTimeout(r, 1000));
    const l = machine.run(['runuser', '-u', 'kura', '--', 'env', 'HOME=/var/lib/kura', 'KURA_CONFIG=/etc/kura/kura.yaml', '/usr/bin/kura', 'snapshots', '--from', 'peer-dc', '--json']);
    if (l.status === 0) listed = JSON.parse(l.stdout) as Array<{ id: string }>;
  }
  assert.equal(listed.length, 2, `the relay shipped both snapshots: ${relayErr}`);
  assert.equal(relay.exitCode, null, `the relay keeps running: ${relayErr}`);
  // stopped as systemd stops them: SIGTERM to the main process, which ends cleanly
  assert.deepEqual(await stopUnit(relay), { code: 0, signal: null }, relayErr);
  assert.deepEqual(await stopUnit(vault), { code: 0, signal: null });
  for (const [name, s] of [['kura-relay.service', sandboxes['kura-relay.service']!], ['kura-vault.service', sandboxes['kura-vault.service']!]] as const) {
    // both ran at once: every path written must be one that one of the two units may write
    const outside = machine.writtenSince(since).filter((p) => !allowed(s, p) && !allowed(name === 'kura-relay.service' ? sandboxes['kura-vault.service']! : sandboxes['kura-relay.service']!, p));
    assert.deepEqual(outside, [], `${name} wrote only under ${s.writable.join(' ')}`);
  }

  // remove: the config the operator edited and the repositories stay; install again: still his
  const edited = machine.ok(['cat', '/etc/kura/kura.yaml']);
  machine.ok(['dpkg', '-r', 'kura']);
  assert.equal(machine.run(['test', '-e', '/usr/bin/kura']).status, 1);
  assert.equal(machine.ok(['cat', '/etc/kura/kura.yaml']), edited);
  assert.equal(machine.run(['test', '-f', '/var/lib/kura/repo/config']).status, 0);
  machine.ok(['dpkg', '-i', deb]);
  assert.equal(machine.ok(['cat', '/etc/kura/kura.yaml']), edited, 'the operator\'s config survives remove + install');
  const snaps = JSON.parse(machine.ok(['runuser', '-u', 'kura', '--', 'env', 'HOME=/var/lib/kura', 'KURA_CONFIG=/etc/kura/kura.yaml', '/usr/bin/kura', 'snapshots', '--json'])) as unknown[];
  assert.equal(snaps.length, 2, 'the local repository survives remove + install');

  // purge: the config file goes, the backups stay, and it says so
  const purge = machine.ok(['dpkg', '--purge', 'kura']);
  assert.match(purge, /kura purged; kept, for you to delete when the backups are no longer needed:/);
  assert.match(purge, /\/var\/lib\/kura \([^)]+: repositories, catalogues, vault tenants, logs\)/);
  assert.match(purge, /\/etc\/kura \(files you added: .*passphrase.*\)/);
  assert.match(purge, /the system user and group kura/);
  assert.equal(machine.run(['test', '-e', '/etc/kura/kura.yaml']).status, 1);
  assert.equal(machine.run(['test', '-f', '/var/lib/kura/repo/config']).status, 0);
  assert.equal(machine.run(['dpkg-query', '-W', 'kura']).status, 1, 'dpkg forgot the package');
});

