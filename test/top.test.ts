import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { KURA, kuraOk, spawnKura, tempDir } from './support/cli.js';
import { LinkProxy, sleep } from './support/proxy.js';
import { agentConfig, sshKey, startVault } from './support/vault.js';

const tmux = (...args: string[]) => execFileSync('tmux', args, { encoding: 'utf8' });

async function screenShows(session: string, what: RegExp, timeoutMs = 20_000): Promise<string> {
  const end = Date.now() + timeoutMs;
  let screen = '';
  while (Date.now() < end) {
    screen = tmux('capture-pane', '-p', '-t', session);
    if (what.test(screen)) return screen;
    await sleep(200);
  }
  throw new Error(`the screen never showed ${what}:\n${screen}`);
}

test('kura top in a terminal: the backlog and exposure grow while the link is down, p and r act on the relay, and the backlog drains to zero', async (t) => {
  const dir = tempDir(t);
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n`);
  t.after(() => vault.stop());
  const link = await new LinkProxy(vault.port).start();
  t.after(() => link.close());
  link.down();
  const cfg = agentConfig(dir, { port: link.port, hostKeySha256: vault.hostKeySha256, key: key.private, extraTop: 'rpo: 3s\n' });
  const env = { KURA_CONFIG: cfg };
  kuraOk(['repo', 'init'], { env });

  const session = `kura-top-${process.pid}`;
  // 80×24, the smallest screen top must work on
  tmux('new-session', '-d', '-s', session, '-x', '80', '-y', '24', `env KURA_CONFIG=${cfg} KURA_LOG_LEVEL=error ${process.execPath} ${KURA} top`);
  t.after(() => {
    try {
      tmux('kill-session', '-t', session);
    } catch {
      /* already gone */
    }
  });
  await screenShows(session, /relay stopped/);

  const relay = spawnKura(['relay', 'run'], env);
  t.after(() => relay.kill('SIGKILL'));
  await screenShows(session, /relay running/);
  kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env, input: 'day one rows\n' });
  kuraOk(['backup', '--name', 'juki', '--stdin', '--route', 'peer-dc'], { env, input: 'day two rows\n' });
  await screenShows(session, /peer-dc\s+waiting-for-line\s+2\b/);
  const over = await screenShows(session, /\d+(\.\d)?[smhd]\/\d+(\.\d)?[smhd]!/);
  assert.match(over, /juki\s+city-a/);
  // the source's own line shows its exposure on the route, over its target
  await screenShows(session, /juki\s+city-a\s+.*peer-dc \d+(\.\d)?[smhd]\/3s!/);

  tmux('send-keys', '-t', session, 'p');
  await screenShows(session, /peer-dc\s+paused\s+2\b/, 3000);
  link.up();
  tmux('send-keys', '-t', session, 'r');
  await sleep(1500);
  assert.match(tmux('capture-pane', '-p', '-t', session), /peer-dc\s+paused\s+2\b/, 'paused: nothing is sent');

  tmux('send-keys', '-t', session, 'p');
  const drained = await screenShows(session, /peer-dc\s+(idle|sending)\s+0\b/);
  assert.match(drained, /sent [0-9a-f]{12} \(juki\) to peer-dc/);
  tmux('send-keys', '-t', session, '?');
  await screenShows(session, /r retry now/);
  for (const line of tmux('capture-pane', '-p', '-t', session).split('\n')) assert.ok(line.length <= 80);
  tmux('send-keys', '-t', session, 'q');
  // the session ends when top exits (and the tmux server with it, if it was the last one)
  const alive = () => {
    try {
      tmux('has-session', '-t', session);
      return true;
    } catch {
      return false;
    }
  };
  const end = Date.now() + 5000;
  while (Date.now() < end && alive()) await sleep(100);
  assert.equal(alive(), false, 'q quits');
});

test('kura top without a terminal prints the status once and exits', async (t) => {
  const dir = tempDir(t);
  const cfg = agentConfig(dir, { port: 1, key: '/dev/null' });
  kuraOk(['repo', 'init'], { env: { KURA_CONFIG: cfg } });
  const out = kuraOk(['top'], { env: { KURA_CONFIG: cfg } }).out;
  assert.match(out, /relay stopped/);
  assert.match(out, /ROUTE\s+STATE/);
  assert.match(out, /peer-dc\s+idle\s+0/);
});
