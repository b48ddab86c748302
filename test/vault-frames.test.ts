import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from './support/cli.js';
import { Frame, frameName } from '../src/protocol/frames.js';
import { roleMay, type FrameRight, type Role } from '../src/vault/access.js';
import { FRAMES, frameEntries } from '../src/vault/frames/index.js';
import { encodeSnapshot, type SnapshotHeader } from '../src/repository/snapshot.js';
import { chunkIds, flushBody, helloBody, listBody, protectBody, putRun, snapshotIdBody, snapshotRef, emptyObject, type BodySchema } from '../src/vault/frames/body.js';

const ROLES: Role[] = ['backup', 'restore', 'tenant-admin', 'system-admin'];

test('every request frame has one entry, and the rights in the table are the role table of docs/protocol.md', () => {
  assert.equal(frameEntries.size, FRAMES.length, 'no frame type twice');
  const doc = readFileSync(path.join(ROOT, 'docs/protocol.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## Roles'));
  const requests = FRAMES.map((e) => frameName(e.type)).filter((n) => n !== 'HELLO');
  const cell = (role: Role) => {
    const row = new RegExp(`^\\| ${role} \\| (.+) \\|$`, 'm').exec(section);
    assert.ok(row, `docs/protocol.md has a row for ${role}`);
    return row[1]!;
  };
  // "all of the above, and PROTECT": the other roles' frames and the ones it names
  const documented = (role: Role): string[] => [
    ...(cell(role).includes('all of the above') ? [...documented('backup'), ...documented('restore')] : []),
    ...(cell(role).match(/[A-Z_]{3,}/g) ?? []),
  ];
  for (const role of ROLES) {
    const allowed = requests.filter((n) => roleMay(role, frameEntries.get(Frame[n as keyof typeof Frame])!.role));
    assert.deepEqual(allowed.sort(), [...new Set(documented(role))].sort(), `what ${role} may send`);
  }
});

test('roleMay: tenant-admin may do everything, the others what their right names, and any role what needs none', () => {
  const table: Array<[Role, FrameRight, boolean]> = [
    ['backup', 'any', true],
    ['backup', 'backup', true],
    ['backup', 'restore', false],
    ['backup', 'tenant-admin', false],
    ['restore', 'any', true],
    ['restore', 'backup', false],
    ['restore', 'restore', true],
    ['restore', 'tenant-admin', false],
    ['tenant-admin', 'backup', true],
    ['tenant-admin', 'restore', true],
    ['tenant-admin', 'tenant-admin', true],
    ['tenant-admin', 'system-admin', false],
    ['system-admin', 'any', true],
    ['system-admin', 'tenant', false],
    ['restore', 'tenant', true],
    ['system-admin', 'system-admin', true],
    ['system-admin', 'restore', false],
    ['system-admin', 'tenant-admin', false],
    ['system-admin', 'backup', false],
  ];
  for (const [role, right, want] of table) assert.equal(roleMay(role, right), want, `${role} for ${right}`);
});

