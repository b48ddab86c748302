/**
 * Entry of the single executable (scripts/package.mjs bundles it, as CommonJS, with everything it
 * imports): what bin/kura does for a checkout. The threadpool size must be set before the first
 * async I/O, which happens only once main() runs.
 */
process.env.UV_THREADPOOL_SIZE ??= '16';
// a reader that went away (`kura snapshots | head`) ends the output, not in a stack trace
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(141);
  throw e;
});
void import('../cli/main.js')
  .then(({ main }) => main(process.argv))
  .then((code) => {
    process.exitCode = code;
  });
