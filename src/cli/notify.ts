import type { Command } from 'commander';
import { KuraError } from '../errors.js';
import { configOf, printJson, repoPathOf, type RepoOptions } from './context.js';

/** Where this host's notification queue lives: the vault's root on a vault, else beside the local repository. */
async function openNotifier(cmd: Command, opts: RepoOptions & { vault?: boolean }) {
  const { Notifier } = await import('../notify/notifier.js');
  const cfg = configOf(cmd).config;
  const vaultSide = opts.vault ?? (!!cfg.vault && !cfg.repository && !opts.repo);
  if (vaultSide && !cfg.vault) throw new KuraError('E_CONFIG', 'no vault section in the config; --vault needs one');
  const n = Notifier.fromConfig(cfg, vaultSide ? 'vault' : 'agent', vaultSide ? cfg.vault!.root : repoPathOf(cmd, opts));
  if (!n.enabled) {
    await n.close();
    throw new KuraError('E_CONFIG', 'no notification destination is configured: add notifications.email, .webhooks, .slack or .teams ("kura config example" shows them)');
  }
  return n;
}

export function registerNotify(program: Command): void {
  const notify = program.command('notify').description('notifications by mail and chat: send a test message, see and deliver what is queued');
  const common = (c: Command) => c.option('--repo <path>', 'the local repository whose queue to use (default: repository.path)').option('--vault', 'use the vault\'s queue (vault.root)').option('--json', 'print JSON');

  common(notify.command('test'))
    .description('send a test message to every configured destination now and say which took it; exit 1 when one did not')
    .action(async (opts: RepoOptions & { vault?: boolean; json?: boolean }, cmd: Command) => {
      const n = await openNotifier(cmd, opts);
      try {
        n.emit({ event: 'test', key: `test:${Date.now()}`, title: 'kura test message', text: 'This is a test of kura\'s notifications: if you read it, this destination works.', data: {} });
        await n.flush();
        const left = n.pending().filter((p) => p.event === 'test');
        const rows = n.destinations.map((d) => ({ destination: d.id, label: d.label, delivered: !left.some((l) => l.channel === d.id), error: left.find((l) => l.channel === d.id)?.last_error ?? null }));
        if (opts.json) printJson(rows);
        else for (const r of rows) process.stdout.write(`${r.label}: ${r.delivered ? 'delivered' : `NOT delivered: ${r.error} (it stays queued and is retried)`}\n`);
        if (left.length > 0) throw new KuraError('E_IO', `${left.length} destination(s) did not take the test message; see above`, { reported: true });
      } finally {
        await n.close();
      }
    });

  common(notify.command('pending'))
    .description('list notifications that are queued and not yet delivered (with their last error)')
    .action(async (opts: RepoOptions & { vault?: boolean; json?: boolean }, cmd: Command) => {
      const n = await openNotifier(cmd, opts);
      try {
        const rows = n.pending().map((p) => ({ id: p.id, destination: p.channel, event: p.event, key: p.key, attempts: p.attempts, nextAttempt: new Date(p.next_attempt).toISOString(), lastError: p.last_error }));
        if (opts.json) printJson(rows);
        else if (rows.length === 0) process.stdout.write('nothing queued\n');
        else for (const r of rows) process.stdout.write(`${r.id} ${r.event} to ${r.destination}: ${r.attempts} attempt(s), next ${r.nextAttempt}${r.lastError ? `, last error: ${r.lastError}` : ''}\n`);
      } finally {
        await n.close();
      }
    });

  common(notify.command('flush'))
    .description('deliver queued notifications that are due now; exit 75 when some are still waiting')
    .action(async (opts: RepoOptions & { vault?: boolean; json?: boolean }, cmd: Command) => {
      const n = await openNotifier(cmd, opts);
      try {
        const left = await n.flush();
        if (opts.json) printJson({ pending: left });
        else process.stdout.write(`${left} notification(s) still queued\n`);
        if (left > 0) throw new KuraError('E_LOCKED', `${left} notification(s) could not be delivered yet; they stay queued (kura notify pending shows why)`, { reported: true });
      } finally {
        await n.close();
      }
    });
}
