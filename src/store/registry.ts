import { z } from 'zod';
import { KuraError } from '../errors.js';
import type { StoreBackend } from './backend.js';
import { probeConditionalPut } from './probe.js';
import { storeCounters, withAccounting, withRetry } from './wrappers.js';

/**
 * Storage backends by name, each with its options schema *and* its code (restic's
 * internal/backend/location registry): the config's `repository.type` and `vault.storage.type`
 * pick one, `openStore()` builds it with the cross-cutting wrappers around it, and nothing
 * outside a backend's own folder knows which one it got. Adding a backend is one folder and one
 * registerStorage() line in ./index.ts.
 */
export type StorageSpec = { type: string } & Record<string, unknown>;

/**
 * Where one repository's objects go. `dir` is its local directory (the catalogue and caches;
 * on fs also the objects); `scope` separates repositories sharing one store ("" for an agent's
 * repository, "tenants/<name>/" for a vault tenant).
 */
export interface StoreScope {
  dir: string;
  scope: string;
}

export interface StorageDefinition {
  type: string;
  description: string;
  /** Options schema; must include `type: z.literal(<type>)`. */
  options: z.ZodObject<{ type: z.ZodLiteral<string> } & z.ZodRawShape>;
  /** The backend for validated options, bare (openStore() adds the wrappers). */
  open(options: StorageSpec, where: StoreScope): StoreBackend;
  /** Make the container exist (a bucket) when a repository is created; optional. */
  prepare?(options: StorageSpec, where: StoreScope): Promise<void>;
  /**
   * Whether a conditional create must be proved before the store is trusted (object stores,
   * where a server or proxy may ignore If-None-Match); fs creates with link(2), which cannot
   * overwrite.
   */
  probeConditionalCreate: boolean;
}

const registry: StorageDefinition[] = [];

export function registerStorage(def: StorageDefinition): void {
  if (registry.some((d) => d.type === def.type)) throw new Error(`storage ${def.type} registered twice`);
  registry.push(def);
}

export function registeredStorage(): readonly StorageDefinition[] {
  return registry;
}

function definitionOf(type: string): StorageDefinition {
  const def = registry.find((d) => d.type === type);
  if (!def) throw new KuraError('E_CONFIG', `unknown storage type "${type}"; known: ${registry.map((d) => d.type).join(', ')}`);
  return def;
}

/**
 * Schema of a storage choice: one registered backend's options picked by `type` (default
 * `fs`, so a `{ path }` written before there were backends still reads), each extended with
 * `extra` (the fields of the place that holds it, e.g. the repository's key file).
 */
export function storageSchema<E extends z.ZodRawShape>(extra: E, defaultType = 'fs') {
  if (registry.length === 0) throw new Error('no storage backend registered');
  const types = registry.map((d) => d.type);
  const options = registry.map((d) => d.options.extend(extra)) as unknown as [z.ZodObject, ...z.ZodObject[]];
  const union = z.discriminatedUnion('type', options, {
    error: (iss) => (iss.code === 'invalid_union' ? `unknown storage type ${JSON.stringify((iss.input as { type?: unknown })?.type)}; known: ${types.join(', ')}` : undefined),
  });
  const schema = z.preprocess((v) => (v && typeof v === 'object' && !Array.isArray(v) && !('type' in v) ? { ...v, type: defaultType } : v), union);
  // the union is built at run time from the registry: its static type is the common shape
  return schema as unknown as z.ZodType<StorageSpec & z.output<z.ZodObject<E>>, unknown>;
}

/**
 * The backend a spec names, wrapped: retry (capped back-off on transient failures) around
 * accounting (each request that reaches the medium counts, retries included).
 */
export function openStore(spec: StorageSpec, where: StoreScope): StoreBackend {
  const def = definitionOf(spec.type);
  const counters = storeCounters(def.type);
  const raw = def.open(spec, where);
  return withRetry(withAccounting(raw, counters), {
    attempts: 6,
    baseMs: 200,
    capMs: 5_000,
    onRetry: (op) => counters.retries.set(op, (counters.retries.get(op) ?? 0) + 1),
  });
}

/** Prepare the container (bucket) of a new repository and, for object stores, prove conditional creates work. */
export async function prepareStore(spec: StorageSpec, where: StoreScope, store: StoreBackend): Promise<void> {
  const def = definitionOf(spec.type);
  await def.prepare?.(spec, where);
  await verifyStore(spec, store);
}

/** Refuse a store that overwrites on a conditional create (E_STORE_UNSAFE); a no-op where creates cannot overwrite. */
export async function verifyStore(spec: StorageSpec, store: StoreBackend): Promise<void> {
  if (!definitionOf(spec.type).probeConditionalCreate) return;
  await probeConditionalPut(store);
}

/** The spec of the local directory `dir` as a store of its own (`--repo DIR`). */
export const FS_SPEC: StorageSpec = { type: 'fs' };
