import type Database from 'better-sqlite3';
import { CHUNK_ID_BYTES } from '../crypto/blob.js';
import type { ChunkRow } from './catalogue.js';
import { BASE_PREFIX, packDeltas } from './catalogue-schema.js';
import { hexArray, hexJson, inBatches } from './id-batches.js';

/** Where chunks are stored, in the order asked: pack number (-1 for a chunk not held) and offset in it. */
export interface Places {
  pack: Int32Array;
  offset: Uint32Array;
}

/**
 * The catalogue's record of which base chunks the deltas in each pack need (table pack_bases,
 * see catalogue-schema.ts): written with the chunk rows of a pack, read by GC (to keep bases in
 * use), the relay (to offer them) and restore and check (to fetch them).
 */
export class PackBases {
  private prefixStmt: Database.Statement<[Buffer, Buffer], Buffer> | undefined;
  /** every stored chunk under each of the prefixes asked (a JSON array of hex strings), with the prefix's place in it */
  private readonly prefixesStmt: Database.Statement<[string], [number, Buffer]>;
  private readonly placesStmt: Database.Statement<[string], [number, number, number]>;

  constructor(private readonly db: Database.Database) {
    // each prefix padded to an ID's length: the first and the last ID it stands for
    const pad = (fill: string) => `unhex(substr(j.value || '${fill.repeat(CHUNK_ID_BYTES)}', 1, ${2 * CHUNK_ID_BYTES}))`;
    this.prefixesStmt = db.prepare<[string], [number, Buffer]>(`SELECT j.key, c.id FROM json_each(?) j JOIN chunk_rows c ON c.id >= ${pad('00')} AND c.id <= ${pad('ff')}`).raw();
    this.placesStmt = db.prepare<[string], [number, number, number]>('SELECT j.key, c.pack, c.offset FROM json_each(?) j JOIN chunk_rows c ON c.id = unhex(j.value)').raw();
  }

  /**
   * The places of `ids`, a few thousand a statement: what `needed` looks up first, and whether
   * each chunk is held at all (pack -1), for a caller that asks both of the same list (a vault's
   * commit check: one lookup of every chunk, not two).
   */
  placesOf(ids: readonly Buffer[]): Places {
    const pack = new Int32Array(ids.length).fill(-1);
    const offset = new Uint32Array(ids.length);
    inBatches(ids, (part, at) => {
      for (const [key, p, o] of this.placesStmt.all(hexArray(part))) {
        pack[at + key] = p;
        offset[at + key] = o;
      }
    });
    return { pack, offset };
  }

  /** Record the bases the deltas among `rows` need, per pack (call inside the rows' transaction). */
  addRows(rows: ReadonlyArray<ChunkRow>): void {
    const byPack = new Map<string, Array<{ offset: number; bases: readonly Buffer[] }>>();
    for (const r of rows) {
      if (!r.bases?.length) continue;
      let list = byPack.get(r.pack);
      if (!list) byPack.set(r.pack, (list = []));
      list.push({ offset: r.offset, bases: r.bases });
    }
    for (const [pack, deltas] of byPack) this.addPack(pack, deltas);
  }

  /** Record deltas of `pack` (a pack already in the catalogue) with their bases (IDs or prefixes). */
  addPack(pack: string, deltas: ReadonlyArray<{ offset: number; bases: readonly Buffer[] }>): void {
    if (deltas.length === 0) return;
    const n = this.db.prepare<[string], { n: number }>('SELECT n FROM packs WHERE name = ?').get(pack)?.n;
    if (n === undefined) return;
    const old = this.db.prepare<[number], { bases: Buffer; deltas: Buffer }>('SELECT bases, deltas FROM pack_bases WHERE pack = ?').get(n);
    const all = old ? packDeltas(old) : new Map<number, Buffer[]>();
    for (const d of deltas) all.set(d.offset, [...d.bases]);
    const index = new Map<string, number>();
    const ids: Buffer[] = [];
    const records: Buffer[] = [];
    for (const [offset, bases] of all) {
      const rec = Buffer.allocUnsafe(5 + 2 * bases.length);
      rec.writeUInt32LE(offset, 0);
      rec[4] = bases.length;
      bases.forEach((b, i) => {
        const prefix = b.subarray(0, BASE_PREFIX);
        const k = prefix.toString('base64');
        let at = index.get(k);
        if (at === undefined) {
          index.set(k, (at = ids.length));
          ids.push(prefix);
        }
        rec.writeUInt16LE(at, 5 + 2 * i);
      });
      records.push(rec);
    }
    this.db.prepare('INSERT OR REPLACE INTO pack_bases (pack, bases, deltas) VALUES (?, ?, ?)').run(n, Buffer.concat(ids), Buffer.concat(records));
  }

