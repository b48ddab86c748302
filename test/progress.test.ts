import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { KURA, kuraAsync, kuraJson, kuraOk, tempDir } from './support/cli.js';
import { Prng, sqlDump, collect } from './support/generate.js';
import { agentConfig, sshKey, startVault } from './support/vault.js';
import { etaOf, formatEta, progressLine, progressMode, rateOf } from '../src/cli/progress.js';

const MiB = 1 << 20;

test('progress: which form for which flags and terminal, rate over the last seconds, time left', () => {
  const modes: Array<[{ json?: boolean; progress?: boolean }, boolean, string]> = [
    [{}, true, 'tty'], // a person at a terminal sees a line
    [{}, false, 'off'], // cron, systemd, a pipe: nothing
    [{ json: true }, true, 'off'], // --json alone keeps standard error for errors
    [{ progress: true }, false, 'lines'],
    [{ progress: true }, true, 'tty'],
    [{ json: true, progress: true }, false, 'json'],
    [{ json: true, progress: true }, true, 'json'],
    [{ progress: false }, true, 'off'],
  ];
  for (const [flags, tty, want] of modes) assert.equal(progressMode(flags, tty), want, `${JSON.stringify(flags)} tty=${tty}`);

  assert.equal(rateOf([]), 0);
  assert.equal(rateOf([{ t: 1, bytes: 100 }]), 0);
  assert.equal(rateOf([{ t: 0, bytes: 0 }, { t: 2, bytes: 200 }]), 100);
  // the first seconds were slow: the rate is that of the last five
  assert.equal(rateOf([{ t: 0, bytes: 0 }, { t: 10, bytes: 100 }, { t: 12, bytes: 300 }, { t: 15, bytes: 600 }]), 100);
  assert.equal(etaOf(50, 150, 10), 10);
  assert.equal(etaOf(50, undefined, 10), null);
  assert.equal(etaOf(50, 150, 0), null);
  assert.equal(etaOf(200, 150, 10), 0);
  assert.equal(formatEta(null), '--:--');
  assert.equal(formatEta(5), '0:05');
  assert.equal(formatEta(3725), '1:02:05');
  assert.equal(
    progressLine({ op: 'restore', subject: 'abc', bytes: 128 * MiB, total: 512 * MiB }, 64 * MiB, 6),
    'restore abc  128.0 MiB / 512.0 MiB  25%  64.0 MiB/s  ETA 0:06',
  );
  assert.equal(progressLine({ op: 'backup', subject: 'juki', bytes: 3 * MiB, extra: { newBytes: MiB } }, MiB, null), 'backup juki  3.0 MiB  1.0 MiB/s  new bytes 1.0 MiB');
});

/**
 * Runs a shell command in a detached tmux pane (a terminal) and samples the screen until `until`
 * matches (then `release` is created: the command's other end may go on) and the command ends.
 */
