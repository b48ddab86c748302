import { Worker, type WorkerOptions } from 'node:worker_threads';
import { embeddedWorkerSource } from './embedded.js';

/**
 * In the single executable the bundler replaces each module's import.meta.url by this base plus
 * the module's path under dist/, so a worker's URL names the bundled worker script to run.
 */
export const EMBEDDED_URL_BASE = 'file:///kura-executable/';

/** `new Worker(script)`, or in the single executable the same script from its embedded bundle. */
export function startWorker(script: URL, options: WorkerOptions = {}): Worker {
  const source = script.href.startsWith(EMBEDDED_URL_BASE) ? embeddedWorkerSource(script.href.slice(EMBEDDED_URL_BASE.length)) : null;
  return source === null ? new Worker(script, options) : new Worker(source, { ...options, eval: true });
}
