/**
 * Entry of the bundles (as CommonJS, with everything it imports): the single executable's
 * (scripts/package.mjs) and a checkout's dist/kura.cjs (scripts/bundle.mjs), which bin/kura runs
 * when it is current; without it bin/kura does the same itself. The threadpool size must be set
 * before the first async I/O, which happens only once main() runs.
 */
import { KuraError } from '../errors.js';
import { deriveAhead } from '../crypto/kdf-ahead.js';
import { fromCheckoutBundle } from './embedded.js';
import { nativeAddon } from '../native.js';

process.env.UV_THREADPOOL_SIZE ??= '16';
// the native addon limits glibc's malloc arenas as it loads: before other threads first allocate (bin/kura loaded it already for a checkout's bundle)
if (!fromCheckoutBundle()) nativeAddon();
// a reader that went away (`kura snapshots | head`) ends the output, not in a stack trace
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(141);
  throw e;
});

/** The KuraError behind an error a library wrapped (a native addon the cache refused to load). */
function kuraErrorIn(e: unknown): KuraError | null {
  for (let c = e; c; c = (c as { cause?: unknown }).cause) if (c instanceof KuraError) return c;
  return null;
}

// the repository key's derivation runs in the thread pool while the command's code loads (bin/kura
// started it already when it runs this as a checkout's bundle)
if (!fromCheckoutBundle()) deriveAhead(process.argv.slice(2), process.env);
import('../cli/main.js')
  .then(({ main }) => main(process.argv))
  .then(
    (code) => {
      process.exitCode = code;
    },
    // main() reports its own errors; this is loading the code itself failing
    (e: unknown) => {
      const err = kuraErrorIn(e) ?? new KuraError('E_INTERNAL', `kura cannot start: ${(e as Error)?.message ?? String(e)} (rerun with --debug and report it)`);
      process.stderr.write(`kura: ${err.code}: ${err.message}\n`);
      if (process.argv.includes('--debug')) process.stderr.write(`${(e as Error)?.stack ?? String(e)}\n`);
      process.exitCode = err.exitStatus;
    },
  );
