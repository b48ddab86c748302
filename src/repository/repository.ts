import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { KuraError } from '../errors.js';
import { COMPRESSION_LEVEL, compressionLevelProblem } from './compression-level.js';
import type { ChunkerParams } from '../chunker/fastcdc.js';
import { defaultChunkerParams, validateChunkerParams } from '../chunker/fastcdc.js';
import { deriveKeys, newMasterKey, parseKeyFile, parseKeySlot, unwrapMasterKey, wrapMasterKey, type KeyFile, type KeySlot, type RepoKeys } from '../crypto/keys.js';
import type { StoreBackend } from '../store/backend.js';
import { snapshotName } from '../store/backend.js';
import { FS_SPEC, openStore, prepareStore, type StorageSpec } from '../store/index.js';
import { Catalogue } from './catalogue.js';
import { decodeSnapshot, type DecodedSnapshot } from './snapshot.js';

export const REPO_FORMAT = 1;

export interface RepoConfig {
  format: number;
  id: string;
  created: string;
  chunker: ChunkerParams & { algorithm: 'fastcdc-gear-v1'; normalization: 2 };
  compression: { algorithm: 'zstd'; level: number };
  chunkId: 'blake3-keyed-256';
  cipher: 'aes-256-gcm';
  /** a vault tenant's repository: ciphertext of other repositories, no key slots */
  keyless?: boolean;
}

/** Where the master key comes from: a key file, or a passphrase tried against the key slots. */
export interface KeySource {
  passphrase?: string | undefined;
  keyFile?: string | undefined;
}

export interface InitOptions {
  keys: KeySource;
  chunker?: ChunkerParams;
  compressionLevel?: number;
}

const CATALOGUE_FILE = 'catalogue.sqlite';

/**
 * Where a repository lives: a directory (the fs backend, everything in it), or a local directory
 * for the catalogue and caches plus a storage spec from the registry (`scope` separates
 * repositories sharing one store: a vault's tenants).
 */
export type RepoLocation = string | { dir: string; storage: StorageSpec; scope?: string; wrap?: (store: StoreBackend) => StoreBackend };

function placeOf(loc: RepoLocation): { dir: string; spec: StorageSpec; scope: string } {
  return typeof loc === 'string' ? { dir: loc, spec: FS_SPEC, scope: '' } : { dir: loc.dir, spec: loc.storage, scope: loc.scope ?? '' };
}

function storeOf(loc: RepoLocation): { dir: string; spec: StorageSpec; scope: string; store: StoreBackend } {
  const p = placeOf(loc);
  const store = openStore(p.spec, { dir: p.dir, scope: p.scope });
  // a vault node fences its tenant's writes and deletes with the tenant's lease (src/vault/nodes/fence.ts)
  return { ...p, store: typeof loc === 'object' && loc.wrap ? loc.wrap(store) : store };
}

export class Repository {
  private constructor(
    /** the local directory: catalogue and caches (on fs also the objects) */
    readonly root: string,
    readonly store: StoreBackend,
    readonly config: RepoConfig,
    readonly catalogue: Catalogue,
    private repoKeys: RepoKeys | null,
  ) {}

  /** Keys, or a coded error when the repository was opened without them (vault side). */
  get keys(): RepoKeys {
    if (!this.repoKeys) throw new KuraError('E_KEY_MISSING', 'this operation needs the repository key; give KURA_PASSPHRASE, --passphrase-file or --key-file');
    return this.repoKeys;
  }

  get hasKeys(): boolean {
    return this.repoKeys !== null;
  }

  /** Where the objects are, for messages: the directory, or the bucket and prefix. */
  get location(): string {
    return this.store.location;
  }

