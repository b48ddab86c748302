import type { EventInput } from './events.js';

/** A backup job's result as an event: failed jobs are each said (every lost generation counts), good ones on request. */
export function jobEvent(r: {
  result: 'ok' | 'failed';
  host: string;
  tenant: string;
  source: string;
  job: number | null;
  snapshot?: string | undefined;
  logicalBytes?: number | undefined;
  newBytes?: number | undefined;
  seconds?: number | undefined;
  error?: { code: string; message: string } | undefined;
  stderr?: string | undefined;
}): EventInput {
  const ok = r.result === 'ok';
  const data = { job: r.job, snapshot: r.snapshot, logicalBytes: r.logicalBytes, newBytes: r.newBytes, seconds: r.seconds, error: r.error };
  return {
    event: ok ? 'backup.ok' : 'backup.failed',
    tenant: r.tenant,
    source: r.source,
    key: `${ok ? 'backup.ok' : 'backup.failed'}:${r.source}:${r.job ?? Date.now()}`,
    title: `kura ${ok ? 'backup ok' : 'BACKUP FAILED'}: ${r.source} on ${r.host} (tenant ${r.tenant})`,
    text: ok
      ? `snapshot ${r.snapshot?.slice(0, 12)}, ${r.logicalBytes} bytes, ${r.newBytes} new bytes stored, ${r.seconds?.toFixed(1)} s`
      : `${r.error?.code}: ${r.error?.message}${r.stderr ? `\n--- export stderr (last lines) ---\n${r.stderr.split('\n').slice(-20).join('\n')}` : ''}`,
    data,
  };
}

/** On-site or vault prune/GC that failed: the space is not reclaimed until someone looks. */
export function maintenanceFailed(what: string, err: { code?: string; message: string }, where: { tenant?: string | undefined; source?: string | undefined }): EventInput {
  return {
    event: 'maintenance.failed',
    tenant: where.tenant,
    source: where.source,
    key: `maintenance.failed:${where.tenant ?? ''}:${what}:${err.code ?? ''}`,
    title: `kura ${what.toUpperCase()} FAILED${where.tenant ? ` (tenant ${where.tenant})` : ''}`,
    text: `${what} failed: ${err.code ?? 'E_INTERNAL'}: ${err.message}. Old generations and their space stay until it succeeds; run it by hand to see the whole error.`,
    data: { what, error: { code: err.code ?? 'E_INTERNAL', message: err.message } },
  };
}

/** A snapshot the relay could not send because of its own data (a damaged blob): set aside, the route went on. */
export function snapshotDamaged(route: string, entry: { snapshot: string; source: string }, err: { code: string; message: string }): EventInput {
  return {
    event: 'snapshot.damaged',
    route,
    source: entry.source,
    key: `snapshot.damaged:${route}:${entry.snapshot}`,
    title: `kura SNAPSHOT DAMAGED: ${entry.source} ${entry.snapshot.slice(0, 12)} set aside on route ${route}`,
    text: `Snapshot ${entry.snapshot} of ${entry.source} was not sent on route ${route}: ${err.code}: ${err.message}. The relay went on with the snapshots after it. Damaged blobs are quarantined: the next backup of the same data stores them anew; "kura status" and "kura snapshots" show what stays damaged.`,
    data: { snapshot: entry.snapshot, error: err },
  };
}

/** A vault refused this relay (key, tenant, quota, a snapshot it would not take): someone must act; retries will not help. */
export function relayRefused(route: string, err: { code: string; message: string }): EventInput {
  return {
    event: 'relay.refused',
    route,
    key: `relay.refused:${route}:${err.code}`,
    title: `kura RELAY REFUSED: route ${route} (${err.code})`,
    text: `The vault of route ${route} refused this relay: ${err.code}: ${err.message}. The queue is kept; the relay retries with back-off, but this needs an operator (the vault's config, the key, the quota).`,
    data: { error: err },
  };
}
