import type { KuraConfig } from '../config/schema.js';
import { parseDuration } from '../config/duration.js';
import { log } from '../log.js';

/** What the agent tells operators about one source's job. */
export interface JobEvent {
  event: 'backup.failed' | 'backup.ok';
  host: string;
  tenant: string;
  source: string;
  job: number | null;
  snapshot?: string | undefined;
  logicalBytes?: number | undefined;
  newBytes?: number | undefined;
  seconds?: number | undefined;
  error?: { code: string; message: string } | undefined;
  time: string;
}

type Webhook = KuraConfig['notifications']['webhooks'][number];

export function webhookBody(format: Webhook['format'], e: JobEvent): unknown {
  const ok = e.event === 'backup.ok';
  const title = `kura ${ok ? 'backup ok' : 'BACKUP FAILED'}: ${e.source} on ${e.host} (tenant ${e.tenant})`;
  const detail = ok ? `snapshot ${e.snapshot?.slice(0, 12)}, ${e.logicalBytes} bytes, ${e.newBytes} new bytes stored, ${e.seconds?.toFixed(1)} s` : `${e.error?.code}: ${e.error?.message}`;
  switch (format) {
    case 'slack':
      return { text: `${title}\n${detail}` };
    case 'teams':
      return { '@type': 'MessageCard', '@context': 'https://schema.org/extensions', summary: title, themeColor: ok ? '2EB886' : 'D00000', title, text: detail };
    default:
      return e;
  }
}

/**
 * Deliver a job event to every webhook that wants it. Never throws: a delivery failure is
 * logged and the backup's result stands.
 */
export async function notify(cfg: KuraConfig, e: JobEvent): Promise<void> {
  const want = e.event === 'backup.ok' ? 'success' : 'failure';
  await Promise.all(
    cfg.notifications.webhooks
      .filter((w) => w.on.includes(want))
      .map(async (w) => {
        try {
          const res = await fetch(w.url, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify(webhookBody(w.format, e)),
            signal: AbortSignal.timeout(parseDuration(w.timeout)!),
          });
          if (!res.ok) throw new Error(`HTTP ${res.status}`);
          await res.arrayBuffer().catch(() => {});
        } catch (err) {
          log().warn({ webhook: redactUrl(w.url), source: e.source, event: e.event, err: (err as Error).message }, 'notification not delivered');
        }
      }),
  );
}

/** Webhook URLs carry secrets in their path (Slack, Teams): log only the origin. */
function redactUrl(url: string): string {
  try {
    return new URL(url).origin + '/…';
  } catch {
    return '(bad url)';
  }
}
