// `npm test` must install what it needs:
// - node packages: `npm install` (locked versions) when node_modules is missing or older than
//   the lockfile. Not `npm ci`: @napi-rs/blake-hash lists optional platform packages that were
//   never published at its version, so npm leaves them out of the lockfile and `npm ci` refuses it;
// - the Debian packages the integration tests run for real (OpenSSH's sshd for the vault's
//   command= mode, systemd-analyze, tmux, faketime, PostgreSQL 15 and MariaDB servers and clients, the
//   packaging tools). Under CI=true a dependency that cannot be installed
//   is a failure, never a skip.
import { existsSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

const marker = 'node_modules/.package-lock.json';
if (!existsSync(marker) || statSync(marker).mtimeMs < statSync('package-lock.json').mtimeMs) {
  console.error('installing dependencies (npm install, locked versions)…');
  const r = spawnSync('npm', ['install', '--no-audit', '--no-fund'], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd} || test -x ${cmd}`], { stdio: 'ignore' }).status === 0;
const needs = [
  { tool: 'ssh-keygen', pkg: 'openssh-client' },
  { tool: '/usr/sbin/sshd', pkg: 'openssh-server' },
  { tool: 'systemd-analyze', pkg: 'systemd' },
  { tool: 'tmux', pkg: 'tmux' },
  // the agent's integration tests run real database servers and their dump/restore clients
  { tool: '/usr/lib/postgresql/15/bin/initdb', pkg: 'postgresql-15' },
  { tool: 'pg_dump', pkg: 'postgresql-client-15' },
  { tool: 'mariadbd', pkg: 'mariadb-server' },
  { tool: 'mariadb-dump', pkg: 'mariadb-client' },
  { tool: 'tar', pkg: 'tar' },
  // npm run package and its test: strip the executable, the .deb's dependencies, lintian, and
  // runuser/unshare to run the installed units as the kura user under their sandbox
  { tool: 'strip', pkg: 'binutils' },
  { tool: 'dpkg-shlibdeps', pkg: 'dpkg-dev' },
  { tool: 'lintian', pkg: 'lintian' },
  { tool: 'adduser', pkg: 'adduser' },
  { tool: 'runuser', pkg: 'util-linux' },
  { tool: 'unshare', pkg: 'util-linux' },
  { tool: 'man', pkg: 'man-db' },
  { tool: 'bash', pkg: 'bash' },
  // the routing tests run a vault under libfaketime to see a clock skew in status
  { tool: 'faketime', pkg: 'faketime' },
  // the SSO tests sign operators in through the identity providers' own login pages in a real
  // (headless) browser
  { tool: 'chromium', pkg: 'chromium' },
  // the S3 tests run a one-node Ceph cluster with its RADOS Gateway (docs: ceph-rgw); installed
  // without recommends (those would pull in the whole Ceph dashboard stack)
  { tool: 'radosgw', pkg: 'radosgw', lean: true },
  { tool: 'radosgw-admin', pkg: 'ceph-common', lean: true },
  { tool: 'ceph-mon', pkg: 'ceph-mon', lean: true },
  { tool: 'ceph-osd', pkg: 'ceph-osd', lean: true },
  { tool: 'ceph-mgr', pkg: 'ceph-mgr', lean: true },
  { tool: 'ceph-authtool', pkg: 'ceph-common', lean: true },
  { tool: 'monmaptool', pkg: 'ceph-base', lean: true },
];
const missing = needs.filter((n) => !has(n.tool));
if (missing.length > 0) {
  const pkgs = [...new Set(missing.filter((m) => !m.lean).map((m) => m.pkg))];
  const lean = [...new Set(missing.filter((m) => m.lean).map((m) => m.pkg))];
  console.error(`installing ${[...pkgs, ...lean].join(' ')} (apt-get)…`);
  const asRoot = process.getuid?.() === 0 ? [] : ['sudo', '-n'];
  const run = (args) => spawnSync(asRoot[0] ?? args[0], asRoot.length ? [...asRoot.slice(1), ...args] : args.slice(1), { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  run(['apt-get', 'update', '-q']);
  if (pkgs.length > 0) run(['apt-get', 'install', '-y', '-q', ...pkgs]);
  if (lean.length > 0) run(['apt-get', 'install', '-y', '-q', '--no-install-recommends', ...lean]);
  const still = needs.filter((n) => !has(n.tool));
  if (still.length > 0) {
    console.error(`missing required tools: ${still.map((s) => `${s.tool} (Debian package ${s.pkg})`).join(', ')}`);
    process.exit(1);
  }
}
