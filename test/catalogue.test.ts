import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { tempDir } from './support/cli.js';
import { Catalogue } from '../src/repository/catalogue.js';

test('locations: one answer per ID asked, in its order (repeats, IDs not held, more than one statement holds), digests only when asked for', (t) => {
  const dir = tempDir(t);
  const cat = new Catalogue(path.join(dir, 'catalogue.sqlite'));
  t.after(() => cat.close());
  const id = (n: number) => {
    const b = Buffer.alloc(32);
    b.writeUInt32BE(Math.imul(n, 2654435761) >>> 0, 0); // the IDs sort in another order than they are asked in
    b.writeUInt32BE(n, 28);
    return b;
  };
  const packs = ['a'.repeat(64), 'b'.repeat(64), 'c'.repeat(64)];
  const rows = Array.from({ length: 9000 }, (_, n) => ({
    id: id(n),
    pack: packs[n % 3]!,
    offset: n * 10,
    storedSize: 10 + (n % 7),
    plainSize: 4096,
    digest: n % 5 === 0 ? null : Buffer.alloc(16, n % 251),
  }));
  cat.addChunks(rows);
  const held = (n: number) => ({ pack: packs[n % 3]!, offset: n * 10, length: 10 + (n % 7) });
  // a table of the cases: what is asked, what comes back
  const cases: Array<{ why: string; ask: number[] }> = [
    { why: 'nothing asked', ask: [] },
    { why: 'one', ask: [42] },
    { why: 'out of order, with repeats', ask: [7, 3, 7, 8999, 0, 3] },
    { why: 'IDs not held among held ones', ask: [1, 100_000, 2, 100_001] },
    { why: 'more than one statement holds (4096 a statement)', ask: Array.from({ length: 9000 }, (_, i) => (i * 7919) % 9000) },
    { why: 'none held', ask: [100_002, 100_003] },
  ];
  for (const c of cases) {
    const ids = c.ask.map(id);
    const want = c.ask.map((n) => (n < 9000 ? held(n) : undefined));
    const bare = cat.locations(ids, false);
    assert.deepEqual(
      bare.map((l) => l && { pack: l.pack, offset: l.offset, length: l.length }),
      want,
      c.why,
    );
    assert.ok(bare.every((l) => !l || l.digest === null), `${c.why}: no digests unless asked for`);
    const full = cat.locations(ids);
    assert.equal(full.length, ids.length, c.why);
    full.forEach((l, i) => {
      const n = c.ask[i]!;
      if (n >= 9000) return assert.equal(l, undefined, c.why);
      assert.deepEqual(l, { ...held(n), digest: rows[n]!.digest }, `${c.why}: ID ${n} with its digest`);
    });
  }
});
