import type { z } from 'zod';
import type { staticRoute } from '../modules/routing/static.js';
import { KuraError } from '../errors.js';
import type { KuraConfig } from '../config/schema.js';

export type StaticRoute = z.infer<typeof staticRoute>;

/** The routes of the config's routing module (without loading the relay itself: the agent only checks names). */
export function routesOf(cfg: KuraConfig): Record<string, StaticRoute> {
  const r = cfg.modules.routing as { type: string; routes?: Record<string, StaticRoute> };
  if (r.type !== 'static') throw new KuraError('E_CONFIG', `routing module ${r.type} is not supported by this relay`);
  return r.routes ?? {};
}
