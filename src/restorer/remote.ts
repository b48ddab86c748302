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

const GET_BATCH = 64; // chunks per GET_CHUNKS request (two requests in flight)

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

/** Blobs of `ids` from the vault in order, two requests in flight, verified by the caller. */
export function remoteBlobs(conn: VaultConnection) {
  return async function* (ids: Buffer[]): AsyncGenerator<{ id: Buffer; blob: Buffer }> {
    const batches: Buffer[][] = [];
    for (let i = 0; i < ids.length; i += GET_BATCH) batches.push(ids.slice(i, i + GET_BATCH));
    let requested = 0;
    const request = async () => {
      if (requested < batches.length) await conn.send(Frame.GET_CHUNKS, Buffer.concat(batches[requested++]!));
    };
    await request();
    await request();
    for (let b = 0; b < batches.length; b++) {
      for (const id of batches[b]!) {
        const f = await conn.expect(Frame.CHUNK);
        if (!f.payload.subarray(0, 32).equals(id)) throw new KuraError('E_PROTOCOL', `the vault sent chunk ${f.payload.subarray(0, 32).toString('hex')} instead of ${id.toString('hex')}`);
        yield { id, blob: f.payload.subarray(32) };
      }
      await request();
    }
  };
}
