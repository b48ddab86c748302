import { useEffect, useState } from 'react';
import { Box, Text, useApp, useInput } from 'ink';
import type { StatusReport } from '../status/status.js';
import type { Hop } from '../status/hops.js';
import { formatAge as age, formatBytes as bytes } from '../format.js';

export interface TopData {
  report: StatusReport;
  relayRunning: boolean;
  recent: Array<{ snapshot: string; route: string; source: string; sent: string; bytes_sent: number }>;
  jobs: Array<{ source: string; finished: string | null; result: string; new_bytes: number | null; error_code: string | null }>;
  /** every route's hops (this host → its vault → the vault's forwarding routes), when asked */
  hops?: Hop[];
}

export interface TopProps {
  load: () => TopData;
  control: (route: string, c: { paused?: boolean; retry?: boolean }) => void;
  refreshMs?: number;
}

const SPARK = '▁▂▃▄▅▆▇█';

function spark(history: number[]): string {
  const max = Math.max(1, ...history);
  return history.map((v) => SPARK[Math.min(SPARK.length - 1, Math.floor((v / max) * (SPARK.length - 1)))]).join('');
}

const stateColor: Record<string, string> = { sending: 'green', idle: 'gray', 'waiting-for-line': 'yellow', paused: 'cyan', refused: 'red', 'quota-exceeded': 'red' };

