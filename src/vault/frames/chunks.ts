import { CHUNK_ID_BYTES } from '../../crypto/blob.js';
import { Frame, frameHead, type RawFrame } from '../../protocol/frames.js';
import { located, readBlobsAt } from '../../repository/reader.js';
import type { VaultSession } from '../session.js';

/**
 * A request is read a slice at a time: up to SLICE_CHUNKS chunks, cut where they pass SLICE_BYTES
 * stored; a pack's chunks in a slice are read with one read. On an object store every read waits
 * a round trip and costs the gateway a request: restoring a 4 KiB-chunk night from Ceph RGW in
 * requests and slices of 64 chunks took 9-10 s, in requests of a segment (512 chunks) and slices
 * of up to 1024, 7.4-8.5 s (2048 chunks asked for at once).
 */
export const SLICE_CHUNKS = 1024;
const SLICE_BYTES = 4 << 20;
/** Stored bytes of the slices read ahead at most (less when many sessions share the vault's memory), and how many. */
const AHEAD_BYTES = 16 << 20;
const AHEAD_SLICES = 16;
/** CHUNK frames are written this many bytes at a time. */
const COALESCE = 128 << 10;

type Blob = { id: Buffer; blob: Buffer };

/** A slice being read: where it is in which request, its stored bytes, and its blobs in order (a failure waits for its turn). */
interface Slice {
  frame: RawFrame;
  /** where its IDs start and end in the request (bytes) */
  at: number;
  end: number;
  bytes: number;
  blobs: Promise<Blob[]>;
}

/**
 * GET_CHUNKS: one CHUNK frame per ID, in order. The request is read in slices, each slice's
 * chunks that lie in one pack with one read (neighbours a few KiB apart joined), its packs side
 * by side. While a slice is sent, the next ones are read: the rest of this request
 * and of the requests queued behind it (a restoring client keeps several in flight), at most
 * AHEAD_BYTES of stored chunks. So a vault on an object store, where each read waits a round
 * trip, reads many at once, and a client that asks for much and reads nothing holds only that.
 *
 * `restore --from` a vault of a 488 MB dump's fourth night in 4 KiB chunks, from a directory:
 * 12 s with a socket write, an open, a read and a close per chunk or two, 3.7-4.0 s with CHUNK
 * frames coalesced, pack handles kept and neighbours joined (2.9-3.2 s from the local repository).
 * From Ceph RGW: 211 s a request at a time, 9.0-9.5 s with requests read ahead. The client's part
 * is restorer/remote.ts.
 */
export async function getChunks(s: VaultSession, ids: Buffer, frame: RawFrame): Promise<void> {
  const reads = readsOf(s);
  const out = new Coalesced(s);
  for (let at = 0; at < ids.length; ) {
    const slice = reads.take(frame, ids, at);
    at = slice.end;
    reads.fill(frame, ids);
    let blobs: Blob[];
    try {
      blobs = await slice.blobs;
    } catch (e) {
      await out.flush(); // what was read before it goes first
      throw e;
    }
    for (const { id, blob } of blobs) {
      if (s.isStopping) return; // the client reads the rest from a vault that runs
      await out.add(id, blob);
    }
  }
  if (!s.isStopping) await out.flush();
}

/** CHUNK frames gathered and written COALESCE bytes at a time: a write per frame of a 4 KiB chunk was a third of the vault's CPU time (a socket write, an SSH packet and its random padding each). */
class Coalesced {
  private parts: Buffer[] = [];
  private bytes = 0;

  constructor(private readonly s: VaultSession) {}

  async add(id: Buffer, blob: Buffer): Promise<void> {
    this.parts.push(frameHead(Frame.CHUNK, id.length + blob.length), id, blob);
    this.bytes += 5 + id.length + blob.length;
    if (this.bytes >= COALESCE) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.bytes === 0) return;
    const all = Buffer.concat(this.parts, this.bytes);
    this.parts = [];
    this.bytes = 0;
    await this.s.sendEncoded(Frame.CHUNK, all);
  }
}

/** Per session: the slices read ahead, in the order they will be sent. */
const sessionReads = new WeakMap<VaultSession, ReadAhead>();

function readsOf(s: VaultSession): ReadAhead {
  let r = sessionReads.get(s);
  if (!r) sessionReads.set(s, (r = new ReadAhead(s)));
  return r;
}

class ReadAhead {
  private readonly ahead: Slice[] = [];
  /** the slice started last (taken or read ahead): reading ahead goes on after it */
  private last: { frame: RawFrame; end: number } | null = null;

  constructor(private readonly s: VaultSession) {}

  /** The slice of `frame` at byte `at` of its IDs: read ahead already, or read now. */
  take(frame: RawFrame, ids: Buffer, at: number): Slice {
    const first = this.ahead[0];
    if (first && first.frame === frame && first.at === at) return this.ahead.shift()!;
    this.ahead.length = 0; // not what was read ahead (requests are handled in order: cannot happen)
    return this.read(frame, ids, at);
  }

  /** Start reading the slices after the last one started, in this request and the GET_CHUNKS requests queued behind it, within the read-ahead's bounds. */
  fill(frame: RawFrame, ids: Buffer): void {
    const limit = Math.min(AHEAD_BYTES, this.s.ctx.budget.share() / 2);
    let held = this.ahead.reduce((n, r) => n + r.bytes, 0);
    const requests = [{ frame, ids }, ...this.s.following(Frame.GET_CHUNKS).map((f) => ({ frame: f, ids: f.payload }))];
    let i = requests.findIndex((r) => r.frame === this.last?.frame);
    if (i < 0) return;
    for (let from = this.last!.end; i < requests.length; i++, from = 0) {
      const r = requests[i]!;
      if (r.ids.length % CHUNK_ID_BYTES !== 0) return; // malformed: refused in its turn
      while (from < r.ids.length) {
        if (held >= limit || this.ahead.length >= AHEAD_SLICES || this.s.ctx.budget.full()) return;
        const slice = this.read(r.frame, r.ids, from);
        this.ahead.push(slice);
        held += slice.bytes;
        from = slice.end;
      }
    }
  }

  private read(frame: RawFrame, ids: Buffer, at: number): Slice {
    const { repo } = this.s.ctx;
    const what = `tenant ${this.s.ctx.tenant}'s vault repository`;
    const list: Buffer[] = [];
    for (let o = at; o < Math.min(ids.length, at + SLICE_CHUNKS * CHUNK_ID_BYTES); o += CHUNK_ID_BYTES) list.push(ids.subarray(o, o + CHUNK_ID_BYTES));
    let blobs: Promise<Blob[]>;
    let bytes = 0;
    let end = at + list.length * CHUNK_ID_BYTES;
    try {
      const chunks = [...located(repo, list, what, false)]; // blobs sent by ID: their digests are not passed on
      let n = 0;
      while (n < chunks.length && (n === 0 || bytes + chunks[n]!.loc.length <= SLICE_BYTES)) bytes += chunks[n++]!.loc.length;
      chunks.length = n;
      end = at + n * CHUNK_ID_BYTES;
      blobs = (async () => {
        const got: Blob[] = [];
        for await (const b of readBlobsAt(repo, chunks, what, { byPack: true })) got.push(b);
        return got;
      })();
    } catch (e) {
      blobs = Promise.reject(e); // a chunk not held: the slice fails in its turn
    }
    blobs.catch(() => {}); // reported in its turn
    this.last = { frame, end };
    return { frame, at, end, bytes, blobs };
  }
}
