import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** What the benches share: the commands they need, and a command's wall time and peak RSS. */

/** Exits 69 naming the Debian package of the first of `commands` that is not installed. */
export function needCommands(bench: string, commands: ReadonlyArray<readonly [command: string, debianPackage: string]>): void {
  for (const [cmd, pkg] of commands) {
    if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0) {
      process.stderr.write(`${bench} needs ${cmd} (Debian package ${pkg}): apt-get install ${pkg}\n`);
      process.exit(69);
    }
  }
}

/**
 * The environment a measured command runs in: PATH, HOME, TMPDIR, LANG and TZ of this process and
 * `extra`, nothing else of the shell that started the bench, as cron and systemd start a backup.
 * A shell's variables can cost one tool and not another: NODE_EXTRA_CA_CERTS, set on some machines
 * for every program, has each node process parse the CA bundle as it starts (80 ms of CPU a
 * process on the machine these figures come from, for kura and none of its peers).
 */
export function toolEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const k of ['PATH', 'HOME', 'TMPDIR', 'LANG', 'TZ']) if (process.env[k] !== undefined) env[k] = process.env[k]!;
  return { ...env, ...extra };
}

export interface Run {
  seconds: number;
  /** user + system CPU seconds (GNU time's %U + %S) */
  cpuSeconds: number;
  /** peak RSS of the command's largest process, MiB (GNU time's %M) */
  rssMiB: number;
}

/** Runs a command to completion under GNU time (its report in `rssFile`), in toolEnv(env): wall and CPU seconds and peak RSS. */
export function measurer(rssFile: string): (cmd: string, args: string[], env?: Record<string, string>, input?: string) => Run {
  return (cmd, args, env = {}, input) => {
    const t = performance.now();
    const r = spawnSync('/usr/bin/time', ['-f', '%U %S %M', '-o', rssFile, cmd, ...args], { env: toolEnv(env), encoding: 'utf8', maxBuffer: 1 << 28, input });
    const seconds = (performance.now() - t) / 1000;
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr.slice(-2000)}`);
    const [user, system, kib] = readFileSync(rssFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number) as [number, number, number];
    return { seconds, cpuSeconds: user + system, rssMiB: +(kib / 1024).toFixed(1) };
  };
}
