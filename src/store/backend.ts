/**
 * The one storage interface every backend implements (fs now, s3 later); cross-cutting
 * behaviour (retry, read-only, accounting) wraps a backend rather than living inside it.
 *
 * Names are slash-separated: "config", "keys/<id>", "packs/<ab>/<pack id hex>",
 * "snapshots/<snapshot id hex>".
 */
export interface StoreStat {
  size: number;
  mtimeMs: number;
}

export interface StoreBackend {
  /** Human-readable location for messages. */
  readonly location: string;
  /** Whole object; throws KuraError E_IO, or returns null when absent. */
  get(name: string): Promise<Buffer | null>;
  /** `length` bytes at `offset` (a negative offset counts from the end); null when absent. */
  getRange(name: string, offset: number, length: number): Promise<Buffer | null>;
  /** Several ranges of one object (opened once; offsets as for getRange); null when absent, a short buffer past its end. */
  getRanges(name: string, ranges: ReadonlyArray<{ offset: number; length: number }>): Promise<Buffer[] | null>;
  /** Atomic and durable create: true if written, false if the name already existed (never overwrites). */
  putIfAbsent(name: string, data: Uint8Array): Promise<boolean>;
  /**
   * Atomic and durable create-or-replace of a content-addressed object (a pack); its name is
   * durable after sync().
   * The catalogue vouches for packs (rows are added only after sync()), so a pack left damaged
   * by a power cut is simply never used, and its chunks are written again by the next backup.
   */
  put(name: string, data: Uint8Array | readonly Uint8Array[]): Promise<void>;
  /** Atomic replace of a small mutable object (config, key slots). */
  replace(name: string, data: Uint8Array): Promise<void>;
  /** Names under a prefix ("data/", "snapshots/"), in no particular order. */
  list(prefix: string): AsyncIterable<string>;
  delete(name: string): Promise<void>;
  /**
   * Delete, synchronously: GC removes a pack inside the catalogue transaction that proved it
   * unused, so no session can start using it between the proof and the removal.
   */
  deleteSync(name: string): void;
  stat(name: string): Promise<StoreStat | null>;
  /** Make every write so far durable, and the objects adopt()ed since the last sync. */
  sync(): Promise<void>;
  /**
   * An object a worker thread wrote straight into directWriteRoot() (its bytes flushed there):
   * the next sync() makes its name durable too.
   */
  adopt(name: string): void;
  /** A local directory that worker threads may put() packs into themselves, or null. */
  directWriteRoot(): string | null;
}

export function packName(idHex: string): string {
  return `packs/${idHex.slice(0, 2)}/${idHex}`;
}

export function snapshotName(idHex: string): string {
  return `snapshots/${idHex}`;
}
