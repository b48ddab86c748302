import type { KuraConfig } from '../config/schema.js';
import { moduleOf } from '../modules/registry.js';
import type { StaticRoute } from '../modules/routing/static.js';

export type { StaticRoute };

/** The routes of the config's routing module (without loading the relay itself: the agent only checks names). */
export function routesOf(cfg: KuraConfig): Readonly<Record<string, StaticRoute>> {
  return moduleOf(cfg, 'routing').routes;
}
