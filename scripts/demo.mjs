// `npm start`: the main job on the embedded default. A local repository in ./kura-demo, the
// bundled sample database export backed up (twice: the second run stores nothing new), restored
// and compared byte for byte, then the repository checked end to end. Rerunning adds generations.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const kura = path.join(root, 'bin/kura');
const demo = path.join(root, 'kura-demo');
const repo = path.join(demo, 'repo');
const sample = path.join(root, 'fixtures/sample.sql');
const passFile = path.join(demo, 'passphrase');

function run(args, opts = {}) {
  console.log(`$ kura ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [kura, ...args], { stdio: ['ignore', opts.capture ? 'pipe' : 'inherit', 'inherit'], maxBuffer: 1 << 30 });
  if (r.status !== 0) {
    console.error(`demo failed: kura ${args[0]} exited ${r.status}`);
    process.exit(r.status ?? 1);
  }
  return r.stdout;
}

mkdirSync(demo, { recursive: true });
if (!existsSync(passFile)) writeFileSync(passFile, `demo-${createHash('sha256').update(String(Date.now())).digest('hex').slice(0, 16)}\n`, { mode: 0o600 });
const keyOpts = ['--repo', repo, '--passphrase-file', passFile];
if (!existsSync(path.join(repo, 'config'))) run(['repo', 'init', ...keyOpts]);

const first = JSON.parse(run(['backup', ...keyOpts, '--name', 'sample', '--file', sample, '--json'], { capture: true }).toString());
console.log(`  snapshot ${first.id.slice(0, 12)}: ${first.logicalBytes} bytes, ${first.chunks} chunks, ${first.newChunks} new, ${first.newBytes} bytes stored`);
const second = JSON.parse(run(['backup', ...keyOpts, '--name', 'sample', '--file', sample, '--json'], { capture: true }).toString());
console.log(`  snapshot ${second.id.slice(0, 12)}: unchanged input, ${second.newBytes} new bytes stored`);
const restored = run(['restore', ...keyOpts, `latest:sample`], { capture: true });
const same = restored.equals(readFileSync(sample));
console.log(`  restored ${restored.length} bytes: ${same ? 'identical to the sample' : 'DIFFERENT from the sample'}`);
run(['check', ...keyOpts, '--read-data']);
run(['snapshots', '--repo', repo]);
if (!same || second.newBytes !== 0) process.exit(1);
console.log(`\ndemo ok: repository in ${repo} (passphrase in ${passFile})`);
