/**
 * The audit log of vault nodes in the shared store, as pure functions (no I/O, no clock read).
 *
 * Each node keeps its audit log on its own disk (the write-ahead record) and ships it into the
 * bucket in segments: `<prefix>nodes/audit/<node>/<segment>.jsonl`, one segment per shipment of
 * the bytes [offset, end) of the local file. A segment's name starts with the time of its first
 * line, so a node's segments sort by time; it goes on with the local file's inode and the byte
 * offset the segment starts at, so shipping the same range again (a node killed after its PUT,
 * before it recorded how far it shipped) writes the same name again: a superset that replaces
 * the first copy, never a second copy of a line.
 */

export const AUDIT_AREA = 'nodes/audit/';

/** `20261205T190338.123Z` from an ISO time: sorts as the time does, and is a safe key segment. */
export function compactTime(iso: string): string {
  const ms = Date.parse(iso);
  const t = Number.isFinite(ms) ? new Date(ms).toISOString() : '1970-01-01T00:00:00.000Z';
  return t.replace(/[-:]/g, '');
}

function expandTime(compact: string): string | null {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})\.(\d{3})Z$/.exec(compact);
  return m ? `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.${m[7]}Z` : null;
}

/** The name of a segment (under the node's folder) shipping the file `ino` from byte `offset`, whose first line was written at `firstTime`. */
export function segmentName(firstTime: string, ino: number, offset: number): string {
  return `${compactTime(firstTime)}-${ino.toString(16)}-${offset.toString(16).padStart(12, '0')}.jsonl`;
}

export interface SegmentRef {
  node: string;
  /** the key below the audit area: "<node>/<segment>.jsonl" */
  key: string;
  /** the time of its first line (ISO) */
  first: string;
}

/** A key below the audit area ("<node>/<segment>.jsonl"), or null when it is not a segment. */
export function parseSegmentKey(key: string): SegmentRef | null {
  const m = /^([^/]+)\/(\d{8}T\d{6}\.\d{3}Z)-[0-9a-f]+-[0-9a-f]+\.jsonl$/.exec(key);
  if (!m) return null;
  const first = expandTime(m[2]!);
  return first ? { node: m[1]!, key, first } : null;
}

/**
 * Which segments can hold lines at or after `since` (all without it): per node, the segments
 * that start at or after it, and the last one that starts before it (its lines run on until the
 * next segment starts). Keys that are no segments are left out.
 */
export function segmentsToRead(keys: readonly string[], since?: string | null, node?: string | null): SegmentRef[] {
  const byNode = new Map<string, SegmentRef[]>();
  for (const k of keys) {
    const s = parseSegmentKey(k);
    if (!s || (node && s.node !== node)) continue;
    const list = byNode.get(s.node) ?? [];
    list.push(s);
    byNode.set(s.node, list);
  }
  const out: SegmentRef[] = [];
  const from = since ? Date.parse(since) : NaN;
  for (const list of byNode.values()) {
    list.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    if (!Number.isFinite(from)) {
      out.push(...list);
      continue;
    }
    let firstIdx = list.findIndex((s) => Date.parse(s.first) >= from);
    if (firstIdx === -1) firstIdx = list.length;
    out.push(...list.slice(Math.max(0, firstIdx - 1)));
  }
  return out;
}

export interface AuditLine {
  node: string;
  time: string;
  [k: string]: unknown;
}

/**
 * The lines of several nodes' segments as one log in time order (equal times: by node, then in
 * the order each node wrote them), filtered by time and tenant. Lines that are no JSON object
 * with a time (a line torn by a crash) are counted, not shown.
 */
export function mergeAuditLines(segments: ReadonlyArray<{ node: string; body: string }>, filter: { since?: string | null; tenant?: string | null } = {}): { lines: AuditLine[]; unreadable: number } {
  const from = filter.since ? Date.parse(filter.since) : -Infinity;
  const lines: Array<AuditLine & { _seq: number; _ms: number }> = [];
  let unreadable = 0;
  let seq = 0;
  for (const s of segments) {
    for (const raw of s.body.split('\n')) {
      if (raw.trim() === '') continue;
      let o: Record<string, unknown>;
      try {
        o = JSON.parse(raw) as Record<string, unknown>;
      } catch {
        unreadable++;
        continue;
      }
      const ms = typeof o.time === 'string' ? Date.parse(o.time) : NaN;
      if (!o || typeof o !== 'object' || !Number.isFinite(ms)) {
        unreadable++;
        continue;
      }
      if (ms < from) continue;
      if (filter.tenant && o.tenant !== filter.tenant) continue;
      // `node` is the writer (the segment's folder); a line's own field of that name is kept aside when it differs
      lines.push({ ...o, ...(o.node !== undefined && o.node !== s.node ? { lineNode: o.node } : {}), node: s.node, time: o.time as string, _seq: seq++, _ms: ms });
    }
  }
  lines.sort((a, b) => a._ms - b._ms || (a.node < b.node ? -1 : a.node > b.node ? 1 : 0) || a._seq - b._seq);
  return { lines: lines.map(({ _seq, _ms, ...l }) => l as AuditLine), unreadable };
}

/** Ship now? Refusals and errors at once; ordinary lines once `lines` wait or the oldest waited `everyMs`. */
export function shipDue(o: { urgent: boolean; waitingBytes: number; waitingLines: number; oldestWaitMs: number; lines: number; everyMs: number }): boolean {
  if (o.waitingBytes <= 0) return false;
  return o.urgent || o.waitingLines >= o.lines || o.oldestWaitMs >= o.everyMs;
}

/** The pause before shipping again after `failures` failed attempts in a row: doubling from 1 s, at most 60 s. */
export function shipBackoffMs(failures: number): number {
  if (failures <= 0) return 0;
  return Math.min(60_000, 1000 * 2 ** Math.min(failures - 1, 16));
}
