import { createRequire } from 'node:module';
import { KuraError } from '../../errors.js';
import type { StorageSpec } from '../../store/registry.js';
import type { LeaseObservation, LeaseRecord, NodeRecord } from './policy.js';

const require = createRequire(import.meta.url);

/** One small object of the nodes' area, as read, with the store's timestamps. */
export interface StoredObject {
  body: Buffer;
  etag: string;
  lastModifiedMs: number;
  storeNowMs: number | null;
}

/**
 * Where vault nodes keep tenant leases and their own records (<prefix>nodes/ of the bucket):
 * small objects written only by conditional writes (create if absent, replace if unchanged).
 * Names: "leases/<tenant>", "members/<node>"; and each node's audit segments,
 * "audit/<node>/<segment>.jsonl", which only that node writes (put).
 */
export interface LeaseStore {
  readonly location: string;
  read(name: string): Promise<StoredObject | null>;
  /** etag null: create only if absent; else replace only that version. The new ETag, or null when the condition failed. */
  write(name: string, body: Uint8Array, etag: string | null): Promise<string | null>;
  list(prefix: string): Promise<string[]>;
  /** Write unconditionally (objects only one node ever writes: its audit segments). */
  put(name: string, body: Uint8Array): Promise<void>;
  close(): void;
}

/**
 * Lease stores by storage type (a registry holding the code): only stores with atomic
 * conditional writes visible to every node qualify; fs has no shared medium between hosts.
 */
const leaseStores: Record<string, (spec: StorageSpec) => LeaseStore> = {
  s3: (spec) => new (require('./s3-leases.js') as typeof import('./s3-leases.js')).S3LeaseStore(spec),
};

export function openLeaseStore(spec: StorageSpec | undefined): LeaseStore {
  const make = spec ? leaseStores[spec.type] : undefined;
  if (!make) throw new KuraError('E_CONFIG', `vault.node needs a vault.storage shared by the nodes (type ${Object.keys(leaseStores).join(' or ')}); storage type ${spec?.type ?? 'fs'} is one host's disk: remove vault.node, or move the tenants to s3`);
  return make(spec!);
}

export const leaseName = (tenant: string) => `leases/${tenant}`;
export const memberName = (node: string) => `members/${node}`;

/** A lease object's record, or an E_IO naming it when it is not one (nothing overwrites it blindly). */
export function parseLease(name: string, o: StoredObject): LeaseObservation {
  let record: LeaseRecord;
  try {
    record = JSON.parse(o.body.toString('utf8')) as LeaseRecord;
  } catch {
    throw new KuraError('E_IO', `lease object ${name} is not JSON; look at it, and delete it if nothing holds the tenant (a node then takes it)`);
  }
  if (typeof record.counter !== 'number' || typeof record.ttlMs !== 'number' || !(record.node === null || typeof record.node === 'string')) {
    throw new KuraError('E_IO', `lease object ${name} is not a kura tenant lease; look at it, and delete it if nothing holds the tenant`);
  }
  return { record, etag: o.etag, lastModifiedMs: o.lastModifiedMs, storeNowMs: o.storeNowMs };
}

export function parseMember(o: StoredObject): NodeRecord | null {
  try {
    const r = JSON.parse(o.body.toString('utf8')) as NodeRecord;
    return typeof r.node === 'string' && typeof r.ttlMs === 'number' ? r : null;
  } catch {
    return null;
  }
}
