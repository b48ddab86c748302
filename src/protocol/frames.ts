import { KuraError } from '../errors.js';

/**
 * The vault protocol, version 4: length-prefixed frames over one SSH channel (ssh2 exec, or
 * stdin/stdout under OpenSSH's command=). Version 2 added WANT and PUT_NEXT (the vault works out
 * what a snapshot lacks from its chunk list), version 3 PUT_RUN (several of those blobs in one
 * frame, as they lie in a pack), version 4 a digest in FLUSH of the batch's blob digests as recorded
 * when the blobs were first written (docs/format.md), which the vault checks against the blobs
 * that arrived before it stores any; a vault still serves version 1 to 3 clients.
 *
 *   u32 length (of type + payload) | u8 type | payload
 *
 * Requests are answered in order. Control payloads are JSON; bulk payloads are binary.
 */
export const PROTOCOL_VERSION = 5;
export const OLDEST_PROTOCOL = 1;
/** The oldest version a kura relay speaks: it needs WANT and PUT_NEXT (version 2). */
export const OLDEST_RELAY_PROTOCOL = 2;
export const DEFAULT_MAX_FRAME = 16 << 20;

export const Frame = {
  HELLO: 0x01, // JSON {protocol, tenant, client, time?}: time = the client's clock (ms since epoch)
  HELLO_OK: 0x02, // JSON {protocol, tenant, role, session, maxFrame, time}: time = the vault's clock (ms since epoch)
  MOVED: 0x03, // JSON {tenant, route, endpoints, issued, hostKey, signature}: the tenant lives elsewhere (answer to HELLO; the channel closes)
  // version 5: operators (single sign-on, docs/sso.md)
  AUTH: 0x04, // JSON {ticket}: the person acting on this session (an operator ticket of this vault), after HELLO
  AUTH_OK: 0x05, // JSON {subject, provider, role, systemAdmin, expires}
  LOGOUT: 0x06, // JSON {}: end the session's ticket (revoked until it would have expired)
  LOGGED_OUT: 0x07, // JSON {id}
  LOGIN_BEGIN: 0x08, // JSON {provider?, stepUp?}: start a sign-in at the vault's operator endpoint
  LOGIN_URL: 0x09, // JSON {url, code, expires}: the page the person opens, and the short code it shows
  LOGIN_WAIT: 0x0a, // JSON {}: wait for that sign-in to finish
  TICKET: 0x0b, // JSON {token, ticket}: the operator ticket the sign-in earned
  HAS: 0x10, // n × 32-byte chunk IDs
  HAS_REPLY: 0x11, // bitmap, bit i set = chunk i is present (and now leased to this session)
  PUT: 0x12, // chunk ID (32) | BLAKE3 of blob (32) | blob; no reply
  FLUSH: 0x13, // JSON {seq, sum?, digests?}: make every PUT so far durable; sum = BLAKE3 of the batch's PUT_NEXT blobs; digests (version 4) = BLAKE3 of their recorded 16-byte digests
  FLUSHED: 0x14, // JSON {seq, chunks, bytes}
  WANT: 0x15, // the snapshot file, or the 32-byte ID of one this session already sent: what does it lack?
  WANT_REPLY: 0x16, // u32 n | n × 32-byte IDs | u32 m | m × 8-byte base prefixes
  PUT_NEXT: 0x17, // blob of the next ID of the last WANT_REPLY, in its order; no reply
  PUT_RUN: 0x18, // u32 n | n × u32 blob length | the n blobs back to back: the next n of the last WANT_REPLY (version 3); no reply
  COMMIT: 0x20, // snapshot file bytes, or the 32-byte ID of one this session sent in WANT
  COMMITTED: 0x21, // JSON {id, existed}
  LIST: 0x30, // JSON {source?}
  LIST_REPLY: 0x31, // JSON [{id, ...header, receivedAt}]
  GET_SNAPSHOT: 0x32, // JSON {id}
  SNAPSHOT: 0x33, // snapshot file bytes
  GET_CHUNKS: 0x34, // n × 32-byte chunk IDs
  CHUNK: 0x35, // chunk ID (32) | blob; one per requested ID, in order
  PROTECT: 0x36, // JSON {id, protect}: set or lift a snapshot's long-term hold (tenant-admin)
  PROTECTED: 0x37, // JSON {id, protected, changed}
  PRUNE: 0x38, // JSON {dryRun, source?}: apply the tenant's retention (tenant-admin, version 5)
  PRUNED: 0x39, // JSON {dryRun, decisions: [{id, tenant, source, time, keep, reasons}], kept, removed}
  DELETE: 0x3a, // JSON {id}: delete one snapshot (tenant-admin, version 5)
  DELETED: 0x3b, // JSON {id, deleted}
  STATS: 0x40, // JSON {}
  STATS_REPLY: 0x41, // JSON
  ROUTE_STATUS: 0x60, // JSON {}: the tenant's forwarding routes on this vault (hop by hop RPO exposure)
  ROUTE_STATUS_REPLY: 0x61, // JSON {tenant, time, newest: [{source, endTime}], routes: [{route, state, lastError, sources: [{source, newestSent, pending}], next?}]}
  SLOT_ACQUIRE: 0x50, // JSON {group, member, maxConcurrent, ttlSeconds}: lease a backup-window slot (coordinator; backup role)
  SLOT_RENEW: 0x51, // JSON {token, ttlSeconds}
  SLOT_RELEASE: 0x52, // JSON {token}
  SLOT: 0x53, // JSON {granted, token?, holders, retryAfterSeconds?} (acquire), {granted} (renew), {released} (release)
  USAGE: 0x44, // JSON {period?}: every tenant's usage and quota (system-admin, version 5)
  USAGE_REPLY: 0x45, // JSON {period, tenants: [{tenant, storedBytes, quota, snapshots, ...}], totalStoredBytes, totalWireBytes} (as kura vault usage --json)
  ERROR: 0x7f, // JSON {code, message}; the vault closes the channel after an error
} as const;