  /** The deltas of a pack: offset → bases; null if it holds none. */
  ofPack(pack: string): Map<number, Buffer[]> | null {
    const row = this.db
      .prepare<[string], { bases: Buffer; deltas: Buffer }>('SELECT b.bases, b.deltas FROM pack_bases b JOIN packs p ON p.n = b.pack WHERE p.name = ?')
      .get(pack);
    return row ? packDeltas(row) : null;
  }

  /** Every stored chunk whose ID starts with `prefix` (one, but for a 64-bit collision). */
  chunksWithPrefix(prefix: Buffer): Buffer[] {
    const lo = Buffer.alloc(32, 0);
    const hi = Buffer.alloc(32, 0xff);
    prefix.copy(lo);
    prefix.copy(hi);
    return (this.prefixStmt ??= this.db.prepare<[Buffer, Buffer], Buffer>('SELECT id FROM chunk_rows WHERE id >= ? AND id <= ?').pluck()).all(lo, hi);
  }

  /**
   * The base chunks the deltas among `ids` need, beyond `ids` themselves: `found` stored here,
   * `missing` the prefixes no stored chunk has. A prefix one of `ids` has is taken for that chunk
   * unless `listed` (GC, which must keep every chunk under it: a stored chunk could share it).
   * `places`: the IDs' placesOf, when the caller has them already. The places and the bases'
   * prefixes are looked up a few thousand a statement (id-batches.ts): the vault asks this of
   * every chunk of each snapshot a relay sends, and one by one it was the largest part of a
   * catch-up of 4 KiB chunks (8 of 25 s for seven nights, 490 000 chunks).
   */
  needed(ids: readonly Buffer[], places?: Places, opts: { listed?: boolean } = {}): { found: Buffer[]; missing: Buffer[] } {
    if (!this.db.prepare('SELECT 1 FROM pack_bases LIMIT 1').get()) return { found: [], missing: [] };
    const deltasOf = this.db.prepare<[number], { bases: Buffer; deltas: Buffer }>('SELECT bases, deltas FROM pack_bases WHERE pack = ?');
    const at = places ?? this.placesOf(ids);
    const inList = new Set<string>();
    const offsets = new Map<number, number[]>();
    for (let i = 0; i < ids.length; i++) {
      if (!opts.listed) inList.add(ids[i]!.toString('hex', 0, BASE_PREFIX));
      const pack = at.pack[i]!;
      if (pack < 0) continue;
      let list = offsets.get(pack);
      if (!list) offsets.set(pack, (list = []));
      list.push(at.offset[i]!);
    }
    // the bases' prefixes, each once, but for those of chunks in the list
    const asked: string[] = [];
    const seen = new Set<string>();
    for (const [pack, offs] of offsets) {
      const row = deltasOf.get(pack);
      if (!row) continue;
      const deltas = packDeltas(row);
      for (const o of offs) {
        for (const prefix of deltas.get(o) ?? []) {
          const k = prefix.toString('hex');
          if (inList.has(k) || seen.has(k)) continue;
          seen.add(k);
          asked.push(k);
        }
      }
    }
    const found = new Map<string, Buffer>();
    const held = new Array<boolean>(asked.length).fill(false);
    for (const [i, id] of this.chunksUnder(asked)) {
      held[i] = true;
      found.set(id.toString('base64'), id);
    }
    return { found: [...found.values()], missing: asked.filter((_, i) => !held[i]).map((k) => Buffer.from(k, 'hex')) };
  }

  /**
   * Every stored chunk whose ID starts with one of `prefixes` (hex, up to an ID's length), as
   * [the prefix's index, the chunk's ID]: chunksWithPrefix for many, a few thousand prefixes a
   * statement.
   */
  chunksUnder(prefixes: readonly string[]): Array<[number, Buffer]> {
    const out: Array<[number, Buffer]> = [];
    inBatches(prefixes, (part, at) => {
      for (const [key, id] of this.prefixesStmt.all(hexJson(part))) out.push([at + key, id]);
    });
    return out;
  }
}
