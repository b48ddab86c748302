/**
 * The one storage interface every backend implements (fs now, s3 later); cross-cutting
 * behaviour (retry, read-only, accounting) wraps a backend rather than living inside it.
 *
 * Names are slash-separated: "config", "keys/<id>", "data/<ab>/<chunk id hex>",
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
  /** Atomic and durable create: true if written, false if the name already existed (never overwrites). */
  putIfAbsent(name: string, data: Uint8Array): Promise<boolean>;
  /**
   * Atomic create-or-replace of a content-addressed blob, durable only after sync(). For chunk
   * blobs, whose presence the catalogue vouches for (a row is added only after sync()), so a
   * blob left damaged by a power cut is simply written again by the next backup.
   */
  put(name: string, data: Uint8Array): Promise<void>;
  /** Atomic replace of a small mutable object (config, key slots). */
  replace(name: string, data: Uint8Array): Promise<void>;
  /** Names under a prefix ("data/", "snapshots/"), in no particular order. */
  list(prefix: string): AsyncIterable<string>;
  delete(name: string): Promise<void>;
  stat(name: string): Promise<StoreStat | null>;
  /** Make every write so far durable, including put()s made by worker threads. */
  sync(): Promise<void>;
  /** A local directory that worker threads may put() chunk blobs into themselves, or null. */
  directWriteRoot(): string | null;
}

export function chunkName(idHex: string): string {
  return `data/${idHex.slice(0, 2)}/${idHex}`;
}

export function snapshotName(idHex: string): string {
  return `snapshots/${idHex}`;
}
