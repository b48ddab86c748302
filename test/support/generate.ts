import { createHash } from 'node:crypto';

/**
 * Deterministic data for tests and benchmarks: a PostgreSQL-plain-dump-like text (COPY blocks
 * of tab-separated resident/tax rows) from a seed, streamed in blocks so multi-GiB inputs are
 * never stored. Same seed, same bytes.
 */
export class Prng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    // xorshift32
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.next(), i);
    for (; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
}

const FAMILY = ['佐藤', '鈴木', '高橋', '田中', '伊藤', '渡辺', '山本', '中村', '小林', '加藤', 'Sato', 'Suzuki', 'Takahashi', 'Tanaka', 'Ito', 'Watanabe'];
const GIVEN = ['太郎', '花子', '一郎', '美咲', '健太', '陽菜', 'Hiroshi', 'Yuki', 'Aoi', 'Ren', 'Mei', 'Sora'];
const TOWN = ['千代田区丸の内', '中央区日本橋', '港区芝公園', '新宿区西新宿', '文京区本郷', '台東区浅草', 'Sapporo Kita-ku', 'Sendai Aoba-ku'];

/** Rows of a resident table, as pg_dump would print them in a COPY block. */
export function residentRow(id: number, r: Prng): string {
  const a = r.next();
  const b = r.next();
  return `${id}\t${FAMILY[a & 15]} ${GIVEN[(a >>> 4) % 12]}\t${TOWN[(a >>> 8) & 7]}${(b & 0xfff) + 1}-${(b >>> 12) & 63}\t19${10 + ((a >>> 11) % 90)}-${String(1 + ((a >>> 18) % 12)).padStart(2, '0')}-${String(1 + ((a >>> 22) % 28)).padStart(2, '0')}\t${(b >>> 18) % 1000000}\t${a % 7 === 0 ? '\\N' : 'active'}\n`;
}

/** An async stream of `total` bytes of SQL-dump-like text, in blocks of about `block` bytes. */
export async function* sqlDump(seed: number, total: number, block = 1 << 20): AsyncGenerator<Buffer> {
  const r = new Prng(seed);
  let produced = 0;
  let id = 1;
  let header = 'SET client_encoding = \'UTF8\';\nCOPY public.residents (id, name, address, birth, income, status) FROM stdin;\n';
  while (produced < total) {
    let s = header;
    header = '';
    while (s.length < block / 2) {
      for (let k = 0; k < 64; k++) s += residentRow(id++, r);
    }
    let buf = Buffer.from(s, 'utf8');
    if (produced + buf.length > total) buf = buf.subarray(0, total - produced);
    produced += buf.length;
    yield buf;
  }
}

export async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of it) parts.push(b);
  return Buffer.concat(parts);
}

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** The next night of a dump: one row in `every` gets a different income (same length), scattered over the dump. */
export function churn(night1: Buffer, every: number, salt: number): Buffer {
  const lines = night1.toString('utf8').split('\n');
  for (let i = 3 + salt; i < lines.length - 1; i += every) lines[i] = lines[i]!.replace(/\t(\d)(\d*)\t/, (_m, a: string, b: string) => `\t${(Number(a) + 1) % 10}${b}\t`);
  return Buffer.from(lines.join('\n'));
}
