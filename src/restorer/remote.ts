import { readFileSync } from 'node:fs';
import { KuraError } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import type { KuraConfig } from '../config/schema.js';
import { Frame, jsonOf } from '../protocol/frames.js';
import { VaultConnection } from '../relay/connection.js';
import { routesOf } from '../relay/routes.js';
import type { MovedAnswer } from '../relay/moved.js';
import type { SnapshotHeader } from '../repository/snapshot.js';
import { loadTicket } from '../sso/ticket-file.js';
import { SYSTEM_USER } from '../vault/access.js';

const GET_BATCH = 1024; // chunks per GET_CHUNKS request at most (a restore asks a segment at a time)
const IN_FLIGHT = 32; // requests sent and not yet answered (a vault on an object store reads them ahead)
/**
 * How far a restore from a vault reads ahead (restoreStream's options): as many segments as an
 * object store's restore, as long as they ask for at most 8192 chunks together. Their requests
 * queue behind each other on the one session, so the vault always has the next ones to read.
 * A 488 MB dump's fourth night from a vault on a directory: 1.38-1.49 s (1.05 s restored
 * locally); in 4 KiB chunks 2.6-2.7 s, as locally (12 s one segment of 64-chunk requests at a
 * time). From a vault on Ceph RGW: 2.0-2.2 s (12.75 s before); in 4 KiB chunks 4.5-4.6 s (211 s
 * before; 2048 chunks at once 7.4-8.5 s, 4096 5.3-5.5 s).
 */
export const VAULT_READING = { reading: 24, readingChunks: 8192 };

export interface RemoteSnapshot extends SnapshotHeader {
  id: string;
  receivedAt: string | null;
  receivedSeq: number | null;
}

export interface RouteSessionOptions {
  /** a system session (SSH user _system, a key of the vault's vault.system.clients) instead of the tenant's */
  system?: boolean | undefined;
  /** present the operator's saved ticket of the route (kura login) in AUTH; default true (kura login itself says false) */
  auth?: boolean | undefined;
}

/**
 * A protocol session with the vault of a route, for an operator (restore, snapshots, protect,
 * prune, delete --from). After HELLO, the ticket `kura login --from ROUTE` saved is presented in
 * AUTH: the SSH key says which machine, the ticket which person. A saved ticket that has expired
 * by this machine's clock is not sent (the vault would refuse it; kura login gets a new one).
 * A line from which nothing arrives for relay.deadAfter fails it (E_LINK_DOWN); `signal` ends it.
 */
export async function connectRoute(cfg: KuraConfig, routeName: string, tenant: string, identity?: string, signal?: AbortSignal, o: RouteSessionOptions = {}): Promise<VaultConnection> {
  const conn = await openRoute(cfg, routeName, tenant, identity, signal, o.system === true);
  try {
    const saved = o.auth === false ? null : loadTicket(routeName);
    if (saved && saved.ticket.expires > Date.now() && conn.protocol >= 5) {
      const ok = jsonOf<{ subject: string; provider: string; role: string }>(await conn.request(Frame.AUTH, { ticket: saved.token }, Frame.AUTH_OK));
      conn.operator = { subject: ok.subject, provider: ok.provider, role: ok.role };
    }
    return conn;
  } catch (e) {
    conn.close();
    throw e;
  }
}

async function openRoute(cfg: KuraConfig, routeName: string, tenant: string, identity: string | undefined, signal: AbortSignal | undefined, system: boolean): Promise<VaultConnection> {
  const route = routesOf(cfg)[routeName];
  if (!route) throw new KuraError('E_CONFIG', `route "${routeName}" is not in modules.routing.routes`);
  const keyFile = identity ?? route.clientKey;
  if (!keyFile) throw new KuraError('E_CONFIG', `no SSH key for route ${routeName}: give --identity FILE or set its clientKey`);
  let privateKey: Buffer;
  try {
    privateKey = readFileSync(keyFile);
  } catch (e) {
    throw new KuraError('E_CONFIG', `cannot read SSH key ${keyFile}: ${(e as Error).message}`);
  }
  // a tenant that moved is followed (the MOVED answer is verified against the pinned host key
  // by the connection; the relay, not a reader, keeps the entry)
  let endpoints = system ? route.endpoints.map((e) => ({ ...e, user: SYSTEM_USER })) : route.endpoints;
  for (let hops = 0; ; hops++) {
    try {
      return await VaultConnection.open(endpoints, {
        route: routeName,
        tenant: system ? SYSTEM_USER : (route.tenant ?? tenant),
        privateKey,
        keepaliveMs: parseDuration(cfg.relay.keepalive)!,
        readyTimeoutMs: parseDuration(cfg.relay.connectTimeout)!,
        deadAfterMs: parseDuration(cfg.relay.deadAfter)!,
        signal,
      });
    } catch (e) {
      if (!(e instanceof KuraError) || e.code !== 'E_TENANT_MOVED' || hops >= 4) throw e;
      endpoints = (e.details!['moved'] as MovedAnswer).endpoints;
    }
  }
}