  static async init(loc: RepoLocation, opts: InitOptions): Promise<{ repo: Repository; keyFileWritten?: string }> {
    const chunker = opts.chunker ?? defaultChunkerParams;
    const problem = validateChunkerParams(chunker);
    if (problem) throw new KuraError('E_USAGE', `chunker parameters: ${problem}`);
    const level = opts.compressionLevel ?? COMPRESSION_LEVEL.default;
    const levelProblem = compressionLevelProblem(level);
    if (levelProblem) throw new KuraError('E_USAGE', `compression level ${levelProblem}`);
    if (!opts.keys.passphrase && !opts.keys.keyFile) {
      throw new KuraError('E_KEY_MISSING', 'a new repository needs a key: set KURA_PASSPHRASE, give --passphrase-file, or --key-file PATH to create a key file');
    }
    const { dir: root, spec, scope, store } = storeOf(loc);
    if (await store.stat('config')) throw new KuraError('E_REPO_EXISTS', `${store.location} already holds a kura repository; choose another directory, bucket or prefix`);
    const entries = await fsp.readdir(root).catch(() => [] as string[]);
    if (entries.length > 0) throw new KuraError('E_REPO_EXISTS', `${root} is not empty; give an empty or new directory for the repository`);
    // the bucket made if absent, and a store that would overwrite on a create refused
    await prepareStore(spec, { dir: root, scope }, store);
    await makeLayout(root, store);
    const config = newConfig(chunker, level);
    const master = newMasterKey();
    let keyFileWritten: string | undefined;
    if (opts.keys.keyFile) {
      const kf: KeyFile = { version: 1, kind: 'kura-key', repository: config.id, master: master.toString('base64') };
      try {
        await fsp.writeFile(opts.keys.keyFile, JSON.stringify(kf, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
      } catch (e) {
        throw new KuraError('E_KEY_FILE', `cannot create key file ${opts.keys.keyFile}: ${(e as Error).message} (it must not exist yet)`);
      }
      keyFileWritten = opts.keys.keyFile;
    }
    if (opts.keys.passphrase) {
      const slot = wrapMasterKey(master, opts.keys.passphrase, config.id, 'initial');
      await store.replace(`keys/${slot.id}`, Buffer.from(JSON.stringify(slot, null, 2)));
    }
    // config last: a store without config is not a repository, so a crash here is harmless; a
    // conditional create, so two inits racing on one bucket cannot both win
    if (!(await store.putIfAbsent('config', Buffer.from(JSON.stringify(config, null, 2) + '\n')))) {
      throw new KuraError('E_REPO_EXISTS', `${store.location} already holds a kura repository (created meanwhile); choose another directory, bucket or prefix`);
    }
    await store.sync();
    const catalogue = new Catalogue(path.join(root, CATALOGUE_FILE));
    const repo = new Repository(root, store, config, catalogue, deriveKeys(master, config.id));
    repo.masterKey = master;
    return keyFileWritten ? { repo, keyFileWritten } : { repo };
  }

  /**
   * A repository that only ever holds other repositories' ciphertext (a vault tenant): same
   * layout and format, no key slots. Opened with `open(root, null)`.
   */
  static async initKeyless(loc: RepoLocation): Promise<Repository> {
    const { dir, store } = storeOf(loc);
    if (!(await store.stat('config'))) {
      await makeLayout(dir, store);
      const config: RepoConfig = { ...newConfig(defaultChunkerParams, COMPRESSION_LEVEL.default), keyless: true };
      await store.putIfAbsent('config', Buffer.from(JSON.stringify(config, null, 2) + '\n'));
      await store.sync();
    }
    store.close?.();
    return Repository.open(loc, null);
  }

  /** Resolves once the keys are there (at once unless opened with `deferKeys`); rejects as the unlock failed. */
  keysReady: Promise<void> = Promise.resolve();

  /**
   * Open a repository; `keys` null opens it without keys (structure only). With `deferKeys`
   * it returns as soon as the catalogue is open and the key derivation continues: `keys` is
   * usable after `keysReady` (a nightly agent starts its export meanwhile).
   */
  static async open(loc: RepoLocation, keys: KeySource | null, opts: { deferKeys?: boolean; rebuildIfMissing?: boolean } = {}): Promise<Repository> {
    const { dir: root, store } = storeOf(loc);
    const raw = await store.get('config');
    if (!raw) {
      store.close?.();
      throw new KuraError('E_REPO_NOT_FOUND', store.local ? `no kura repository at ${root}; create one with "kura repo init --repo ${root}" or fix --repo` : `no kura repository at ${store.location}; create one with "kura repo init" or fix repository in the config`);
    }
    let config: RepoConfig;
    try {
      config = JSON.parse(raw.toString('utf8')) as RepoConfig;
    } catch {
      throw new KuraError('E_REPO_FORMAT', `${root}/config is damaged (not JSON)`);
    }
    if (config.format !== REPO_FORMAT) throw new KuraError('E_REPO_FORMAT', `${root} has repository format ${config.format}; this kura reads format ${REPO_FORMAT}`);
    // the key is derived (scrypt, in the thread pool) while the catalogue is opened and reconciled
    // a vault tenant's repository has no key slots: a key source given anyway (KURA_PASSPHRASE) is not tried
    const unlocking = keys && !config.keyless ? unlock(store, config.id, keys) : Promise.resolve(null);
    unlocking.catch(() => {}); // awaited below
    if (!store.local) await fsp.mkdir(root, { recursive: true, mode: 0o750 }); // the catalogue's directory
    // the catalogue is a cache: on a new machine (or after it was lost) a repository in an
    // object store gets it rebuilt from the store before anything trusts it
    const fresh = opts.rebuildIfMissing !== false && !store.local && !(await fsp.stat(path.join(root, CATALOGUE_FILE)).catch(() => null));
    const catalogue = new Catalogue(path.join(root, CATALOGUE_FILE));
    const repo = new Repository(root, store, config, catalogue, null);
    try {
      if (fresh) await (await import('../checker/check.js')).rebuildIndex(repo);
      await repo.reconcileSnapshots();
      repo.keysReady = unlocking.then((master) => {
        repo.masterKey = master;
        repo.repoKeys = master ? deriveKeys(master, config.id) : null;
      });
      repo.keysReady.catch(() => {}); // awaited here, or by whoever needs the keys
      if (!opts.deferKeys) await repo.keysReady;
    } catch (e) {
      catalogue.close();
      throw e;
    }
    return repo;
  }

  /**
   * Snapshot files are the truth; a crash between writing one and recording it leaves the
   * catalogue behind, and a snapshot removed elsewhere leaves it ahead. Listing one directory
   * is cheap, so every open brings the catalogue in line.
   */
  async reconcileSnapshots(): Promise<void> {
    const inStore = new Set<string>();
    for await (const name of this.store.list('snapshots/')) inStore.add(name.slice('snapshots/'.length));
    const known = this.catalogue.snapshotIds();
    for (const id of inStore) {
      if (known.has(id)) continue;
      const s = await this.readSnapshot(id).catch(() => null);
      if (s) this.catalogue.addSnapshot(id, s.header);
    }
    for (const id of known) if (!inStore.has(id)) this.catalogue.removeSnapshot(id);
  }

  async readSnapshot(id: string): Promise<DecodedSnapshot> {
    const bytes = await this.store.get(snapshotName(id));
    if (!bytes) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `snapshot ${id} is not in ${this.location}; list them with "kura snapshots"`);
    return decodeSnapshot(bytes, id);
  }

  /** ID, unique ID prefix, or latest:SOURCE. */
  resolveSnapshot(ref: string): string {
    const all = this.catalogue.snapshots();
    if (ref.startsWith('latest:') || ref === 'latest') {
      const source = ref === 'latest' ? undefined : ref.slice('latest:'.length);
      const rows = all.filter((r) => source === undefined || r.header.source === source);
      const last = rows[rows.length - 1];
      if (!last) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `no snapshot of source "${source ?? '*'}" in ${this.location}; list them with "kura snapshots"`);
      return last.id;
    }
    if (!/^[0-9a-f]{4,64}$/.test(ref)) throw new KuraError('E_USAGE', `"${ref}" is not a snapshot reference: give an ID, a unique ID prefix (4+ hex digits) or latest:SOURCE`);
    const hits = all.filter((r) => r.id.startsWith(ref));
    if (hits.length === 0) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `no snapshot ${ref} in ${this.location}; list them with "kura snapshots"`);
    if (hits.length > 1) throw new KuraError('E_SNAPSHOT_AMBIGUOUS', `"${ref}" matches ${hits.length} snapshots; give more digits`, { matches: hits.map((h) => h.id) });
    return hits[0]!.id;
  }

  async keySlots(): Promise<KeySlot[]> {
    return loadSlots(this.store);
  }

  async addKeySlot(passphrase: string, label?: string): Promise<KeySlot> {
    const master = this.masterForExport;
    const slot = wrapMasterKey(master, passphrase, this.config.id, label);
    await this.store.replace(`keys/${slot.id}`, Buffer.from(JSON.stringify(slot, null, 2)));
    return slot;
  }

  /** The master key is kept only to add slots and export; derived keys do the work. */
  private masterKey: Buffer | null = null;
  get masterForExport(): Buffer {
    if (!this.masterKey) throw new KuraError('E_KEY_MISSING', 'this operation needs the repository key; give KURA_PASSPHRASE, --passphrase-file or --key-file');
    return this.masterKey;
  }

  close(): void {
    this.catalogue.close();
    this.store.close?.();
  }
}

