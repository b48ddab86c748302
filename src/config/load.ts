import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { KuraError } from '../errors.js';
import { configSchema, type KuraConfig } from './schema.js';
import { configPath } from './path.js';
import { configReferences, fileReferences, formatReferenceIssues, readableFile } from './references.js';

export { configPath };

export interface LoadedConfig {
  config: KuraConfig;
  /** null when no file was given and ./kura.yaml does not exist (built-in defaults). */
  path: string | null;
}

/** Where the config comes from: --config, then KURA_CONFIG, then ./kura.yaml if present. */
export function formatIssues(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.map((i) => {
    const where = i.path.length ? i.path.map(String).join('.') : '(top level)';
    const missing = i.code === 'invalid_type' && (i as { input?: unknown }).input === undefined;
    return `${where}: ${missing ? `required setting is missing (expected ${i.expected})` : i.message}`;
  });
}

export function parseConfig(text: string, file: string): KuraConfig {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const lines = doc.errors.map((e) => `${file}:${e.linePos?.[0]?.line ?? '?'}:${e.linePos?.[0]?.col ?? '?'}: ${e.message.split('\n')[0]}`);
    throw new KuraError('E_CONFIG', `config ${file} is not valid YAML:\n  ${lines.join('\n  ')}`, { errors: lines });
  }
  const raw: unknown = doc.toJS() ?? {};
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    const lines = formatIssues(parsed.error.issues);
    throw new KuraError('E_CONFIG', `config ${file} has ${lines.length} error(s):\n  ${lines.join('\n  ')}`, { errors: lines });
  }
  const refs = formatReferenceIssues(configReferences(parsed.data));
  if (refs.length > 0) throw new KuraError('E_CONFIG', `config ${file} has ${refs.length} error(s):\n  ${refs.join('\n  ')}`, { errors: refs });
  return parsed.data;
}

/**
 * At the start of a daemon or job (and in `config check`): the files the config names must be
 * readable here, each problem named by its path, before anything runs.
 */
export function checkFiles(cfg: KuraConfig, roles: Parameters<typeof fileReferences>[2], file: string | null): void {
  const issues = formatReferenceIssues(fileReferences(cfg, readableFile, roles));
  if (issues.length > 0) throw new KuraError('E_CONFIG', `config ${file ?? '(built-in defaults)'} names ${issues.length} file(s) this host cannot read:\n  ${issues.join('\n  ')}`, { errors: issues });
}

export function loadConfig(flag?: string): LoadedConfig {
  const { path: p, explicit } = configPath(flag);
  let text: string;
  try {
    text = readFileSync(p, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !explicit) return { config: configSchema.parse({}), path: null };
    throw new KuraError(
      'E_CONFIG',
      code === 'ENOENT'
        ? `config file ${p} does not exist; fix --config / KURA_CONFIG, or print an example with "kura config example"`
        : `cannot read config file ${p}: ${(e as Error).message}`,
    );
  }
  return { config: parseConfig(text, p), path: path.resolve(p) };
}
