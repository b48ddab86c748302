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

/**
 * `each(json, at)` for consecutive runs of at most LOCATE_MAX of the IDs of `bytes` each side by
 * side in `ids` (a partial one at the end ignored): each run hex-encoded at once, no Buffer per
 * ID, and never more than one run's string (a whole snapshot's would pass V8's longest string
 * at 8.4 million IDs).
 */
export function inHexRuns(ids: Buffer, bytes: number, each: (json: string, at: number) => void): void {
  const n = Math.floor(ids.length / bytes);
  const w = 2 * bytes;
  for (let at = 0; at < n; at += LOCATE_MAX) {
    const k = Math.min(LOCATE_MAX, n - at);
    const hex = ids.toString('hex', at * bytes, (at + k) * bytes);
    let s = '[';
    for (let i = 0; i < k; i++) s += (i === 0 ? '"' : ',"') + hex.slice(i * w, (i + 1) * w) + '"';
    each(s + ']', at);
  }
}

/** Hex strings as a JSON array (for json_each) */
export function hexJson(hex: readonly string[]): string {
  return hex.length === 0 ? '[]' : `["${hex.join('","')}"]`;
}

/** `each(part, at)` for consecutive parts of `items` of at most LOCATE_MAX, `at` the first one's index. */
export function inBatches<T>(items: readonly T[], each: (part: T[], at: number) => void): void {
  for (let at = 0; at < items.length; at += LOCATE_MAX) each(items.slice(at, at + LOCATE_MAX), at);
}
