// The Debian package, built from the single executable by scripts/package.mjs (dpkg-deb, no network):
//   /usr/bin/kura, the units of systemd/ in /lib/systemd/system, /etc/kura/kura.yaml (a conffile:
//   `kura config example`), kura(1) from every command's --help, the changelog and copyright
//   (kura's and that of everything bundled inside). The maintainer scripts make the kura system
//   user and /var/lib/kura, /var/log/kura (0750 kura:kura); removing keeps repositories and config;
//   purging removes the config file and says what it keeps.
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const MAINTAINER = 'kura project <kura@example.org>';

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  if (r.error) throw new Error(`${cmd}: ${r.error.message} (install it: see scripts/ensure-deps.mjs)`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

function put(root, rel, content, mode = 0o644) {
  const file = path.join(root, rel);
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
  writeFileSync(file, content);
  chmodSync(file, mode);
}

/** roff for text shown as is: backslashes, leading dots and quotes, and minus signs escaped. */
function roff(text) {
  return text
    .split('\n')
    .map((l) => l.replaceAll('\\', '\\e').replaceAll('-', '\\-').replace(/^([.'])/, '\\&$1'))
    .join('\n');
}

/** kura(1): every command's --help, from the same commander program the executable runs. */
async function manPage(root, version, date) {
  const { buildProgram } = await import(pathToFileURL(path.join(root, 'dist', 'src', 'cli', 'main.js')).href);
  const program = buildProgram();
  const sections = [];
  const walk = (cmd, name) => {
    cmd.configureHelp({ helpWidth: 78 });
    sections.push(`.SS "${name}"\n.nf\n${roff(cmd.helpInformation().trimEnd())}\n.fi`);
    for (const sub of cmd.commands) walk(sub, `${name} ${sub.name()}`);
  };
  for (const sub of program.commands) walk(sub, `kura ${sub.name()}`);
  program.configureHelp({ helpWidth: 78 });
  return `.TH KURA 1 "${date}" "kura ${version}" "User Commands"
.SH NAME
kura \\- deduplicating, encrypted backups of database exports, shipped to a vault in a peer data centre
.SH SYNOPSIS
.B kura
.I command
.RI [ options ]
.SH DESCRIPTION
.nf
${roff(program.helpInformation().trimEnd())}
.fi
.PP
Every command also prints its own help with
.BR \\-\\-help .
.B kura \\-\\-version \\-\\-json
prints the commit, the repository, snapshot and protocol format versions kura reads and writes,
and the versions of Node.js and the libraries inside the executable.
.SH COMMANDS
${sections.join('\n')}
.SH FILES
.TP
.I /etc/kura/kura.yaml
the agent's and relay's configuration (KURA_CONFIG in the units); \\fBkura config example\\fR prints every setting
.TP
.I /etc/kura/vault.yaml
the vault's configuration (kura\\-vault.service)
.TP
.I /var/lib/kura
repositories, catalogues and the vault's tenants; the kura user's home, where its native code cache lives (~/.cache/kura)
.TP
.I /var/log/kura
log files the vault may write
.SH ENVIRONMENT
.TP
.B KURA_CONFIG
configuration file
.TP
.B KURA_CACHE_DIR
where the executable writes its native addons (checked by SHA\\-256 before each load)
.SH NOTES
The units kura\\-agent.timer (or kura\\-agent@SOURCE.timer per source), kura\\-relay.service and
kura\\-vault.service are installed but not enabled. For a vault behind OpenSSH with
\\fBkura vault stdio\\fR as the forced command, the kura user needs a login shell.
.SH SEE ALSO
.BR systemctl (1),
.BR sshd (8)
`;
}

/** Debian changelog of a native package. */
function changelog(version, commit, date) {
  return `kura (${version}) unstable; urgency=medium

  * Packaged as one executable (/usr/bin/kura, Node.js ${process.versions.node} and the
    native addons inside) with systemd units, the kura system user and
    /etc/kura/kura.yaml.
  * Built from commit ${commit}.

 -- ${MAINTAINER}  ${date}
`;
}

function copyright(root, packages) {
  const licenceText = (dir) => {
    const f = existsSync(dir) ? readdirSync(dir).find((n) => /^(licen[cs]e|copying)(\.md|\.txt)?$/i.test(n)) : undefined;
    return f ? readFileSync(path.join(dir, f), 'utf8').trim() : '';
  };
  // long licences Debian ships once are referred to, not repeated (lintian asks for that)
  const common = (t) =>
    /Apache License\s+Version 2\.0/.test(t) ? 'Apache License 2.0: see /usr/share/common-licenses/Apache-2.0'
    : /GNU GENERAL PUBLIC LICENSE/.test(t) ? 'GNU General Public License: see /usr/share/common-licenses/GPL'
    : t;
  const nodeLicence = () => {
    const t = licenceText('/usr/share/doc/nodejs');
    const own = t.indexOf('The Node.js license applies to all parts');
    return `${own > 0 ? t.slice(0, own).trim() : 'MIT licence'}\n\nThe libraries Node.js includes (V8, libuv, OpenSSL, zlib, ICU, nghttp2 and others) are under their own licences, listed in the file LICENSE of its source: https://github.com/nodejs/node/blob/v${process.versions.node}/LICENSE`;
  };
  const indent = (t) => t.split('\n').map((l) => (l.trim() === '' ? ' .' : ` ${l}`)).join('\n');
  const parts = [
    `kura: deduplicating, encrypted backups of database exports.

Copyright: the kura contributors.
License: none is stated yet (package.json marks the project private); ask its
maintainers before redistributing this package.

/usr/bin/kura is a Node.js ${process.versions.node} executable (Node.js single executable
application) holding kura's code and the following components, each under its own licence.`,
    `Node.js ${process.versions.node}:\n${indent(nodeLicence())}`,
  ];
  for (const [name, p] of packages) {
    parts.push(`${name} ${p.version}${p.author ? ` (${p.author})` : ''}: ${p.license}\n${indent(common(licenceText(path.join(root, 'node_modules', name))) || `licence: ${p.license}`)}`);
  }
  return parts.join('\n\n') + '\n';
}

const POSTINST = `#!/bin/sh
# kura: the system user, its directories (0750, so other users cannot read repositories)
set -e
case "$1" in
  configure)
    mkdir -p /var/lib/kura
    if ! getent passwd kura >/dev/null; then
      adduser --system --group --home /var/lib/kura --no-create-home --gecos "kura backups" kura >/dev/null
    fi
    for dir in /var/lib/kura /var/log/kura; do
      if ! dpkg-statoverride --list "$dir" >/dev/null 2>&1; then
        install -d -o kura -g kura -m 0750 "$dir"
      fi
    done
    if [ -d /run/systemd/system ]; then
      systemctl --system daemon-reload >/dev/null || true
    fi
    ;;
esac
exit 0
`;

const PRERM = `#!/bin/sh
# a removed executable cannot be restarted: stop what runs it (units stay disabled or enabled as they were)
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  deb-systemd-invoke stop kura-relay.service kura-vault.service kura-agent.timer >/dev/null 2>&1 || true
fi
exit 0
`;

const POSTRM = `#!/bin/sh
# removing keeps the configuration and every repository; purging removes the configuration
# file (dpkg does, as for any conffile) and keeps the backups: say what is left
set -e
case "$1" in
  remove)
    if [ -d /run/systemd/system ]; then
      systemctl --system daemon-reload >/dev/null || true
    fi
    ;;
  purge)
    echo "kura purged; kept, for you to delete when the backups are no longer needed:"
    for dir in /var/lib/kura /var/log/kura; do
      if [ -d "$dir" ]; then
        echo "  $dir ($(du -sh "$dir" 2>/dev/null | cut -f1): repositories, catalogues, vault tenants, logs)"
      fi
    done
    if [ -d /etc/kura ] && [ -n "$(ls -A /etc/kura 2>/dev/null)" ]; then
      echo "  /etc/kura (files you added: $(ls -A /etc/kura | tr '\\n' ' '))"
    fi
    if getent passwd kura >/dev/null; then
      echo "  the system user and group kura (files above are owned by it)"
    fi
    ;;
esac
exit 0
`;

export async function buildDeb({ root, exe, work, out, manifest, packages, addonFiles }) {
  rmSync(work, { recursive: true, force: true });
  const tree = path.join(work, 'root');
  mkdirSync(tree, { recursive: true });
  const version = manifest.kura;
  const commitDate = spawnSync('git', ['-C', root, 'log', '-1', '--format=%cD'], { encoding: 'utf8' }).stdout.trim() || new Date().toUTCString();
  const manDate = new Date(commitDate).toISOString().slice(0, 10);

  mkdirSync(path.join(tree, 'usr', 'bin'), { recursive: true });
  copyFileSync(exe, path.join(tree, 'usr', 'bin', 'kura'));
  chmodSync(path.join(tree, 'usr', 'bin', 'kura'), 0o755);
  for (const unit of readdirSync(path.join(root, 'systemd')).filter((u) => /\.(service|timer)$/.test(u)).sort()) {
    put(tree, `lib/systemd/system/${unit}`, readFileSync(path.join(root, 'systemd', unit)));
  }
  // the example is what the executable itself prints: generated from the schema it validates with
  const cache = path.join(work, 'cache');
  mkdirSync(cache, { recursive: true, mode: 0o700 });
  const example = run(exe, ['config', 'example'], { env: { PATH: '/usr/bin:/bin', HOME: work, KURA_CACHE_DIR: cache } });
  put(tree, 'etc/kura/kura.yaml', `# /etc/kura/kura.yaml: installed by the kura package as an example; edit it (an upgrade keeps your\n# version). The vault reads /etc/kura/vault.yaml (kura-vault.service).\n${example}`);
  put(tree, 'usr/share/man/man1/kura.1.gz', gzipSync(await manPage(root, version, manDate), { level: 9 }));
  put(tree, 'usr/share/doc/kura/changelog.gz', gzipSync(changelog(version, manifest.commit, commitDate), { level: 9 }));
  put(tree, 'usr/share/doc/kura/copyright', copyright(root, packages));
  // why lintian's checks for ordinary ELF packages do not fit a Node.js single executable
  put(
    tree,
    'usr/share/lintian/overrides/kura',
    [
      '# Node.js links zlib, OpenSSL, libuv, nghttp2 and others statically: one executable is the point of this package',
      'kura: embedded-library *[usr/bin/kura]',
      '# the executable is the official Node.js build, which is linked without PIE',
      'kura: hardening-no-pie [usr/bin/kura]',
      '',
    ].join('\n'),
  );

  // dependencies of the executable and of the addons it writes out and loads
  const shl = path.join(work, 'shlibs');
  mkdirSync(path.join(shl, 'debian'), { recursive: true });
  writeFileSync(path.join(shl, 'debian', 'control'), 'Source: kura\n\nPackage: kura\nArchitecture: amd64\n');
  const files = [path.join(tree, 'usr', 'bin', 'kura'), ...addonFiles];
  const shlibs = run('dpkg-shlibdeps', ['-O', ...files.map((f) => `-e${f}`)], { cwd: shl });
  const depends = /shlibs:Depends=(.*)/.exec(shlibs)?.[1];
  if (!depends) throw new Error(`dpkg-shlibdeps gave no dependencies: ${shlibs}`);

  const installedKiB = Math.ceil(sizeOf(tree) / 1024);
  const control = `Package: kura
Version: ${version}
Architecture: amd64
Maintainer: ${MAINTAINER}
Installed-Size: ${installedKiB}
Depends: adduser, ${depends}
Section: admin
Priority: optional
Description: deduplicating, encrypted backups of database exports
 kura backs up PostgreSQL, MariaDB and SQLite exports into a local,
 deduplicating, encrypted repository and ships each snapshot over SSH to a
 vault in a peer data centre, with retention, RPO monitoring and restores
 straight into a database.
 .
 This package holds one executable (Node.js and every native addon inside;
 no Node.js installation is needed), systemd units for the nightly agent
 run (per host or per source), the relay and the vault, and the kura system
 user.
`;
  const deb = path.join(tree, 'DEBIAN');
  mkdirSync(deb, { recursive: true, mode: 0o755 });
  put(tree, 'DEBIAN/control', control);
  put(tree, 'DEBIAN/conffiles', '/etc/kura/kura.yaml\n');
  put(tree, 'DEBIAN/postinst', POSTINST, 0o755);
  put(tree, 'DEBIAN/prerm', PRERM, 0o755);
  put(tree, 'DEBIAN/postrm', POSTRM, 0o755);
  const sums = [];
  for (const f of walkFiles(tree)) {
    const rel = path.relative(tree, f);
    if (rel.startsWith('DEBIAN') || rel.startsWith('etc/')) continue;
    sums.push(`${createHash('md5').update(readFileSync(f)).digest('hex')}  ${rel}`);
  }
  put(tree, 'DEBIAN/md5sums', sums.sort((a, b) => a.slice(34).localeCompare(b.slice(34))).join('\n') + '\n');

  const file = path.join(out, `kura_${version}_amd64.deb`);
  // xz at level 6 takes ~1 min on 2 cores for ~90 MiB; gzip is ~4x faster and dpkg reads both
  run('dpkg-deb', ['--root-owner-group', `-Z${process.env.KURA_DEB_COMPRESSION ?? 'gzip'}`, '--build', tree, file]);
  return file;
}

function* walkFiles(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* walkFiles(p);
    else yield p;
  }
}

function sizeOf(dir) {
  let n = 0;
  for (const f of walkFiles(dir)) n += statSync(f).size;
  return n;
}