/** Run `use` on a session with the vault of route `from`, closed afterwards whatever happens. */
export async function withRoute<T>(
  cfg: KuraConfig,
  o: { from: string; tenant?: string | undefined; identity?: string | undefined; signal?: AbortSignal | undefined } & RouteSessionOptions,
  use: (conn: VaultConnection) => Promise<T>,
): Promise<T> {
  try {
    const conn = await connectRoute(cfg, o.from, o.tenant ?? cfg.tenant, o.identity, o.signal, o);
    try {
      return await use(conn);
    } finally {
      conn.close();
    }
  } catch (e) {
    // the vault knows no route names: its advice (`kura login --from ROUTE …`) gets this one's
    if (e instanceof KuraError && e.message.includes('--from ROUTE')) throw new KuraError(e.code, e.message.replaceAll('--from ROUTE', `--from ${o.from}`), e.details, { cause: e.cause });
    throw e;
  }
}

export async function remoteList(conn: VaultConnection, source?: string): Promise<RemoteSnapshot[]> {
  return jsonOf<RemoteSnapshot[]>(await conn.request(Frame.LIST, source ? { source } : {}, Frame.LIST_REPLY));
}

export function resolveRemote(rows: RemoteSnapshot[], ref: string): string {
  if (ref.startsWith('latest:')) {
    const src = ref.slice(7);
    const hit = rows.filter((r) => r.source === src).sort((a, b) => a.endTime.localeCompare(b.endTime)).at(-1);
    if (!hit) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `the vault holds no snapshot of source "${src}"`);
    return hit.id;
  }
  const hits = rows.filter((r) => r.id.startsWith(ref));
  if (!/^[0-9a-f]{4,64}$/.test(ref)) throw new KuraError('E_USAGE', `"${ref}" is not a snapshot reference: give an ID, a unique ID prefix or latest:SOURCE`);
  if (hits.length === 0) throw new KuraError('E_SNAPSHOT_NOT_FOUND', `the vault holds no snapshot ${ref}; list them with "kura snapshots --from ROUTE"`);
  if (hits.length > 1) throw new KuraError('E_SNAPSHOT_AMBIGUOUS', `"${ref}" matches ${hits.length} snapshots in the vault; give more digits`);
  return hits[0]!.id;
}

export async function remoteSnapshotBytes(conn: VaultConnection, id: string): Promise<Buffer> {
  return (await conn.request(Frame.GET_SNAPSHOT, { id }, Frame.SNAPSHOT)).payload;
}

/**
 * Blobs from the vault over one session, verified by the caller. The vault answers its requests in
 * the order sent, so several readers may ask at once (a restore reading segments ahead): their
 * requests of GET_BATCH chunks queue in the order asked, IN_FLIGHT at most are sent and not yet
 * answered, and each answer goes to the reader whose request it is. A reader's blobs wait for it
 * until it takes them (the restore bounds how much it asks ahead); a reader that stops early has
 * its requests not yet sent dropped and the rest of its answers discarded.
 */
export function remoteBlobs(conn: VaultConnection): (ids: Buffer[]) => AsyncGenerator<{ id: Buffer; blob: Buffer }> {
  const unsent: Request[] = [];
  const sent: Request[] = [];
  let failure: unknown = null;
  let receiving = false;
  let sending: Promise<void> = Promise.resolve();
  const fail = (e: unknown) => {
    failure ??= e;
    for (const r of [...sent, ...unsent]) r.reader.wake();
  };
  const pump = () => {
    while (failure === null && sent.length < IN_FLIGHT && unsent.length > 0) {
      const r = unsent.shift()!;
      if (r.reader.stopped) continue;
      sent.push(r);
      // one after the other: the vault answers in the order the requests arrive
      sending = sending.then(() => conn.send(Frame.GET_CHUNKS, Buffer.concat(r.ids))).catch(fail);
    }
    if (!receiving && sent.length > 0 && failure === null) {
      receiving = true;
      receive()
        .catch(fail)
        .finally(() => {
          receiving = false;
          pump();
        });
    }
  };
  const receive = async () => {
    while (sent.length > 0 && failure === null) {
      const r = sent[0]!;
      const f = await conn.expect(Frame.CHUNK);
      const id = r.ids[r.answered]!;
      if (!f.payload.subarray(0, 32).equals(id)) throw new KuraError('E_PROTOCOL', `the vault sent chunk ${f.payload.subarray(0, 32).toString('hex')} instead of ${id.toString('hex')}`);
      if (!r.reader.stopped) r.reader.got.push({ id, blob: f.payload.subarray(32) });
      if (++r.answered === r.ids.length) {
        sent.shift();
        r.reader.answered++;
        pump();
      }
      r.reader.wake();
    }
  };
  return async function* (ids: Buffer[]) {
    if (failure !== null) throw failure;
    const reader: Reader = { got: [], taken: 0, requests: 0, answered: 0, stopped: false, wake: () => {} };
    for (let i = 0; i < ids.length; i += GET_BATCH) unsent.push({ reader, ids: ids.slice(i, i + GET_BATCH), answered: 0 });
    reader.requests = Math.ceil(ids.length / GET_BATCH);
    pump();
    try {
      for (;;) {
        while (reader.taken < reader.got.length) yield reader.got[reader.taken++]!;
        reader.got.length = reader.taken = 0;
        if (failure !== null) throw failure;
        if (reader.answered === reader.requests) return;
        await new Promise<void>((r) => (reader.wake = r));
      }
    } finally {
      reader.stopped = true;
      reader.got.length = 0;
    }
  };
}

interface Reader {
  /** blobs answered and not yet taken */
  got: Array<{ id: Buffer; blob: Buffer }>;
  taken: number;
  requests: number;
  answered: number;
  stopped: boolean;
  wake: () => void;
}

interface Request {
  reader: Reader;
  ids: Buffer[];
  answered: number;
}
