// Writes N bytes of deterministic SQL-dump-like text to stdout (tests pipe it into kura).
// usage: node scripts/gen-stream.mjs SEED BYTES  — prints the sha256 of what it wrote to stderr
import { createHash } from 'node:crypto';
import { once } from 'node:events';
const { sqlDump } = await import('../dist/test/support/generate.js');
const [seed, bytes] = process.argv.slice(2).map(Number);
const h = createHash('sha256');
for await (const b of sqlDump(seed, bytes)) {
  h.update(b);
  if (!process.stdout.write(b)) await once(process.stdout, 'drain');
}
process.stderr.write(h.digest('hex') + '\n');
