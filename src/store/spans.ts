/** A range of an object with its place in the caller's list. */
export interface Member {
  offset: number;
  length: number;
  i: number;
}

/** Neighbouring ranges joined into one read: [start, end) of the object, and the ranges in it. */
export interface Span {
  start: number;
  end: number;
  members: Member[];
}

/**
 * Ranges (offsets already resolved, non-negative) joined into spans, each read at once: a range
 * that starts at most `gap` bytes after the span so far ends joins it (overlapping ones too), as
 * long as the span stays within `maxSpan` bytes (the gaps are read too).
 */
export function spansOf(ranges: ReadonlyArray<{ offset: number; length: number }>, gap: number, maxSpan = Infinity): Span[] {
  const order = ranges.map((r, i) => ({ offset: r.offset, length: r.length, i })).sort((a, b) => a.offset - b.offset);
  const spans: Span[] = [];
  for (const r of order) {
    const last = spans.at(-1);
    if (last && r.offset <= last.end + gap && Math.max(last.end, r.offset + r.length) - last.start <= maxSpan) {
      last.end = Math.max(last.end, r.offset + r.length);
      last.members.push(r);
    } else spans.push({ start: r.offset, end: r.offset + r.length, members: [r] });
  }
  return spans;
}
