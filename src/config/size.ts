/** "500GiB" → 536870912000, "2TB" → 2e12, "1048576" → 1048576; null when malformed. */
export function parseSize(text: string | number): number | null {
  if (typeof text === 'number') return Number.isSafeInteger(text) && text >= 0 ? text : null;
  const m = /^(\d+(?:\.\d+)?)\s*(?:([kKmMgGtTpP])(i)?)?B?$/.exec(text.trim());
  if (!m) return null;
  const base = m[3] ? 1024 : 1000;
  const exp = { k: 1, m: 2, g: 3, t: 4, p: 5 }[(m[2] ?? '').toLowerCase()] ?? 0;
  return Math.round(Number(m[1]) * base ** exp);
}