/**
 * Keys from a key file alone, without the repository (a vault restore after the business server
 * was lost): the file names the repository whose keys it derives.
 */
export async function keysFromKeyFile(keyFile: string, passphrase?: string): Promise<{ repositoryId: string; keys: RepoKeys }> {
  let text: string;
  try {
    text = await fsp.readFile(keyFile, 'utf8');
  } catch (e) {
    throw new KuraError('E_KEY_FILE', `cannot read key file ${keyFile}: ${(e as Error).message}`);
  }
  const kf = parseKeyFile(text, keyFile);
  let master: Buffer | null;
  if (kf.master) master = Buffer.from(kf.master, 'base64');
  else {
    if (!passphrase) throw new KuraError('E_KEY_MISSING', `key file ${keyFile} is passphrase-protected; set KURA_PASSPHRASE or give --passphrase-file`);
    master = await unwrapMasterKey(kf.slot!, passphrase, kf.repository);
    if (!master) throw new KuraError('E_KEY_WRONG', `the passphrase does not open key file ${keyFile}; check the passphrase`);
  }
  return { repositoryId: kf.repository, keys: deriveKeys(master, kf.repository) };
}

function newConfig(chunker: ChunkerParams, level: number): RepoConfig {
  return {
    format: REPO_FORMAT,
    id: randomBytes(16).toString('hex'),
    created: new Date().toISOString(),
    chunker: { algorithm: 'fastcdc-gear-v1', normalization: 2, ...chunker },
    compression: { algorithm: 'zstd', level },
    chunkId: 'blake3-keyed-256',
    cipher: 'aes-256-gcm',
  };
}