/** kura top: routes, backlog, rate, ETA, RPO exposure, sources, recent jobs; keys act on the relay. */
export function TopApp({ load, control, refreshMs = 500 }: TopProps) {
  const { exit } = useApp();
  const [data, setData] = useState<TopData>(load);
  const [selected, setSelected] = useState(0);
  const [help, setHelp] = useState(false);
  const [note, setNote] = useState('');
  const [rates, setRates] = useState<Record<string, { last: number; at: number; history: number[] }>>({});

  useEffect(() => {
    const t = setInterval(() => {
      const next = load();
      setData(next);
      setRates((prev) => {
        const now = Date.now();
        const out: typeof prev = {};
        for (const r of next.report.routes) {
          const p = prev[r.route];
          const rate = p ? Math.max(0, ((r.bytesSent - p.last) * 1000) / Math.max(1, now - p.at)) : 0;
          out[r.route] = { last: r.bytesSent, at: now, history: [...(p?.history ?? []), rate].slice(-20) };
        }
        return out;
      });
    }, refreshMs);
    return () => clearInterval(t);
  }, [load, refreshMs]);

  const routes = data.report.routes;
  useInput((input, key) => {
    if (input === 'q' || (key.ctrl && input === 'c')) return exit();
    if (input === '?') return setHelp((h) => !h);
    if (key.upArrow) setSelected((s) => Math.max(0, s - 1));
    if (key.downArrow) setSelected((s) => Math.min(routes.length - 1, s + 1));
    const r = routes[Math.min(selected, routes.length - 1)];
    if (!r) return;
    if (input === 'p') {
      control(r.route, { paused: !r.paused });
      setNote(`${r.paused ? 'resume' : 'pause'} ${r.route} requested`);
      setData(load());
    }
    if (input === 'r') {
      control(r.route, { retry: true });
      setNote(`retry ${r.route} requested`);
    }
  });

  return (
    <Box flexDirection="column">
      <Box justifyContent="space-between">
        <Text bold>kura top</Text>
        <Text>{data.report.time.replace('T', ' ').slice(0, 19)}</Text>
        <Text color={data.relayRunning ? 'green' : 'red'}>relay {data.relayRunning ? 'running' : 'stopped'}</Text>
      </Box>
      <Text bold>{'  ROUTE        STATE            QUEUE  BYTES     RATE       ETA   EXPOSURE/RPO'}</Text>
      {routes.map((r, i) => {
        const h = rates[r.route]?.history ?? [];
        const rate = h.at(-1) ?? 0;
        const eta = r.queuedBytes > 0 && rate > 0 ? age(r.queuedBytes / rate) : '-';
        return (
          <Box key={r.route} flexDirection="column">
            <Text>
              <Text>{i === selected ? '> ' : '  '}</Text>
              <Text>{r.route.slice(0, 12).padEnd(12)} </Text>
              <Text color={stateColor[r.state] ?? 'white'}>{r.state.padEnd(16)} </Text>
              <Text>{String(r.queued).padStart(5)}  {bytes(r.queuedBytes).padEnd(9)} {(bytes(rate) + '/s').padEnd(10)} {eta.padEnd(5)} </Text>
              <Text color={r.overTarget ? 'red' : 'green'}>
                {age(r.exposureSeconds)}/{age(r.rpoTargetSeconds)}
                {r.overTarget ? '!' : ''}
              </Text>
            </Text>
            {i === selected ? (
              <Text color="gray">
                {'    '}rate {spark(h)} {r.worstSource ? `worst: ${r.worstSource} ` : ''}{r.lastError ? `last error: ${r.lastError.slice(0, 50)}` : ''}
              </Text>
            ) : null}
          </Box>
        );
      })}
      {(data.hops ?? []).some((h) => h.hop > 1) ? <Text bold>{'  HOP ROUTE               STATE            EXPOSED (per source)'}</Text> : null}
      {(data.hops ?? [])
        .filter((h) => (data.hops ?? []).some((x) => x.hop > 1 && x.from === (h.hop === 1 ? h.to : h.from)))
        .map((h) => (
          <Text key={`hop-${h.hop}-${h.from}-${h.to}`}>
            {'  '}
            {String(h.hop).padEnd(3)} {`${h.hop === 1 ? '' : h.from + '→'}${h.to}`.slice(0, 19).padEnd(19)} <Text color={stateColor[h.state] ?? 'white'}>{h.state.padEnd(16)}</Text>{' '}
            {h.sources.map((x) => `${x.source} ${x.exposureSeconds === null ? '-' : age(x.exposureSeconds)}${x.pending ? ` (${x.pending} queued)` : ''} `).join('')}
            {h.clockOffsetMs !== null && Math.abs(h.clockOffsetMs) > 2000 ? <Text color="yellow">{` clock ${(h.clockOffsetMs / 1000).toFixed(1)}s`}</Text> : null}
          </Text>
        ))}
      {data.report.warnings.map((w, i) => (
        <Text key={`warn${i}`} color="yellow">
          {'  '}warning: {w}
        </Text>
      ))}
      <Text bold>{'  SOURCE       TENANT       LAST BACKUP          NEW        EXPOSED/RPO (per route)'}</Text>
      {data.report.sources.slice(0, 6).map((s) => (
        <Text key={s.source}>
          {'  '}
          {s.source.slice(0, 12).padEnd(12)} {s.tenant.slice(0, 12).padEnd(12)} {(s.lastBackup ?? '-').replace('T', ' ').slice(0, 19).padEnd(20)} {bytes(s.lastNewBytes).padEnd(10)}{' '}
          {s.exposure.map((e) => (
            <Text key={e.route ?? 'on-site'} color={e.overTarget ? 'red' : 'green'}>
              {`${e.route ?? 'on-site'} ${e.exposureSeconds === null ? '-' : age(e.exposureSeconds)}/${age(e.targetSeconds)}${e.overTarget ? '!' : ''} `}
            </Text>
          ))}
          <Text color="red">{s.lastJobFailed ? ` FAILED ${s.lastJob?.errorCode ?? ''}` : ''}</Text>
        </Text>
      ))}
      {data.report.sources.some((s) => s.plan) ? <Text bold>{'  PLANNED      GROUP        NEXT START  SLOT     LAST RUN'}</Text> : null}
      {data.report.sources
        .filter((s) => s.plan)
        .slice(0, 4)
        .map((s) => (
          <Text key={`plan-${s.source}`} color={s.plan!.lastRun?.startsWith('uncoordinated') ? 'yellow' : undefined}>
            {'  '}
            {s.source.slice(0, 12).padEnd(12)} {s.plan!.group.slice(0, 12).padEnd(12)} {(s.plan!.nextStart ? new Date(s.plan!.nextStart).toTimeString().slice(0, 8) : '-').padEnd(11)} {s.plan!.slot.padEnd(8)} {(s.plan!.lastRun ?? '-').slice(0, 24)}
          </Text>
        ))}
      <Text bold>{'  RECENT'}</Text>
      {data.jobs.slice(0, 3).map((j, i) => (
        <Text key={`job${i}`} color={j.result === 'failed' ? 'red' : undefined}>
          {'  '}
          {(j.finished ?? '').replace('T', ' ').slice(11, 19).padEnd(8)} backup {j.source} {j.result === 'ok' ? `ok, ${bytes(j.new_bytes ?? 0)} new` : j.result === 'failed' ? `FAILED ${j.error_code ?? ''}` : 'running'}
        </Text>
      ))}
      {data.recent.slice(0, 3).map((j) => (
        <Text key={j.snapshot + j.route}>
          {'  '}
          {j.sent.replace('T', ' ').slice(11, 19)} sent {j.snapshot.slice(0, 12)} ({j.source}) to {j.route}, {bytes(j.bytes_sent)}
        </Text>
      ))}
      {help ? <Text color="cyan">↑/↓ route · p pause/resume · r retry now (skip back-off) · q quit</Text> : null}
      <Text color="gray">{note || 'keys: ↑↓ select  p pause/resume  r retry  ? help  q quit'}</Text>
    </Box>
  );
}
