import path from 'node:path';
import { KuraError } from '../../errors.js';
import type { VaultConfig } from '../../config/schema.js';
import { parseDuration } from '../../config/duration.js';
import type { AuditLog } from '../audit.js';
import { AUDIT_AREA, mergeAuditLines, segmentsToRead, type AuditLine } from './audit-segments.js';
import { AuditShipper } from './audit-ship.js';
import { openLeaseStore, type LeaseStore } from './lease-store.js';

/** Names in the nodes' area (<prefix>nodes/): the audit area is its "audit/". */
const AREA = AUDIT_AREA.slice('nodes/'.length);

/**
 * The nodes' area of the bucket, where the audit segments go beside the leases: the same store
 * (by the same registry of stores every node can reach), one request per write with a short
 * timeout and no retries of its own: a shipment that fails is retried by the shipper, later.
 */
function nodesArea(cfg: VaultConfig): LeaseStore {
  if (!cfg.storage || cfg.storage.type === 'fs') throw new KuraError('E_CONFIG', `the audit logs of vault nodes live in their shared vault.storage (s3); this vault has none: read its audit log, ${cfg.auditLog ?? path.join(cfg.root, 'audit.jsonl')}`);
  return openLeaseStore(cfg.storage);
}

/** `kura vault serve` with vault.node: ship this node's audit lines into the bucket, under nodes/audit/<id>/. */
export function startAuditShipping(cfg: VaultConfig, audit: AuditLog, log: { info(o: object, m: string): void; error(o: object, m: string): void }): { shipper: AuditShipper; stop(): Promise<void> } {
  const node = cfg.node!;
  const store = nodesArea(cfg);
  const shipper = new AuditShipper({
    file: audit.file,
    stateFile: path.join(cfg.root, 'audit-shipped.json'),
    node: node.id,
    sink: { put: (key, body) => store.put(AREA + key, body) },
    everyMs: parseDuration(node.audit.every)!,
    lines: node.audit.lines,
    log,
  });
  audit.subscribe((e) => shipper.observe(e));
  shipper.start();
  return {
    shipper,
    stop: async () => {
      await shipper.stop();
      store.close();
    },
  };
}

export interface NodeAuditQuery {
  node?: string | undefined;
  since?: string | undefined;
  tenant?: string | undefined;
}

export interface NodeAudit {
  store: string;
  nodes: string[];
  segments: number;
  lines: AuditLine[];
  /** lines that were no JSON (torn by a crash) */
  unreadable: number;
}

/** Every node's audit lines shipped to the store (`kura vault audit`), merged in time order: any node reads them, a dead one's too. */
export async function readNodeAudit(cfg: VaultConfig, q: NodeAuditQuery): Promise<NodeAudit> {
  const store = nodesArea(cfg);
  try {
    const keys = (await store.list(AREA)).map((n) => n.slice(AREA.length));
    const nodes = [...new Set(keys.map((k) => k.split('/')[0]!))].sort();
    if (q.node && !nodes.includes(q.node)) throw new KuraError('E_USAGE', `no audit lines of node "${q.node}" under ${AREA} of ${store.location}; nodes with lines there: ${nodes.join(', ') || 'none'}`);
    const refs = segmentsToRead(keys, q.since, q.node);
    const bodies: Array<{ node: string; body: string }> = new Array(refs.length);
    // a few reads side by side, kept in the order of the list
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(8, refs.length) }, async () => {
        while (next < refs.length) {
          const i = next++;
          const r = refs[i]!;
          bodies[i] = { node: r.node, body: (await store.read(AREA + r.key))?.body.toString('utf8') ?? '' };
        }
      }),
    );
    const { lines, unreadable } = mergeAuditLines(bodies, { since: q.since ?? null, tenant: q.tenant ?? null });
    return { store: `${AREA} of ${store.location}`, nodes, segments: refs.length, lines, unreadable };
  } finally {
    store.close();
  }
}
