import pino, { type Logger } from 'pino';

/**
 * pino JSON on stderr (stdout carries data: snapshot IDs, restores, --json lines). A terminal
 * gets a one-line human form instead unless KURA_LOG_FORMAT=json.
 */
const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

function prettyStream() {
  return {
    write(line: string) {
      try {
        const o = JSON.parse(line) as Record<string, unknown>;
        const { level, time, msg, pid: _p, hostname: _h, ...rest } = o;
        const t = new Date(Number(time)).toTimeString().slice(0, 8);
        const extra = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ');
        process.stderr.write(`${t} ${LEVELS[Number(level)] ?? level} ${String(msg ?? '')}${extra ? ' ' + extra : ''}\n`);
      } catch {
        process.stderr.write(line);
      }
    },
  };
}

let current: Logger | null = null;

export function createLogger(level = 'info'): Logger {
  const pretty = process.stderr.isTTY && process.env.KURA_LOG_FORMAT !== 'json';
  current = pino({ level, base: { pid: process.pid } }, pretty ? prettyStream() : pino.destination({ fd: 2, sync: true }));
  return current;
}

export function log(): Logger {
  return current ?? createLogger(process.env.KURA_LOG_LEVEL ?? 'info');
}
