import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, fstatSync, fsyncSync, lstatSync, mkdirSync, openSync, readSync, renameSync, rmSync, writeSync, constants as fsConstants } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { getAsset, getRawAsset, isSea } from 'node:sea';
import { KuraError } from '../errors.js';

/**
 * The single executable (`npm run package`, scripts/package.mjs): node with kura's bundled code
 * and its native addons injected as assets. Node can only dlopen() a file, so each addon is
 * written once to a private cache directory and its SHA-256 is checked against the manifest
 * inside the executable before every load: a tampered or half-written copy is never loaded.
 * Outside the executable (a checkout, `node bin/kura`) every function here answers null.
 */
export interface EmbeddedManifest {
  kura: string;
  commit: string;
  node: string;
  builtFrom: { dirty: boolean };
  libraries: Record<string, string>;
  addons: Record<string, { sha256: string; bytes: number }>;
  workers: string[];
}

export const ADDON_ASSET = (name: string) => `addon/${name}.node`;
export const WORKER_ASSET = (script: string) => `worker/${script}`;
export const MANIFEST_ASSET = 'manifest.json';

let manifest: EmbeddedManifest | null | undefined;

/** Whether bin/kura runs this as a checkout's bundle (dist/kura.cjs; it sets the mark before it runs it). */
export function fromCheckoutBundle(): boolean {
  return (globalThis as Record<symbol, unknown>)[Symbol.for('kura.startup')] === 'bundle';
}

/** The manifest of the running single executable, or null when kura runs from a checkout. */
export function embeddedManifest(): EmbeddedManifest | null {
  if (manifest !== undefined) return manifest;
  manifest = isSea() ? (JSON.parse(getAsset(MANIFEST_ASSET, 'utf8')) as EmbeddedManifest) : null;
  return manifest;
}

/**
 * Where the addons are written: KURA_CACHE_DIR, systemd's CACHE_DIRECTORY, XDG_CACHE_HOME/kura
 * or ~/.cache/kura (the kura user's home is /var/lib/kura, which its units may write), one
 * subdirectory per build so two versions side by side never share a file.
 */
export function addonCacheDir(m: EmbeddedManifest): string {
  const base =
    process.env.KURA_CACHE_DIR ||
    process.env.CACHE_DIRECTORY?.split(':')[0] ||
    (process.env.XDG_CACHE_HOME ? path.join(process.env.XDG_CACHE_HOME, 'kura') : '') ||
    path.join(homedir() || tmpdir(), '.cache', 'kura');
  return path.join(base, `native-${m.kura}-${m.commit.slice(0, 12)}`);
}

const loaded = new Map<string, unknown>();
/** What happened to each addon in this process, for `kura --version --json`. */
export const addonEvents: Array<{ addon: string; event: 'written' | 'verified' | 'replaced'; file: string }> = [];

function sha256Of(fd: number): string {
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(1 << 20);
  for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  return h.digest('hex');
}

/** A directory only this user can change: created 0700, refused if someone else owns or may write it. */
function privateDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new KuraError('E_IO', `cannot create the native code cache ${dir}: ${(e as Error).message} (set KURA_CACHE_DIR to a directory this user may write)`, undefined, { cause: e });
  }
  for (let d = dir; ; d = path.dirname(d)) {
    const st = lstatSync(d);
    const uid = process.getuid?.() ?? 0;
    // the cache itself must be ours and closed to others; above it only root or we may own a directory others cannot write (or that is sticky, like /tmp)
    if (d === dir && (st.uid !== uid || (st.mode & 0o077) !== 0 || !st.isDirectory())) {
      throw new KuraError('E_IO', `the native code cache ${dir} must be a directory owned by uid ${uid} with mode 0700 (it is uid ${st.uid}, mode ${(st.mode & 0o777).toString(8)}); fix it or set KURA_CACHE_DIR`);
    }
    if (d !== dir && ((st.uid !== uid && st.uid !== 0) || ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0))) {
      throw new KuraError('E_IO', `the native code cache ${dir} lies under ${d}, which another user may change (uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8)}); set KURA_CACHE_DIR to a private directory`);
    }
    if (path.dirname(d) === d) break;
  }
}

