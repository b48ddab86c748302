import type { AuditEvent } from './audit.js';

/** Counters of a running vault, fed by its audit events; rendered as Prometheus text. */
export class VaultMetrics {
  private sessions = new Map<string, number>();
  private refusals = new Map<string, number>();
  private received = new Map<string, number>();
  private commits = new Map<string, number>();
  private lastCommit = new Map<string, number>();

  observe(e: AuditEvent): void {
    const tenant = e.tenant ?? '';
    const inc = (m: Map<string, number>, k: string, by = 1) => m.set(k, (m.get(k) ?? 0) + by);
    if (e.event === 'session-start') inc(this.sessions, tenant);
    if (e.outcome === 'refused') inc(this.refusals, `${e.code ?? 'unknown'}|${tenant}`);
    if (e.event === 'session-end' || e.event === 'session-refused') inc(this.received, tenant, Number(e.putBytes ?? 0));
    if (e.event === 'commit') {
      inc(this.commits, tenant);
      this.lastCommit.set(tenant, Math.floor(Date.now() / 1000));
    }
  }

  render(stored: Array<{ tenant: string; storedBytes: number; snapshots: number; chunks: number }>, memory?: { heldBytes: number; peakBytes: number; limitBytes: number; sessions: number }): string {
    const out: string[] = [];
    const block = (name: string, help: string, type: string, rows: Array<[string, number]>) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...rows.map(([l, v]) => `${l ? `${name}{${l}}` : name} ${v}`));
    };
    const byTenant = (m: Map<string, number>) => [...m].map(([t, v]) => [`tenant="${t}"`, v] as [string, number]);
    block('kura_vault_sessions_total', 'Protocol sessions opened', 'counter', byTenant(this.sessions));
    block('kura_vault_refusals_total', 'Refused attempts (authentication, role, tenant, frames)', 'counter', [...this.refusals].map(([k, v]) => {
      const [code, tenant] = k.split('|');
      return [`code="${code}",tenant="${tenant}"`, v] as [string, number];
    }));
    block('kura_vault_bytes_received_total', 'Chunk bytes received', 'counter', byTenant(this.received));
    block('kura_vault_commits_total', 'Snapshots committed', 'counter', byTenant(this.commits));
    block('kura_vault_last_commit_timestamp_seconds', 'Time of the last committed snapshot', 'gauge', byTenant(this.lastCommit));
    block('kura_vault_stored_bytes', 'Bytes stored per tenant', 'gauge', stored.map((s) => [`tenant="${s.tenant}"`, s.storedBytes]));
    block('kura_vault_snapshots', 'Snapshots held per tenant', 'gauge', stored.map((s) => [`tenant="${s.tenant}"`, s.snapshots]));
    if (memory) {
      block('kura_vault_sessions_open', 'Protocol sessions open now', 'gauge', [['', memory.sessions]]);
      block('kura_vault_session_memory_bytes', 'Bytes the open sessions hold in memory (vault.limits.totalBytes bounds it)', 'gauge', [['', memory.heldBytes]]);
      block('kura_vault_session_memory_peak_bytes', 'The most the sessions held in memory at once since the vault started', 'gauge', [['', memory.peakBytes]]);
      block('kura_vault_session_memory_limit_bytes', 'vault.limits.totalBytes', 'gauge', [['', memory.limitBytes]]);
    }
    return out.join('\n') + '\n';
  }
}
