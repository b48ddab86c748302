/**
 * Many chunk IDs looked up by few statements: the IDs go in as one JSON array of hex strings
 * (`json_each(?)` joined with `chunk_rows` on `unhex(value)`), and each row names its place in
 * the array (`json_each`'s key), so no ID is bound or returned one by one. A point lookup through
 * better-sqlite3 costs 7-9 us; one among 4096 in such a statement 4-5 us (a 400 000-row
 * catalogue, measured).
 */

/** IDs (or ID prefixes) in one statement at most */
export const LOCATE_MAX = 4096;

/** IDs as a JSON array of hex strings (for json_each) */
export function hexArray(ids: readonly Buffer[]): string {
  let s = '[';
  for (let i = 0; i < ids.length; i++) s += (i === 0 ? '"' : ',"') + ids[i]!.toString('hex') + '"';
  return s + ']';
}

/** `n` IDs of `bytes` each, side by side in `hex` (one Buffer's hex), from the `from`th: a JSON array of hex strings */
export function hexRun(hex: string, bytes: number, from: number, n: number): string {
  let s = '[';
  const w = 2 * bytes;
  for (let i = 0; i < n; i++) s += (i === 0 ? '"' : ',"') + hex.slice((from + i) * w, (from + i + 1) * w) + '"';
  return s + ']';
}

/** Hex strings as a JSON array (for json_each) */
export function hexJson(hex: readonly string[]): string {
  return hex.length === 0 ? '[]' : `["${hex.join('","')}"]`;
}

/** `each(part, at)` for consecutive parts of `items` of at most LOCATE_MAX, `at` the first one's index. */
export function inBatches<T>(items: readonly T[], each: (part: T[], at: number) => void): void {
  for (let at = 0; at < items.length; at += LOCATE_MAX) each(items.slice(at, at + LOCATE_MAX), at);
}
