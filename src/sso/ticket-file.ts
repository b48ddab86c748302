import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KuraError } from '../errors.js';
import { decodeTicket, type OperatorTicket } from './ticket.js';

/**
 * The operator's side: the ticket `kura login --from ROUTE` received, kept per route in the
 * operator's config directory (`$KURA_CONFIG_DIR`, else `$XDG_CONFIG_HOME/kura`, else
 * `~/.config/kura`), under `tickets/<route>.json`, mode 0600 in a 0700 directory.
 */
export interface SavedTicket {
  route: string;
  token: string;
  ticket: OperatorTicket;
  saved: string;
}

export function operatorConfigDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KURA_CONFIG_DIR) return env.KURA_CONFIG_DIR;
  const base = env.XDG_CONFIG_HOME || path.join(env.HOME || os.homedir(), '.config');
  return path.join(base, 'kura');
}

export function ticketPath(route: string, env: NodeJS.ProcessEnv = process.env): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(route)) throw new KuraError('E_USAGE', `route name ${JSON.stringify(route)} cannot name a ticket file`);
  return path.join(operatorConfigDir(env), 'tickets', `${route}.json`);
}

export function saveTicket(route: string, token: string, env: NodeJS.ProcessEnv = process.env): SavedTicket {
  const file = ticketPath(route, env);
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  chmodSync(path.dirname(file), 0o700);
  const saved: SavedTicket = { route, token, ticket: decodeTicket(token), saved: new Date().toISOString() };
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(saved, null, 2) + '\n', { mode: 0o600 });
  renameSync(tmp, file);
  return saved;
}

/** The saved ticket of a route, or null when there is none (not verified: only the vault can). */
export function loadTicket(route: string, env: NodeJS.ProcessEnv = process.env): SavedTicket | null {
  const file = ticketPath(route, env);
  if (!existsSync(file)) return null;
  try {
    const s = JSON.parse(readFileSync(file, 'utf8')) as SavedTicket;
    return { ...s, ticket: decodeTicket(s.token) };
  } catch {
    throw new KuraError('E_TICKET_INVALID', `the saved ticket ${file} cannot be read: run kura login --from ${route} again`);
  }
}

export function removeTicket(route: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const file = ticketPath(route, env);
  if (!existsSync(file)) return false;
  rmSync(file);
  return true;
}
