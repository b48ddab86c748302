import { z } from 'zod';
import type { StaticRoute } from './routing/static.js';
import type { BackupGroup } from './virtualization/plan.js';
import type { Identity } from '../sso/roles.js';

/**
 * Pluggable modules of the one config file: `modules.<kind>.type` selects an implementation
 * registered here, with its options schema *and* its code (fastify-style registry keyed by
 * name). Callers ask `moduleOf(cfg, kind)` for the implementation; nothing outside the
 * registry looks at a module's `type`.
 */
export interface RoutingModule {
  /** destination name → its endpoints and transfer rules */
  readonly routes: Readonly<Record<string, StaticRoute>>;
}

export interface SsoModule {
  /** whether operators must sign in through an identity provider (false: SSH keys and local accounts alone) */
  readonly signIn: boolean;
  /** the identity provider this entry of modules.sso trusts (none: null) */
  readonly provider: IdentityProvider | null;
}

/**
 * One trusted identity provider, as the vault's operator endpoint uses it (src/vault/operator):
 * `begin` gives the URL the browser goes to for a sign-in named by `state`; the provider's answer
 * arrives at `/sso/<name>/<callback.path>` and `complete` checks it, or refuses with E_SSO_FAILED
 * naming the reason. `base` is the endpoint's public URL (vault.sso.publicUrl).
 */
export interface IdentityProvider {
  readonly name: string;
  readonly protocol: string;
  readonly callback: { method: 'GET' | 'POST'; path: string };
  /** files its options name (option → file, what it is), checked by kura config check and vault serve */
  readonly files: ReadonlyArray<{ option: string; file: string; what: string }>;
  begin(o: { state: string; base: string; stepUp: boolean; acr?: string | undefined }): Promise<string>;
  /** the sign-in an answer belongs to (OIDC state, SAML RelayState), or null */
  stateOf(params: URLSearchParams): string | null;
  complete(o: { state: string; base: string; params: URLSearchParams; stepUp: boolean; acr?: string | undefined; started: number }): Promise<Identity>;
  /** service-provider metadata to register with the provider (SAML), served at /sso/<name>/metadata */
  metadata?(base: string): string;
}

export interface VirtualizationModule {
  /** groups of members that share a hypervisor, datastore or backup device (none: every source on its own schedule) */
  readonly groups: readonly BackupGroup[];
}

export interface ModuleImplementations {
  sso: SsoModule;
  routing: RoutingModule;
  virtualization: VirtualizationModule;
}

export type ModuleKind = keyof ModuleImplementations;

export interface ModuleDefinition<K extends ModuleKind = ModuleKind> {
  kind: K;
  type: string;
  description: string;
  /** Options schema; must include `type: z.literal(<type>)`. */
  options: z.ZodObject<{ type: z.ZodLiteral<string> } & z.ZodRawShape>;
  /** The implementation for validated options. */
  create(options: Record<string, unknown>): ModuleImplementations[K];
}

const registry: { [K in ModuleKind]: Array<ModuleDefinition<K>> } = { sso: [], routing: [], virtualization: [] };

export function registerModule<K extends ModuleKind>(def: ModuleDefinition<K>): void {
  const list = registry[def.kind] as Array<ModuleDefinition<K>>;
  if (list.some((d) => d.type === def.type)) throw new Error(`module ${def.kind}/${def.type} registered twice`);
  list.push(def);
}

export function registeredModules<K extends ModuleKind>(kind: K): ReadonlyArray<ModuleDefinition<K>> {
  return registry[kind] as Array<ModuleDefinition<K>>;
}

/** Schema of `modules.<kind>`: one of the registered implementations, picked by `type`. */
export function moduleSchema(kind: ModuleKind, defaultType: string) {
  const defs = registry[kind];
  if (defs.length === 0) throw new Error(`no ${kind} module registered`);
  const types = defs.map((d) => d.type);
  const options = defs.map((d) => d.options) as unknown as [z.ZodObject, ...z.ZodObject[]];
  const union = z.discriminatedUnion('type', options, {
    error: (iss) =>
      iss.code === 'invalid_union' ? `unknown ${kind} module type ${JSON.stringify((iss.input as { type?: unknown })?.type)}; known: ${types.join(', ')}` : undefined,
  });
  return union.prefault({ type: defaultType } as never).describe(`${kind} module: ${defs.map((d) => `${d.type} (${d.description})`).join('; ')}`);
}

/** Schema of a `modules.<kind>` that may also be a list of implementations (e.g. several trusted identity providers). */
export function moduleListSchema(kind: ModuleKind, defaultType: string) {
  const one = moduleSchema(kind, defaultType);
  const list = z.array(one.unwrap()).min(1);
  // a union says only "Invalid input": name what is wrong in the form given (one, or a list)
  const why = (input: unknown): string | undefined => {
    const r = (Array.isArray(input) ? list : one).safeParse(input);
    const i = r.success ? undefined : r.error.issues[0];
    return i ? `${i.path.length ? `${i.path.map(String).join('.')}: ` : ''}${i.message}` : undefined;
  };
  return z
    .union([one, list], { error: (iss) => (iss.code === 'invalid_union' ? why(iss.input) : undefined) })
    .prefault({ type: defaultType } as never)
    .describe(`${one.description}; or a list of them (each with its own name)`);
}

const made = new WeakMap<object, unknown>();

/** The implementation a config's `modules.<kind>` selects (made once per validated options object). */
export function moduleOf<K extends ModuleKind>(cfg: { modules: { [k in K]: object } }, kind: K): ModuleImplementations[K] {
  const options = cfg.modules[kind];
  if (Array.isArray(options)) throw new Error(`modules.${kind} is a list: ask modulesOf(config, '${kind}')`);
  return implOf(kind, options as { type: string } & Record<string, unknown>);
}

/** Every implementation a config's `modules.<kind>` selects (one, or each entry of a list). */
export function modulesOf<K extends ModuleKind>(cfg: { modules: { [k in K]: object | object[] } }, kind: K): Array<ModuleImplementations[K]> {
  const v = cfg.modules[kind];
  return (Array.isArray(v) ? v : [v]).map((o) => implOf(kind, o as { type: string } & Record<string, unknown>));
}

function implOf<K extends ModuleKind>(kind: K, options: { type: string } & Record<string, unknown>): ModuleImplementations[K] {
  const cached = made.get(options);
  if (cached) return cached as ModuleImplementations[K];
  const def = registry[kind].find((d) => d.type === options.type) as ModuleDefinition<K> | undefined;
  if (!def) throw new Error(`no ${kind} module "${options.type}" is registered`);
  const impl = def.create(options);
  made.set(options, impl);
  return impl;
}
