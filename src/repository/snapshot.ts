import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { KuraError } from '../errors.js';
import { CHUNK_ID_BYTES } from '../crypto/blob.js';
import { expandListTree, type BlobFetcher } from './chunklist.js';

/**
 * Snapshot file (docs/format.md). One file per generation, immutable, named by the SHA-256 of
 * its bytes, so anyone (the vault too, without keys) can verify it:
 *   "KURASNAP" | u8 version | u32 len, header JSON | u32 n, n × 32-byte IDs |
 *   u32 len, private part = nonce(12) || AES-256-GCM ciphertext || tag(16)
 * Version 1: the IDs are the chunk list. Version 2 (written now): the IDs are the top level of
 * the chunk list tree (chunklist.ts), `header.listDepth` levels above the data chunks.
 * The private part's AAD is the SHA-256 of everything before it, so a key holder also knows the
 * readable header and chunk list were written by a key holder.
 */
const MAGIC = Buffer.from('KURASNAP', 'latin1');
export const SNAPSHOT_FORMAT = 2;
export const READABLE_FORMATS: ReadonlySet<number> = new Set([1, 2]);

export interface SnapshotHeader {
  tenant: string;
  source: string;
  host: string;
  startTime: string;
  endTime: string;
  logicalBytes: number;
  chunkCount: number;
  newChunks: number;
  newBytes: number;
  parent: string | null;
  tags: string[];
  /** format 2: levels of list blocks between the IDs in the file and the data chunks (0: they are the data chunks) */
  listDepth?: number;
  /** chunk sizes this snapshot was cut with (informational: restore does not need them) */
  chunker?: { minSize: number; avgSize: number; maxSize: number };
}

/** Facts only key holders should read: the export command, DB name, tool versions, exit status. */
export type SnapshotPrivate = Record<string, unknown>;

export interface DecodedSnapshot {
  id: string;
  header: SnapshotHeader;
  /** the IDs stored in the file (n × 32 bytes): the chunk list, or the top of its tree */
  listIds: Buffer;
  listDepth: number;
  sealed: Buffer;
  aad: Buffer;
  size: number;
}

export function encodeSnapshot(header: SnapshotHeader, listIds: Buffer, priv: SnapshotPrivate, dataKey: Buffer): { id: string; bytes: Buffer } {
  const depth = header.listDepth ?? 0;
  if (depth === 0 && listIds.length !== header.chunkCount * CHUNK_ID_BYTES) throw new Error('chunk list length does not match chunkCount');
  const headerJson = Buffer.from(JSON.stringify(header), 'utf8');
  const u32 = (n: number) => {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32LE(n, 0);
    return b;
  };
  const pub = Buffer.concat([MAGIC, Buffer.of(SNAPSHOT_FORMAT), u32(headerJson.length), headerJson, u32(listIds.length / CHUNK_ID_BYTES), listIds]);
  const aad = createHash('sha256').update(pub).digest();
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', dataKey, nonce);
  c.setAAD(aad);
  const sealed = Buffer.concat([nonce, c.update(JSON.stringify(priv), 'utf8'), c.final(), c.getAuthTag()]);
  const bytes = Buffer.concat([pub, u32(sealed.length), sealed]);
  return { id: snapshotIdOf(bytes), bytes };
}

function corrupt(id: string, why: string): KuraError {
  return new KuraError('E_SNAPSHOT_CORRUPT', `snapshot ${id}: ${why}; run "kura check" to see what is affected`, { snapshot: id });
}

export function snapshotIdOf(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export function decodeSnapshot(bytes: Buffer, expectedId: string): DecodedSnapshot {
  const id = expectedId;
  if (snapshotIdOf(bytes) !== expectedId) throw corrupt(id, 'content does not match its ID (damaged file)');
  if (bytes.length < MAGIC.length + 1 + 12 || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) throw corrupt(id, 'not a snapshot file');
  const version = bytes[MAGIC.length]!;
  if (!READABLE_FORMATS.has(version)) throw corrupt(id, `unsupported snapshot format ${version} (upgrade kura)`);
  let off = MAGIC.length + 1;
  const need = (n: number) => {
    if (off + n > bytes.length) throw corrupt(id, 'truncated');
  };
  need(4);
  const hlen = bytes.readUInt32LE(off);
  off += 4;
  need(hlen);
  let header: SnapshotHeader;
  try {
    header = JSON.parse(bytes.subarray(off, off + hlen).toString('utf8')) as SnapshotHeader;
  } catch {
    throw corrupt(id, 'unreadable header');
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw corrupt(id, 'unreadable header');
  off += hlen;
  need(4);
  const n = bytes.readUInt32LE(off);
  off += 4;
  need(n * CHUNK_ID_BYTES);
  const listIds = bytes.subarray(off, off + n * CHUNK_ID_BYTES);
  off += n * CHUNK_ID_BYTES;
  const listDepth = version === 1 ? 0 : (header.listDepth ?? 0);
  if (!Number.isInteger(listDepth) || listDepth < 0 || listDepth > 8) throw corrupt(id, 'bad chunk list depth');
  if (listDepth === 0 && n !== header.chunkCount) throw corrupt(id, 'chunk count does not match its header');
  const aad = createHash('sha256').update(bytes.subarray(0, off)).digest();
  need(4);
  const slen = bytes.readUInt32LE(off);
  off += 4;
  need(slen);
  if (off + slen !== bytes.length || slen < 28) throw corrupt(id, 'bad private part');
  return { id, header, listIds, listDepth, sealed: bytes.subarray(off, off + slen), aad, size: bytes.length };
}

export function openSnapshotPrivate(s: DecodedSnapshot, dataKey: Buffer): SnapshotPrivate {
  const nonce = s.sealed.subarray(0, 12);
  const tag = s.sealed.subarray(s.sealed.length - 16);
  const d = createDecipheriv('aes-256-gcm', dataKey, nonce);
  d.setAAD(s.aad);
  d.setAuthTag(tag);
  try {
    const plain = Buffer.concat([d.update(s.sealed.subarray(12, s.sealed.length - 16)), d.final()]);
    return JSON.parse(plain.toString('utf8')) as SnapshotPrivate;
  } catch {
    throw corrupt(s.id, 'private part fails authentication (altered, or written with another key)');
  }
}

/**
 * The snapshot's data chunk IDs (n × 32 bytes), reading list blocks through `fetch` when the
 * list is a tree; `onBlock` sees each list block ID.
 */
export async function snapshotChunkIds(s: DecodedSnapshot, fetch: BlobFetcher, onBlock?: (id: Buffer) => void): Promise<Buffer> {
  const ids = s.listDepth === 0 ? s.listIds : await expandListTree(s.listIds, s.listDepth, fetch, `snapshot ${s.id}`, onBlock);
  if (ids.length !== s.header.chunkCount * CHUNK_ID_BYTES) throw corrupt(s.id, `its chunk list holds ${ids.length / CHUNK_ID_BYTES} chunks, its header ${s.header.chunkCount}`);
  return ids;
}