test('payload schemas accept the frames clients send and name what is wrong with the others', () => {
  const j = (v: unknown) => Buffer.from(JSON.stringify(v));
  const runOf = (lengths: number[], blobBytes: number) => {
    const b = Buffer.alloc(4 + 4 * lengths.length + blobBytes);
    b.writeUInt32BE(lengths.length, 0);
    lengths.forEach((l, i) => b.writeUInt32BE(l, 4 + 4 * i));
    return b;
  };
  const table: Array<[string, BodySchema<unknown>, Buffer, RegExp | null]> = [
    ['HELLO of a relay', helloBody, j({ protocol: 3, tenant: 'city-a', client: 'kura' }), null],
    ['HELLO with a null body', helloBody, j(null), /expected object/],
    ['HELLO without a tenant', helloBody, j({ protocol: 3 }), /^tenant: /],
    ['HELLO whose version is a string', helloBody, j({ protocol: '3', tenant: 'a' }), /^protocol: /],
    ['HELLO that is not JSON', helloBody, Buffer.from('{protocol'), /not JSON/],
    ['FLUSH of a relay', flushBody, j({ seq: 7, sum: 'ab'.repeat(32) }), null],
    ['FLUSH with a null body', flushBody, j(null), /expected object/],
    ['FLUSH with a negative seq', flushBody, j({ seq: -1 }), /^seq: /],
    ['FLUSH whose sum is a number', flushBody, j({ seq: 1, sum: 5 }), /^sum: /],
    ['LIST of everything', listBody, j({}), null],
    ['LIST of one source', listBody, j({ source: 'juki' }), null],
    ['LIST whose source is an object', listBody, j({ source: {} }), /^source: /],
    ['LIST of an array', listBody, j([]), /expected object/],
    ['GET_SNAPSHOT of a full ID', snapshotIdBody, j({ id: 'a'.repeat(64) }), null],
    ['GET_SNAPSHOT of a prefix', snapshotIdBody, j({ id: 'abcd' }), /^id: a full ID/],
    ['PROTECT', protectBody, j({ id: 'a'.repeat(64), protect: true }), null],
    ['PROTECT with "yes"', protectBody, j({ id: 'a'.repeat(64), protect: 'yes' }), /^protect: /],
    ['STATS', emptyObject, j({}), null],
    ['STATS with a null body', emptyObject, j(null), /expected object/],
    ['HAS of two IDs', chunkIds, Buffer.alloc(64), null],
    ['HAS of 33 bytes', chunkIds, Buffer.alloc(33), /not a list of 32-byte IDs/],
    ['PUT_RUN of two blobs', putRun, runOf([3, 4], 7), null],
    ['PUT_RUN whose lengths exceed it', putRun, runOf([3, 5], 7), /do not add up/],
    ['PUT_RUN of no blob', putRun, runOf([], 0), /do not add up/],
    ['PUT_RUN of 2^32-1 blobs', putRun, runOf([1], 1).fill(0xff, 0, 4), /do not add up/],
    ['PUT_RUN of 3 bytes', putRun, Buffer.alloc(3), /do not add up/],
    ['WANT by snapshot ID', snapshotRef, Buffer.alloc(32, 1), null],
    ['WANT of something that is not a snapshot file', snapshotRef, Buffer.from('a snapshot, or so it says'), /snapshot [0-9a-f]{64}: not a snapshot file/],
    ['WANT of a snapshot file of a future format', snapshotRef, Buffer.from('KURASNAP but not really'), /unsupported snapshot format 32/],
    ['WANT of an empty payload', snapshotRef, Buffer.alloc(0), /not a snapshot file/],
  ];
  const key = Buffer.alloc(32, 9);
  const header: SnapshotHeader = { tenant: 'city-a', source: 'juki', host: 'h', startTime: 't0', endTime: 't1', logicalBytes: 0, chunkCount: 0, newChunks: 0, newBytes: 0, parent: null, tags: [], listDepth: 0 };
  table.push(
    ['WANT of a snapshot file', snapshotRef, encodeSnapshot(header, Buffer.alloc(0), {}, key).bytes, null],
    ['WANT of a snapshot whose header has no source', snapshotRef, encodeSnapshot({ ...header, source: undefined } as unknown as SnapshotHeader, Buffer.alloc(0), {}, key).bytes, /its header is not a snapshot header \(source: /],
    ['WANT of a snapshot whose chunk count is negative', snapshotRef, encodeSnapshot({ ...header, chunkCount: -1, listDepth: 1 }, Buffer.alloc(0), {}, key).bytes, /header \(chunkCount: /],
  );
  for (const [what, schema, payload, problem] of table) {
    const r = schema.parse(payload);
    if (problem === null) assert.ok(r.ok, `${what}: accepted (${r.ok ? '' : r.problem})`);
    else {
      assert.ok(!r.ok, `${what}: refused`);
      assert.match(r.problem, problem, what);
    }
  }
});
