import type { VaultConfig } from '../../config/schema.js';
import type { StoreBackend } from '../../store/backend.js';
import { openStore } from '../../store/registry.js';
import { tenantLocation } from '../vault.js';

/**
 * A tenant's footprint in its store, from the store's own listing (a function over
 * `listWithSizes`, so any backend gives it): what is really there, whichever node wrote it. The
 * figure is the bytes of its packs and snapshot files, as `kura vault usage` counts on one disk.
 */
export interface StoreFootprint {
  storedBytes: number;
  snapshots: number;
  packs: number;
  /** when it was listed (ISO) */
  listedAt: string;
}

export async function storeFootprint(store: StoreBackend, now: () => Date = () => new Date()): Promise<StoreFootprint> {
  let storedBytes = 0;
  let packs = 0;
  let snapshots = 0;
  for await (const o of store.listWithSizes('packs/')) {
    storedBytes += o.size;
    packs++;
  }
  for await (const o of store.listWithSizes('snapshots/')) {
    storedBytes += o.size;
    snapshots++;
  }
  return { storedBytes, snapshots, packs, listedAt: now().toISOString() };
}

/**
 * The cache rule: a listing serves for `maxAgeMs` after it was made (bytes written through this
 * node since are added to it); then the tenant is listed again. Pure: the caller's clock.
 */
export function footprintFresh(listedAtMs: number | null, nowMs: number, maxAgeMs: number): boolean {
  return listedAtMs !== null && nowMs >= listedAtMs && nowMs - listedAtMs < maxAgeMs;
}

/** How long a serving node reuses a tenant's listing (quota checks, USAGE). */
export const FOOTPRINT_MAX_AGE_MS = 30_000;

interface Entry {
  footprint: StoreFootprint;
  listedMs: number;
  /** bytes this node stored for the tenant since the listing */
  added: number;
  location: string;
}

/** The stored figure of a tenant as usage and quota report it, with where it came from. */
export interface StoredFigure {
  bytes: number;
  snapshots: number;
  /** "store listing of s3://… at <time>" (+ bytes written here since) */
  from: string;
  listedAt: string;
}

/**
 * Per-tenant footprints of a vault's tenants, each listed at most every `maxAgeMs` (listing is
 * not free: a request per thousand objects), plus the bytes this process stored since. Used by
 * the quota check at the start of a session's uploads and by USAGE: every node gives the same
 * figure for every tenant, the holder or not, and after a takeover it is what the bucket holds.
 */
export class StoreUsage {
  private readonly entries = new Map<string, Entry>();
  private readonly listing = new Map<string, Promise<Entry>>();

  constructor(
    private readonly cfg: VaultConfig,
    private readonly maxAgeMs = FOOTPRINT_MAX_AGE_MS,
    private readonly clock: () => number = Date.now,
  ) {}

  async stored(tenant: string): Promise<StoredFigure> {
    const e = await this.entry(tenant);
    return {
      bytes: e.footprint.storedBytes + e.added,
      snapshots: e.footprint.snapshots,
      from: `store listing of ${e.location} at ${e.footprint.listedAt}${e.added ? ` + ${e.added} bytes stored through this node since` : ''}`,
      listedAt: e.footprint.listedAt,
    };
  }

  /** This process wrote `bytes` more of the tenant's objects (a pack). */
  added(tenant: string, bytes: number): void {
    const e = this.entries.get(tenant);
    if (e) e.added += bytes;
  }

  private entry(tenant: string): Promise<Entry> {
    const e = this.entries.get(tenant);
    const now = this.clock();
    if (e && footprintFresh(e.listedMs, now, this.maxAgeMs)) return Promise.resolve(e);
    let p = this.listing.get(tenant);
    if (!p) {
      p = this.list(tenant).finally(() => this.listing.delete(tenant));
      this.listing.set(tenant, p);
    }
    return p;
  }

  private async list(tenant: string): Promise<Entry> {
    const where = tenantLocation(this.cfg, tenant);
    const store = typeof where === 'string' ? openStore({ type: 'fs' }, { dir: where, scope: '' }) : openStore(where.storage, { dir: where.dir, scope: where.scope ?? '' });
    try {
      const listedMs = this.clock();
      const footprint = await storeFootprint(store, () => new Date(listedMs));
      const e: Entry = { footprint, listedMs, added: 0, location: store.location };
      this.entries.set(tenant, e);
      return e;
    } finally {
      store.close?.();
    }
  }
}