/** Opens `file` and returns its descriptor if its bytes hash to `sha256`, else null (missing or different). */
function openVerified(file: string, sha256: string): number | null {
  let fd: number;
  try {
    fd = openSync(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new KuraError('E_IO', `cannot open the cached native code ${file}: ${(e as Error).message}`, undefined, { cause: e });
  }
  if (fstatSync(fd).isFile() && sha256Of(fd) === sha256) return fd;
  closeSync(fd);
  return null;
}

/** Writes the asset next to `file` and renames it into place: a reader sees all of it or nothing. */
function writeCopy(file: string, bytes: Uint8Array): void {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    const fd = openSync(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o500);
    try {
      for (let at = 0; at < bytes.length; ) at += writeSync(fd, bytes, at, bytes.length - at);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new KuraError('E_IO', `cannot write the native code cache ${path.dirname(file)}: ${(e as Error).message} (free space, or set KURA_CACHE_DIR to a directory this user may write)`, undefined, { cause: e });
  }
}

/**
 * The exports of the embedded addon `name` (e.g. `better_sqlite3`). The copy in the cache is
 * read through one descriptor, hashed, and that same descriptor is what dlopen() opens
 * (/proc/self/fd/N), so the file cannot be swapped between the check and the load. The
 * descriptor stays open: its number, part of the library's name, is then never reused.
 */
export function loadEmbeddedAddon(name: string): unknown {
  const done = loaded.get(name);
  if (done !== undefined) return done;
  const m = embeddedManifest();
  const want = m?.addons[name];
  if (!m || !want) throw new KuraError('E_INTERNAL', `native addon ${name} is not embedded in this executable (rebuild it with npm run package)`);
  const dir = addonCacheDir(m);
  privateDir(dir);
  const file = path.join(dir, `${name}-${want.sha256.slice(0, 16)}.node`);
  let fd = openVerified(file, want.sha256);
  if (fd === null) {
    const existed = existsSync(file);
    const bytes = new Uint8Array(getRawAsset(ADDON_ASSET(name)) as ArrayBuffer);
    // the executable itself is checked too: a damaged one says so instead of loading garbage
    if (createHash('sha256').update(bytes).digest('hex') !== want.sha256) {
      throw new KuraError('E_INTERNAL', `the native addon ${name} inside ${process.execPath} does not match its checksum: the executable is damaged, reinstall it`);
    }
    if (existed) {
      process.stderr.write(`kura: the cached native code ${file} did not match its checksum (changed or half-written); it is replaced and never loaded\n`);
      rmSync(file, { force: true });
    }
    writeCopy(file, bytes);
    addonEvents.push({ addon: name, event: existed ? 'replaced' : 'written', file });
    fd = openVerified(file, want.sha256);
    if (fd === null) throw new KuraError('E_IO', `the native code just written to ${file} does not read back as written: check the disk`);
  } else {
    addonEvents.push({ addon: name, event: 'verified', file });
  }
  const module = { exports: {} as unknown };
  const viaFd = `/proc/self/fd/${fd}`;
  try {
    process.dlopen(module, existsSync(viaFd) ? viaFd : file);
  } catch (e) {
    closeSync(fd);
    const msg = (e as Error).message;
    const hint = /failed to map segment|operation not permitted/i.test(msg) ? ` (is ${dir} on a noexec mount? set KURA_CACHE_DIR to a directory that allows executing)` : '';
    throw new KuraError('E_INTERNAL', `cannot load the native addon ${name} from ${file}: ${msg}${hint}`, undefined, { cause: e });
  }
  loaded.set(name, module.exports);
  return module.exports;
}

/** The bundled source of a worker script (e.g. `src/archiver/seal-worker.js`), or null outside the executable. */
export function embeddedWorkerSource(script: string): string | null {
  const m = embeddedManifest();
  if (!m) return null;
  if (!m.workers.includes(script)) throw new KuraError('E_INTERNAL', `worker ${script} is not embedded in this executable (rebuild it with npm run package)`);
  return getAsset(WORKER_ASSET(script), 'utf8');
}
