import { existsSync } from 'node:fs';

/** Tenant of a host whose config names none (the schema's default). */
export const DEFAULT_TENANT = 'default';

/** Which config file applies: --config, else KURA_CONFIG, else ./kura.yaml (optional). */
export function configPath(flag: string | undefined, env = process.env): { path: string; explicit: boolean } {
  if (flag) return { path: flag, explicit: true };
  if (env.KURA_CONFIG) return { path: env.KURA_CONFIG, explicit: true };
  return { path: 'kura.yaml', explicit: false };
}

/** Whether any config file applies (without loading the YAML parser and schema). */
export function hasConfigFile(flag: string | undefined, env = process.env): boolean {
  const { path, explicit } = configPath(flag, env);
  return explicit || existsSync(path);
}