function inTmux(cmd: string, until: RegExp, release: string, timeoutMs = 90_000): { seen: string; final: string } {
  const session = `kura-progress-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const tmux = (...a: string[]) => spawnSync('tmux', a, { encoding: 'utf8' });
  const r = tmux('new-session', '-d', '-s', session, '-x', '160', '-y', '20', `${cmd}; echo "EXIT=$?"; sleep 30`);
  assert.equal(r.status, 0, `tmux: ${r.stderr}`);
  let seen = '';
  let final = '';
  try {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const screen = tmux('capture-pane', '-p', '-t', session).stdout;
      if (until.test(screen) && !seen) {
        seen = screen;
        writeFileSync(release, '');
      }
      if (!seen && Date.now() > deadline - timeoutMs / 2) writeFileSync(release, ''); // not seen in time: let it end, and fail
      if (/EXIT=\d+/.test(screen)) {
        final = screen;
        break;
      }
      spawnSync('sleep', ['0.05']);
    }
  } finally {
    tmux('kill-session', '-t', session);
  }
  return { seen, final };
}

test('on a terminal, restore and backup show bytes, rate and time left while they work, and clear the line when done; not on a terminal they say nothing more', async (t) => {
  const dir = tempDir(t);
  const repo = path.join(dir, 'repo');
  const dump = path.join(dir, 'dump.sql');
  writeFileSync(dump, await collect(sqlDump(31, 12 * MiB)));
  kuraOk(['repo', 'init', '--repo', repo, '--chunk-min', '1024', '--chunk-avg', '4096', '--chunk-max', '16384']);
  kuraOk(['backup', '--repo', repo, '--name', 'juki', '--file', dump]);
  const env = `KURA_PASSPHRASE='correct horse' KURA_LOG_FORMAT=json`;

  // the restore's reader waits until the line was seen: it stays up with what is done so far
  const go = (n: number) => path.join(dir, `go${n}`);
  const waitFor = (f: string) => `while [ ! -e ${f} ]; do sleep 0.1; done`;
  const restore = inTmux(`${env} ${process.execPath} ${KURA} restore --repo ${repo} latest:juki | (${waitFor(go(1))}; cat > /dev/null)`, /restore \w{12}\s+[\d.]+ [KMG]?i?B \/ 12\.0 MiB\s+\d+%\s+[\d.]+ [KMG]?i?B\/s\s+ETA (\d+:\d\d|--:--)/, go(1));
  assert.ok(restore.seen, `a progress line was on the screen: ${restore.final}`);
  assert.match(restore.final, /EXIT=0/);
  assert.match(restore.final, /restored \w{12}: 12\.0 MiB in \d+ chunks, verified/);
  assert.doesNotMatch(restore.final, /ETA/, 'the progress line is cleared at the end');

  // a backup from a pipe that pauses: bytes and rate (no total to count down from)
  const backup = inTmux(`(head -c 4000000 ${dump}; ${waitFor(go(2))}; tail -c +4000001 ${dump}) | ${env} ${process.execPath} ${KURA} backup --repo ${repo} --name juki2 --stdin`, /backup juki2\s+[\d.]+ MiB\s+[\d.]+ [KMG]?i?B\/s\s+new bytes [\d.]+ [KMG]?i?B/, go(2));
  assert.ok(backup.seen, `a progress line was on the screen: ${backup.final}`);
  assert.match(backup.final, /EXIT=0/);
  assert.match(backup.final, /snapshot \w{12} of juki2/);

  // --file: a total, so a percentage and the time left
  const file = inTmux(`${env} ${process.execPath} ${KURA} backup --repo ${repo} --name juki3 --file ${dump} --chunk-avg 4096; sleep 1`, /backup juki3\s+[\d.]+ [KMG]?i?B \/ 12\.0 MiB\s+\d+%/, go(3));
  // a fast machine may finish before the first line (250 ms): then only the summary is there
  assert.match(file.final, /EXIT=0/);
  assert.match(file.final, /snapshot \w{12} of juki3/);
  assert.doesNotMatch(file.final, /ETA/);

  // no terminal: the summary line alone
  const quiet = await kuraAsync(['restore', '--repo', repo, 'latest:juki', '--to', path.join(dir, 'out.sql')]);
  assert.equal(quiet.status, 0);
  assert.deepEqual(quiet.stderr.trim().split('\n').length, 1, quiet.stderr);
  assert.doesNotMatch(quiet.stderr, /ETA|\r/);
});

test('--json --progress: JSON progress lines on standard error for restore, backup and relay once, the result alone on standard output', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  t.after(() => vault.stop());
  // a route held to 2 MB/s: sending the backup takes a few seconds
  const env = { KURA_CONFIG: agentConfig(dir, { port: vault.port, hostKeySha256: vault.hostKeySha256, key: key.private, extraRoute: '        rate: 2MB/s\n' }) };
  kuraOk(['repo', 'init'], { env });
  const f = path.join(dir, 'data.bin');
  writeFileSync(f, new Prng(7).bytes(6 * MiB));
  const lines = (stderr: string) =>
    stderr
      .split('\n')
      .filter((l) => l.startsWith('{"type":"progress"'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  const b = await kuraAsync(['backup', '--name', 'db', '--file', f, '--route', 'peer-dc', '--json', '--progress'], { env });
  assert.equal(b.status, 0, b.stderr);
  const id = (JSON.parse(b.out) as { id: string }).id;
  const bl = lines(b.stderr);
  assert.ok(bl.length >= 1, b.stderr);
  const last = bl[bl.length - 1]!;
  assert.equal(last.op, 'backup');
  assert.equal(last.done, true);
  assert.equal(last.bytes, 6 * MiB);
  assert.equal(last.total, 6 * MiB);
  assert.equal(last.percent, 100);

  const r = await kuraAsync(['relay', 'once', '--json', '--progress'], { env });
  assert.equal(r.status, 0, r.stderr);
  const rl = lines(r.stderr);
  assert.ok(rl.length >= 2, `a line a second while the route sends for about 3 s: ${r.stderr}`);
  assert.ok(rl.every((l) => l.op === 'relay' && typeof l.bytesPerSecond === 'number'));
  assert.ok(rl.some((l) => (l.bytes as number) > 0 && (l.bytes as number) < 6 * MiB && l.etaSeconds !== null), 'bytes on the wire under way, with the time left');
  assert.equal(rl[rl.length - 1]!.snapshots, '1/1');
  assert.equal(rl[rl.length - 1]!.done, true);
  assert.ok((rl[rl.length - 1]!.bytes as number) >= 6 * MiB);

  const out = path.join(dir, 'restored.bin');
  const rs = await kuraAsync(['restore', id, '--from', 'peer-dc', '--to', out, '--json', '--progress'], { env });
  assert.equal(rs.status, 0, rs.stderr);
  assert.equal((JSON.parse(rs.out) as { bytes: number }).bytes, 6 * MiB, 'the result line alone on standard output');
  const sl = lines(rs.stderr);
  assert.equal(sl[sl.length - 1]!.bytes, 6 * MiB);
  assert.equal(sl[sl.length - 1]!.total, 6 * MiB);
  assert.equal(kuraJson<{ bytes: number }>(['restore', id, '--to', path.join(dir, 'again.bin'), '--json'], { env }).bytes, 6 * MiB);
});
