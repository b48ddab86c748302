/**
 * Whole or delta: what a changed chunk is stored as. Pure rules, table-tested (test/delta.test.ts).
 *
 * A delta is made against the previous generation's whole chunks (a delta is never a base: restore
 * opens one level). A chunk changed for the first time since its base keeps its delta while it costs
 * under 90 % of the chunk whole: one change (a heavy night's recalculation) need not recur.
 *
 * A chunk that changes night after night stays a delta of the same old base, and its delta grows
 * with every change since: on bench/daily's evenly spread updates (every 64 KiB chunk changes
 * each night) from ~300 B the first night to ~1 300 B the sixth. Storing such a chunk whole once its
 * delta costs REBASE_AT of that resets the growth: the next nights' deltas are against the new
 * whole chunk. Paying W once every P nights, with deltas growing by c a night, costs
 * (W + c·P(P-1)/2)/P a night, least at P = √(2W/c), where the delta is about half of W.
 */
export const REBASE_AT = 0.5;
/** a first change: the delta is kept while it costs under this share of the chunk whole */
const KEEP_FIRST_DELTA_BELOW = 0.9;
/** an estimate may be this much high (a chunk whole is judged by its bases or by a sample): tried from there */
const ESTIMATE_SLACK = 0.8;

/**
 * Before the chunk is compressed alone (a compression more, for each changed chunk): whether that
 * can change the choice. `estimate` is what the chunk would take whole judged by its bases (their
 * stored bytes scaled to its length), null when unknown. For a first change, or without an
 * estimate, a delta under a sixth of the chunk is kept untried (zstd does not shrink a dump's
 * chunks that far).
 */
export function worthTryingWhole(deltaCost: number, plainLength: number, estimate: number | null, again: boolean): boolean {
  if (again && estimate !== null && estimate > 0) return deltaCost >= REBASE_AT * estimate * ESTIMATE_SLACK;
  return deltaCost * 6 >= plainLength;
}

/** With both sizes known: whether the delta is kept. */
export function keepDelta(deltaCost: number, wholeCost: number, again: boolean): boolean {
  return deltaCost < (again ? REBASE_AT : KEEP_FIRST_DELTA_BELOW) * wholeCost;
}

/** What a chunk of `plainLength` bytes would take whole, judged by its bases: `stored` bytes for `basePlain` bytes of theirs. */
export function wholeEstimate(plainLength: number, stored: number | undefined, basePlain: number): number | null {
  if (stored === undefined || !(stored > 0) || !(basePlain > 0)) return null;
  return (stored * plainLength) / basePlain;
}

/** the bytes of a chunk compressed alone to judge the whole of it, for a chunk at least four times as large (else null: the whole chunk is compressed) */
export const SAMPLE_BYTES = 16 << 10;
export function wholeSample(plainLength: number): number | null {
  return plainLength >= 4 * SAMPLE_BYTES ? SAMPLE_BYTES : null;
}

/**
 * A delta's bases are read, opened and loaded as zstd's history whole for each chunk made against
 * them, at a cost that grows with their bytes, not the chunk's. At one chunk size they are at most
 * 48 times a chunk (three of the largest beside one of the smallest). Far beyond that, a source's
 * chunk size was lowered (256 KiB to 4 KiB: some 350 times): its 4 KiB chunks took 8 ms each against
 * their old 256 KiB-1 MiB bases, a 10 MB dump 16 s, for a few percent fewer bytes. Those chunks
 * are stored whole that night, and the next nights' deltas are against chunks of their own size.
 */
export const MAX_BASES_PER_CHUNK = 64;

/** Whether a chunk of `plainLength` bytes is worth a delta against bases of `basesPlain` bytes in all. */
export function basesWorthTrying(plainLength: number, basesPlain: number): boolean {
  return basesPlain <= MAX_BASES_PER_CHUNK * Math.max(plainLength, 1);
}
