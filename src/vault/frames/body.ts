import { z } from 'zod';
import { KuraError } from '../../errors.js';
import { CHUNK_ID_BYTES } from '../../crypto/blob.js';
import { decodeSnapshot, snapshotIdOf, type DecodedSnapshot } from '../../repository/snapshot.js';

/**
 * Payload schemas of the request frames: pure functions from a payload to its value or to what
 * is wrong with it. The session loop runs the one its frame's table entry names before the
 * handler sees anything, so a frame of the wrong shape is refused in one place (E_PROTOCOL),
 * and handlers work with values of the right type.
 */
export type BodyResult<T> = { ok: true; value: T } | { ok: false; problem: string };

export interface BodySchema<T> {
  /** what the payload must be, for messages and docs */
  readonly shape: string;
  parse(payload: Buffer): BodyResult<T>;
}

const ok = <T>(value: T): BodyResult<T> => ({ ok: true, value });
const bad = <T>(problem: string): BodyResult<T> => ({ ok: false, problem });

/** A JSON payload checked against a zod schema (unknown keys are ignored: newer clients may add some). */
export function json<S extends z.ZodType>(schema: S, shape: string): BodySchema<z.output<S>> {
  return {
    shape,
    parse(payload) {
      let value: unknown;
      try {
        value = JSON.parse(payload.toString('utf8'));
      } catch {
        return bad(`the payload is not JSON (${shape} expected)`);
      }
      const r = schema.safeParse(value);
      if (r.success) return ok(r.data);
      const issue = r.error.issues[0]!;
      const where = issue.path.length > 0 ? `${issue.path.map(String).join('.')}: ` : '';
      return bad(`${where}${issue.message} (${shape} expected)`);
    },
  };
}

/** Any bytes, taken as they are (blobs checked by their handler, which knows what they must be). */
export const anyBytes: BodySchema<Buffer> = { shape: 'bytes', parse: (p) => ok(p) };

/** At least `min` bytes. */
export function atLeast(min: number, shape: string): BodySchema<Buffer> {
  return { shape, parse: (p) => (p.length >= min ? ok(p) : bad(`${p.length} bytes, at least ${min} expected (${shape})`)) };
}

/** n × 32-byte chunk IDs. */
export const chunkIds: BodySchema<Buffer> = {
  shape: 'n × 32-byte chunk IDs',
  parse: (p) => (p.length % CHUNK_ID_BYTES === 0 ? ok(p) : bad(`the payload is not a list of 32-byte IDs (${p.length} bytes)`)),
};

/** PUT_RUN: u32 n ‖ n × u32 blob length ‖ the n blobs back to back. */
export interface PutRun {
  /** where the blobs begin */
  start: number;
  lengths: number[];
}

export const putRun: BodySchema<PutRun> = {
  shape: 'u32 n ‖ n × u32 blob length ‖ the n blobs',
  parse(p) {
    const n = p.length >= 4 ? p.readUInt32BE(0) : -1;
    const start = 4 + 4 * n;
    if (n < 1 || start > p.length) return bad(`a PUT_RUN frame whose blob lengths do not add up to its size (${p.length} bytes)`);
    const lengths = new Array<number>(n);
    let total = 0;
    for (let i = 0; i < n; i++) total += lengths[i] = p.readUInt32BE(4 + 4 * i);
    if (start + total !== p.length) return bad(`a PUT_RUN frame whose blob lengths do not add up to its size (${p.length} bytes)`);
    return ok({ start, lengths });
  },
};

const hex64 = z.string().regex(/^[0-9a-f]{64}$/, 'a full ID (64 hex digits)');

/** The readable header of a snapshot file, as far as the vault relies on it (it holds no key to check the rest). */
const snapshotHeader = z.object({
  tenant: z.string(),
  source: z.string(),
  host: z.string(),
  endTime: z.string(),
  logicalBytes: z.number().int().min(0),
  chunkCount: z.number().int().min(0),
  tags: z.array(z.string()).optional(),
  listDepth: z.number().int().min(0).max(8).optional(),
});

/** WANT and COMMIT: the snapshot file, or the 32-byte ID of one sent earlier in the session. */
export type SnapshotRef = { id: string; file: null } | { id: string; file: { snap: DecodedSnapshot; bytes: Buffer } };

export const snapshotRef: BodySchema<SnapshotRef> = {
  shape: 'a snapshot file or a 32-byte snapshot ID',
  parse(p) {
    if (p.length === CHUNK_ID_BYTES) return ok({ id: p.toString('hex'), file: null });
    const id = snapshotIdOf(p);
    let snap: DecodedSnapshot;
    try {
      snap = decodeSnapshot(p, id);
    } catch (e) {
      return bad(e instanceof KuraError ? e.message : `snapshot ${id}: not a snapshot file`);
    }
    const h = snapshotHeader.safeParse(snap.header);
    if (!h.success) {
      const issue = h.error.issues[0]!;
      return bad(`snapshot ${id}: its header is not a snapshot header (${issue.path.map(String).join('.') || 'header'}: ${issue.message})`);
    }
    return ok({ id, file: { snap, bytes: p } });
  },
};

export const helloBody = json(z.object({ protocol: z.number().int(), tenant: z.string(), client: z.string().optional(), time: z.number().optional() }), '{protocol, tenant, client, time?}');
export const flushBody = json(z.object({ seq: z.number().int().min(0), sum: z.string().optional(), digests: z.string().optional() }), '{seq, sum?, digests?}');
export const listBody = json(z.object({ source: z.string().optional() }), '{source?}');
export const snapshotIdBody = json(z.object({ id: hex64 }), '{id}');
export const protectBody = json(z.object({ id: hex64, protect: z.boolean() }), '{id, protect}');
export const emptyObject = json(z.object({}), '{}');
export const authBody = json(z.object({ ticket: z.string().min(1).max(16384) }), '{ticket}');
export const pruneBody = json(z.object({ dryRun: z.boolean(), source: z.string().min(1).optional() }), '{dryRun, source?}');
export const usageBody = json(z.object({ period: z.string().regex(/^\d{4}(-\d{2}(-\d{2})?)?$/, 'a period like 2026-11 (or 2026, or 2026-11-23)').optional() }), '{period?}');
