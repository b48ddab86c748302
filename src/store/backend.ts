/**
 * The one storage interface every backend implements (fs, s3: src/store/registry.ts picks one
 * from the config); cross-cutting behaviour (retry, accounting) wraps a backend rather than
 * living inside it (src/store/wrappers.ts).
 *
 * Names are slash-separated: "config", "keys/<id>", "packs/<ab>/<pack id hex>",
 * "snapshots/<snapshot id hex>".
 */
export interface StoreStat {
  size: number;
  mtimeMs: number;
}

/**
 * What only a local directory can do, offered by the fs backend and used by the pipeline when
 * present: compression workers read delta bases straight from `root` without a round trip
 * through the main thread, and temp files of killed writers are cleaned up.
 */
export interface LocalDisk {
  /** the directory objects live in ("packs/ab/<id>" is a file under it) */
  readonly root: string;
  /** Remove temp files left by killed writers, those older than `olderThanMs`; how many. */
  removeStaleTemps(olderThanMs: number): Promise<number>;
  /**
   * getRanges, blocking the calling thread: for a restore, whose main thread otherwise spent a
   * tenth of its time on promise and file-handle machinery; null when the object is absent.
   */
  getRangesSync(name: string, ranges: ReadonlyArray<{ offset: number; length: number }>): Buffer[] | null;
}

/** What the writer of an object already knows of its bytes. */
export interface PutHints {
  /** their SHA-256, hex: an object store signs the upload with it rather than hashing the bytes again */
  sha256?: string | undefined;
}

export interface StoreBackend {
  /** Human-readable location for messages. */
  readonly location: string;
  /** Whole object; throws KuraError E_IO, or returns null when absent. */
  get(name: string): Promise<Buffer | null>;
  /** `length` bytes at `offset` (a negative offset counts from the end); null when absent. */
  getRange(name: string, offset: number, length: number): Promise<Buffer | null>;
  /**
   * Several ranges of one object (opened once; offsets as for getRange); null when absent, a short
   * buffer past its end. `into`, a buffer at least as long as the ranges together: the ranges may
   * be read into it back to back (a reader that reuses one buffer); the answer says where they are.
   */
  getRanges(name: string, ranges: ReadonlyArray<{ offset: number; length: number }>, into?: Buffer): Promise<Buffer[] | null>;
  /** Atomic and durable create: true if written, false if the name already existed (never overwrites). */
  putIfAbsent(name: string, data: Uint8Array): Promise<boolean>;
  /**
   * Atomic and durable create of a content-addressed object (a pack); its name is durable after
   * sync(). An object of that name already holds the same bytes, so finding one is success.
   * The catalogue vouches for packs (rows are added only after sync()), so a pack left damaged
   * by a power cut is simply never used, and its chunks are written again by the next backup.
   */
  put(name: string, data: Uint8Array | readonly Uint8Array[], hints?: PutHints): Promise<void>;
  /** Atomic replace of a small mutable object (config, key slots). */
  replace(name: string, data: Uint8Array): Promise<void>;
  /** Names under a prefix ("data/", "snapshots/"), in no particular order. */
  list(prefix: string): AsyncIterable<string>;
  /** The same with each object's size in bytes: on an object store from the listing itself, no request per object. */
  listWithSizes(prefix: string): AsyncIterable<{ name: string; size: number }>;
  delete(name: string): Promise<void>;
  stat(name: string): Promise<StoreStat | null>;
  /** Make every write so far durable. */
  sync(): Promise<void>;
  /** Abilities of a local directory; undefined on object stores. */
  readonly local?: LocalDisk | undefined;
  /** Release connections (object stores); optional. */
  close?(): void;
}

export function packName(idHex: string): string {
  return `packs/${idHex.slice(0, 2)}/${idHex}`;
}

export function snapshotName(idHex: string): string {
  return `snapshots/${idHex}`;
}