export type FrameType = (typeof Frame)[keyof typeof Frame];
export const frameName = (t: number): string => Object.entries(Frame).find(([, v]) => v === t)?.[0] ?? `0x${t.toString(16)}`;

export interface RawFrame {
  type: number;
  payload: Buffer;
  /** the payload lies in memory of its own (gathered), not in a transport buffer: keep it without copying */
  owned?: boolean;
}

export function encodeFrame(type: number, payload: Uint8Array | string | object = Buffer.alloc(0)): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload instanceof Uint8Array ? payload : Buffer.from(JSON.stringify(payload));
  const out = Buffer.allocUnsafe(5 + body.length);
  writeFrameHead(out, type, body.length);
  out.set(body, 5);
  return out;
}

/** The 5 bytes before a frame's payload of `length` bytes, for a frame written in parts. */
export function frameHead(type: number, length: number): Buffer {
  return writeFrameHead(Buffer.allocUnsafe(5), type, length);
}

function writeFrameHead(out: Buffer, type: number, length: number): Buffer {
  out.writeUInt32BE(1 + length, 0);
  out[4] = type;
  return out;
}

export function jsonOf<T>(f: RawFrame): T {
  try {
    return JSON.parse(f.payload.toString('utf8')) as T;
  } catch {
    throw new KuraError('E_PROTOCOL', `malformed ${frameName(f.type)} frame (payload is not JSON)`);
  }
}

/**
 * Incremental frame parser. Refuses frames larger than `maxFrame` before buffering them, so a
 * peer cannot make the other side allocate what it announces.
 */
export class FrameParser {
  private parts: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly maxFrame: number) {}

  push(data: Buffer): RawFrame[] {
    const r = this.pushSome(data);
    if (r.error) throw r.error;
    return r.frames;
  }

  /**
   * The frames `data` completes, and the error of a bad frame header after them, if any (the
   * frames before a bad one are whole and may be answered; nothing after it can be read).
   */
  pushSome(data: Buffer): { frames: RawFrame[]; error: KuraError | null } {
    this.parts.push(data);
    this.buffered += data.length;
    const frames: RawFrame[] = [];
    for (;;) {
      if (this.buffered < 4) break;
      const head = this.peek(4);
      const len = head.readUInt32BE(0);
      if (len === 0) return { frames, error: new KuraError('E_PROTOCOL', 'empty frame') };
      if (len > this.maxFrame + 1) return { frames, error: new KuraError('E_FRAME_TOO_LARGE', `frame of ${len} bytes exceeds the limit of ${this.maxFrame}`) };
      if (this.buffered < 4 + len) break;
      const owned = this.parts[0]!.length < 4 + len;
      const all = this.take(4 + len);
      frames.push({ type: all[4]!, payload: all.subarray(5), owned });
    }
    return { frames, error: null };
  }

  /** Forget what was buffered (a session that ends lets go of what it had not handled). */
  reset(): void {
    this.parts = [];
    this.buffered = 0;
  }

  /** Bytes of an unfinished frame: non-zero at end of stream means the frame was truncated. */
  get pending(): number {
    return this.buffered;
  }

  private peek(n: number): Buffer {
    if (this.parts[0]!.length >= n) return this.parts[0]!.subarray(0, n);
    // join only the leading parts that hold the n bytes (all of them, each time a byte arrived,
    // made a sender writing a frame byte by byte cost the receiver quadratic time)
    let k = 0;
    for (let have = 0; have < n; k++) have += this.parts[k]!.length;
    const head = Buffer.concat(this.parts.slice(0, k));
    this.parts.splice(0, k, head);
    return head.subarray(0, n);
  }

  private take(n: number): Buffer {
    const first = this.parts[0]!;
    this.buffered -= n;
    if (first.length >= n) {
      if (first.length === n) this.parts.shift();
      else this.parts[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    // the frame spans several transport packets: gather exactly its bytes (copying the whole
    // backlog each time showed up as a fifth of the vault's time in garbage collection)
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const p = this.parts[0]!;
      const k = Math.min(p.length, n - off);
      p.copy(out, off, 0, k);
      off += k;
      if (k === p.length) this.parts.shift();
      else this.parts[0] = p.subarray(k);
    }
    return out;
  }
}
