// `npm start`: the main job on the embedded default, everything under ./kura-demo/:
//   1. the bundled sample database (fixtures/sample.sql, a municipal resident register) loaded
//      into SQLite (juki.sqlite) on first run;
//   2. `kura agent run`: the nightly export into the local repository, queued for the route
//      to a local vault; a day of changes; the next night's run (it stores only the changes);
//   3. `kura vault serve` on loopback and `kura relay once`: both nights shipped over SSH;
//   4. the first night restored into a new SQLite database from the local repository, and the
//      second from the vault, each compared table by table with what was backed up;
//   5. `kura check --read-data`, `kura snapshots`, `kura status`, `kura vault usage`.
// Rerunning adds generations (retention keeps 7 on site).
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const kura = path.join(root, 'bin/kura');
const demo = path.join(root, 'kura-demo');
const dbFile = path.join(demo, 'juki.sqlite');
const passFile = path.join(demo, 'passphrase');
const keyFile = path.join(demo, 'relay_key');
const cfgFile = path.join(demo, 'kura.yaml');
const env = { ...process.env, KURA_CONFIG: cfgFile, KURA_LOG_LEVEL: process.env.KURA_LOG_LEVEL ?? 'warn' };

function run(args, opts = {}) {
  console.log(`$ kura ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [kura, ...args], { env, stdio: ['ignore', opts.capture ? 'pipe' : 'inherit', 'inherit'], maxBuffer: 1 << 30 });
  if (r.status !== 0 && !opts.allow?.includes(r.status)) {
    console.error(`demo failed: kura ${args.join(' ')} exited ${r.status}`);
    process.exit(r.status ?? 1);
  }
  return r.stdout?.toString() ?? '';
}

/** fixtures/sample.sql (PostgreSQL COPY format) → a SQLite database with the same tables. */
function loadSample() {
  const sql = readFileSync(path.join(root, 'fixtures/sample.sql'), 'utf8').split('\n');
  const db = new Database(dbFile);
  db.pragma('journal_mode = WAL');
  db.transaction(() => {
    for (let i = 0; i < sql.length; i++) {
      const line = sql[i];
      if (line.startsWith('CREATE TABLE')) db.exec(line.replaceAll('public.', ''));
      const m = /^COPY public\.(\w+) \(([^)]*)\) FROM stdin;$/.exec(line);
      if (!m) continue;
      const cols = m[2].split(', ');
      const ins = db.prepare(`INSERT INTO ${m[1]} (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`);
      for (i++; sql[i] !== '\\.'; i++) ins.run(...sql[i].split('\t').map((v) => (v === '\\N' ? null : v)));
    }
  })();
  db.close();
}

/** Row count and content hash per table. */
function tables(file) {
  const db = new Database(file, { readonly: true });
  const out = {};
  for (const { name } of db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`).all()) {
    const h = createHash('sha256');
    let n = 0;
    for (const row of db.prepare(`SELECT * FROM ${name} ORDER BY 1, 2`).iterate()) {
      h.update(JSON.stringify(row));
      n++;
    }
    out[name] = `${n} rows, ${h.digest('hex').slice(0, 16)}`;
  }
  db.close();
  return out;
}

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

function writeConfig(port, hostKeySha256) {
  const pub = readFileSync(`${keyFile}.pub`, 'utf8').trim();
  writeFileSync(
    cfgFile,
    `# written by npm start (scripts/demo.mjs); "kura config example" shows every setting
tenant: demo-city
timezone: Asia/Tokyo
repository:
  path: ${path.join(demo, 'repo')}
  passphraseFile: ${passFile}
sources:
  juki:
    type: sqlite
    path: ${dbFile}
    schedule: "30 1 * * *"
    routes: [local-vault]
    retention: { keepLast: 7 }
vault:
  listen: { host: 127.0.0.1, port: ${port} }
  root: ${path.join(demo, 'vault')}
  tenants:
    demo-city:
      quota: 10GiB
      retention: { keepDaily: 30, keepMonthly: 12 }
      clients:
        - key: ${pub}
          role: tenant-admin
relay:
  backoff: { initial: 1s, max: 5s }
modules:
  routing:
    type: static
    routes:
      local-vault:
        endpoints:
          - host: 127.0.0.1
            port: ${port}
${hostKeySha256 ? `            hostKeySha256: "${hostKeySha256}"\n` : ''}        clientKey: ${keyFile}
`,
  );
}

