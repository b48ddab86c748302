import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { tempDir } from './support/cli.js';
import { Catalogue } from '../src/repository/catalogue.js';

test('locations and present: one answer per ID asked, in its order (repeats, IDs not held, more than one statement holds), digests only when asked for', (t) => {
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
    {
      why: 'IDs not held in every statement of several',
      ask: Array.from({ length: 9000 }, (_, i) => (i % 997 === 5 ? 100_004 + i : (i * 7919) % 9000)),
    },
  ];
  for (const c of cases) {
    const ids = c.ask.map(id);
    const want = c.ask.map((n) => (n < 9000 ? held(n) : undefined));
    assert.deepEqual(cat.present(ids), c.ask.map((n) => n < 9000), `${c.why}: present`);
    assert.deepEqual(cat.presentIn(Buffer.concat([...ids, Buffer.alloc(5)]), 32), c.ask.map((n) => n < 9000), `${c.why}: present, side by side (a partial ID at the end ignored)`);
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

test('bases.needed looks IDs and bases up thousands a statement and answers as one lookup at a time would: bases held, missing, in the list, shared prefixes', (t) => {
  const dir = tempDir(t);
  const cat = new Catalogue(path.join(dir, 'catalogue.sqlite'));
  t.after(() => cat.close());
  const id = (kind: number, n: number, tail = 0) => {
    const b = Buffer.alloc(32, tail);
    b[0] = kind;
    b.writeUInt32BE(Math.imul(n, 2654435761) >>> 0, 1);
    b.writeUInt16BE(n & 0xffff, 5);
    b[7] = n >> 16;
    return b;
  };
  // 6000 bases (kind 1) in three packs; a twin of every 500th base shares its 8-byte prefix
  const bases = Array.from({ length: 6000 }, (_, n) => id(1, n));
  const twins = bases.filter((_, n) => n % 500 === 0).map((b) => Buffer.concat([b.subarray(0, 8), Buffer.alloc(24, 0xee)]));
  const packs = ['a'.repeat(64), 'b'.repeat(64), 'c'.repeat(64)];
  cat.addChunks([...bases, ...twins].map((b, i) => ({ id: b, pack: packs[i % 3]!, offset: i * 10, storedSize: 10, plainSize: 4096 })));
  // 9000 deltas (kind 2) in two packs: delta n needs bases n % 6000 and (n * 7) % 6000, and every
  // 1000th one also a base never stored (kind 3)
  const deltaBases = (n: number) => [bases[n % 6000]!, bases[(n * 7) % 6000]!, ...(n % 1000 === 0 ? [id(3, n)] : [])];
  const deltas = Array.from({ length: 9000 }, (_, n) => id(2, n));
  const dpacks = ['d'.repeat(64), 'e'.repeat(64)];
  cat.addChunks(deltas.map((d, n) => ({ id: d, pack: dpacks[n % 2]!, offset: Math.floor(n / 2) * 10, storedSize: 10, plainSize: 4096, bases: deltaBases(n) })));
  const all = [...bases, ...twins, ...deltas];
  const hex = (b: Buffer) => b.toString('hex');
  /** what a lookup at a time answers: the bases' prefixes not among the list's, each chunk under them found, a prefix under none missing */
  const deltaOf = new Map(deltas.map((d, n) => [hex(d), n]));
  const byPrefix = new Map<string, string[]>();
  for (const x of all) byPrefix.set(hex(x.subarray(0, 8)), [...(byPrefix.get(hex(x.subarray(0, 8))) ?? []), hex(x)]);
  const reference = (list: Buffer[]) => {
    const inList = new Set(list.map((b) => hex(b.subarray(0, 8))));
    const found = new Set<string>();
    const missing = new Set<string>();
    for (const c of list) {
      const n = deltaOf.get(hex(c));
      if (n === undefined) continue;
      for (const b of deltaBases(n)) {
        const p = hex(b.subarray(0, 8));
        if (inList.has(p)) continue;
        const under = byPrefix.get(p) ?? [];
        if (under.length === 0) missing.add(p);
        for (const x of under) found.add(x);
      }
    }
    return { found: [...found].sort(), missing: [...missing].sort() };
  };
  const cases: Array<{ why: string; list: Buffer[] }> = [
    { why: 'nothing', list: [] },
    { why: 'whole chunks only', list: bases.slice(0, 10) },
    { why: 'one delta with a missing base', list: [deltas[1000]!] },
    { why: 'a delta whose base has a twin', list: [deltas[500]!] },
    { why: 'deltas with their bases in the list', list: [deltas[3]!, bases[3]!, bases[21]!, deltas[4]!] },
    { why: 'every delta (more than one statement of IDs and of prefixes)', list: deltas },
    { why: 'every chunk, and IDs not held', list: [...all, id(4, 1), id(4, 2)] },
  ];
  // chunksUnder: prefixes of any length up to an ID's, each answer with the prefix's place
  const under = (p: string[]) => cat.bases.chunksUnder(p).map(([i, x]) => `${i}:${hex(x)}`).sort();
  const twin0 = hex(twins[0]!);
  assert.deepEqual(under([hex(bases[0]!.subarray(0, 8)), '0f', hex(bases[1]!)]), [`0:${hex(bases[0]!)}`, `0:${twin0}`, `2:${hex(bases[1]!)}`].sort(), 'a base and its twin under an 8-byte prefix, none under another, one under a whole ID');
  assert.equal(cat.bases.chunksUnder(['02']).length, deltas.length, 'a one-byte prefix: every delta');
  for (const c of cases) {
    const got = cat.bases.needed(c.list);
    assert.deepEqual({ found: got.found.map(hex).sort(), missing: got.missing.map(hex).sort() }, reference(c.list), c.why);
    assert.equal(new Set(got.found.map(hex)).size, got.found.length, `${c.why}: each chunk found once`);
    // the places asked once, for both whether each chunk is held and its bases (a vault's commit check)
    const places = cat.bases.placesOf(c.list);
    c.list.forEach((x, i) => {
      const row = cat.chunkRow(x);
      assert.deepEqual(places.pack[i]! < 0 ? undefined : [places.pack[i], places.offset[i]], row && [row[0], row[1]], `${c.why}: the place of chunk ${i}`);
    });
    assert.deepEqual(cat.bases.needed(c.list, places), got, `${c.why}: the same from places looked up before`);
  }
});
