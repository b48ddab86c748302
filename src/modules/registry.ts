import { z } from 'zod';

/**
 * Pluggable modules of the one config file: `modules.<kind>.type` selects an implementation
 * registered here, each with its own options schema (fastify-style registry keyed by name).
 */
export type ModuleKind = 'sso' | 'routing' | 'virtualization';

export interface ModuleDefinition {
  kind: ModuleKind;
  type: string;
  description: string;
  /** Options schema; must include `type: z.literal(<type>)`. */
  options: z.ZodObject<{ type: z.ZodLiteral<string> } & z.ZodRawShape>;
}

const registry: Record<ModuleKind, ModuleDefinition[]> = { sso: [], routing: [], virtualization: [] };

export function registerModule(def: ModuleDefinition): void {
  if (registry[def.kind].some((d) => d.type === def.type)) throw new Error(`module ${def.kind}/${def.type} registered twice`);
  registry[def.kind].push(def);
}

export function registeredModules(kind: ModuleKind): readonly ModuleDefinition[] {
  return registry[kind];
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
  return union.default({ type: defaultType } as never).describe(`${kind} module: ${defs.map((d) => `${d.type} (${d.description})`).join('; ')}`);
}