/**
 * The local directory of a new repository; on a local disk also the object directories, the
 * fan-out ones up front so the hot path never mkdirs.
 */
async function makeLayout(root: string, store: StoreBackend): Promise<void> {
  await fsp.mkdir(root, { recursive: true, mode: 0o750 });
  if (!store.local) return;
  await fsp.mkdir(path.join(store.local.root, 'snapshots'), { recursive: true });
  await fsp.mkdir(path.join(store.local.root, 'keys'), { recursive: true });
  for (let i = 0; i < 256; i++) await fsp.mkdir(path.join(store.local.root, 'packs', i.toString(16).padStart(2, '0')), { recursive: true });
}

async function loadSlots(store: StoreBackend): Promise<KeySlot[]> {
  const slots: KeySlot[] = [];
  for await (const name of store.list('keys/')) {
    const raw = await store.get(name);
    if (raw) slots.push(parseKeySlot(raw.toString('utf8'), name));
  }
  return slots.sort((a, b) => a.created.localeCompare(b.created));
}

async function unlock(store: StoreBackend, repositoryId: string, keys: KeySource): Promise<Buffer> {
  if (keys.keyFile) {
    let text: string;
    try {
      text = await fsp.readFile(keys.keyFile, 'utf8');
    } catch (e) {
      throw new KuraError('E_KEY_FILE', `cannot read key file ${keys.keyFile}: ${(e as Error).message}`);
    }
    const kf = parseKeyFile(text, keys.keyFile);
    if (kf.repository !== repositoryId) {
      throw new KuraError('E_KEY_WRONG', `key file ${keys.keyFile} belongs to repository ${kf.repository}, not ${repositoryId}; give this repository's key file`);
    }
    if (kf.master) return Buffer.from(kf.master, 'base64');
    if (!keys.passphrase) throw new KuraError('E_KEY_MISSING', `key file ${keys.keyFile} is passphrase-protected; set KURA_PASSPHRASE or give --passphrase-file`);
    const m = await unwrapMasterKey(kf.slot!, keys.passphrase, repositoryId);
    if (!m) throw new KuraError('E_KEY_WRONG', `the passphrase does not open key file ${keys.keyFile}; check the passphrase`);
    return m;
  }
  if (!keys.passphrase) {
    throw new KuraError('E_KEY_MISSING', 'the repository key is needed: set KURA_PASSPHRASE, give --passphrase-file, or --key-file');
  }
  const slots = await loadSlots(store);
  if (slots.length === 0) throw new KuraError('E_KEY_WRONG', `repository ${store.location} has no passphrase key slots; open it with --key-file`);
  for (const slot of slots) {
    const m = await unwrapMasterKey(slot, keys.passphrase, repositoryId);
    if (m) return m;
  }
  throw new KuraError('E_KEY_WRONG', `the passphrase opens none of the ${slots.length} key slot(s) of ${store.location}; check KURA_PASSPHRASE or --passphrase-file`);
}