mkdirSync(demo, { recursive: true });
if (!existsSync(passFile)) writeFileSync(passFile, `demo-${createHash('sha256').update(String(Date.now())).digest('hex').slice(0, 16)}\n`, { mode: 0o600 });
if (!existsSync(keyFile)) spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'kura-demo-relay', '-f', keyFile], { stdio: 'inherit' });
if (!existsSync(dbFile)) {
  console.log(`loading the bundled sample database into ${dbFile}`);
  loadSample();
}
const port = await freePort();
writeConfig(port);
if (!existsSync(path.join(demo, 'repo', 'config'))) run(['repo', 'init']);

// night 1
run(['agent', 'run']);
const night1 = tables(dbFile);
const first = JSON.parse(run(['snapshots', '--json'], { capture: true })).filter((s) => s.source === 'juki').at(-1);

// a day at the town hall: a few residents move, this year's tax is assessed for some
const db = new Database(dbFile);
const moved = db.prepare(`UPDATE residents SET status = 'moved' WHERE id % 331 = 0 AND status != 'moved'`).run().changes;
db.prepare(`INSERT OR IGNORE INTO tax_assessments SELECT resident_id, 2027, income, tax FROM tax_assessments WHERE fiscal_year = 2026 AND resident_id % 97 = 0`).run();
db.close();
console.log(`  (a day of changes: ${moved} residents moved, some 2027 assessments added)`);

// night 2
run(['agent', 'run']);
const night2 = tables(dbFile);

// ship both nights to the local vault over SSH
const vault = spawn(process.execPath, [kura, 'vault', 'serve'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
const hello = await new Promise((resolve, reject) => {
  let out = '';
  vault.stdout.on('data', (d) => {
    out += d;
    if (out.includes('\n')) resolve(JSON.parse(out.split('\n')[0]));
  });
  vault.once('exit', (c) => reject(new Error(`vault exited ${c}`)));
});
console.log(`$ kura vault serve   (listening on ${hello.listening}, host key ${hello.hostKeySha256})`);
writeConfig(port, hello.hostKeySha256);
let ok = true;
try {
  run(['relay', 'once']);
  run(['snapshots', '--from', 'local-vault']);

  const restored1 = path.join(demo, 'restored-night1.sqlite');
  const restored2 = path.join(demo, 'restored-night2-from-vault.sqlite');
  rmSync(restored1, { force: true });
  rmSync(restored2, { force: true });
  run(['restore', first.id, '--into', `sqlite:${restored1}`]);
  run(['restore', '--from', 'local-vault', 'latest:juki', '--into', `sqlite:${restored2}`]);
  const same1 = JSON.stringify(tables(restored1)) === JSON.stringify(night1);
  const same2 = JSON.stringify(tables(restored2)) === JSON.stringify(night2);
  console.log(`  night 1 from the local repository: ${same1 ? 'every table as it was' : 'DIFFERENT'} (${Object.entries(night1).map(([t, v]) => `${t}: ${v.split(',')[0]}`).join(', ')})`);
  console.log(`  night 2 from the vault:            ${same2 ? 'every table as it was' : 'DIFFERENT'}`);
  ok = same1 && same2;

  run(['check', '--read-data']);
  run(['snapshots']);
  run(['status'], { allow: [1] });
  run(['vault', 'usage']);
} finally {
  vault.kill('SIGTERM');
}
if (!ok) process.exit(1);
console.log(`\ndemo ok: everything is in ${demo} (config ${cfgFile}); try "KURA_CONFIG=${cfgFile} node bin/kura top"`);
