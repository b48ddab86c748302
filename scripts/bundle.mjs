// The last step of `npm run build`: the compiled code (dist/src) bundled by esbuild into one
// CommonJS file, dist/kura.cjs, that bin/kura loads with V8's code cache (dist/kura.cjs.*.cache)
// instead of some 200 ES modules one by one. Measured here, `kura --version` went from 0.33 to
// 0.23 s and a restore starts 0.1 s sooner: Node 20 resolves, reads and compiles each ES module
// on its own and keeps no code cache for them.
//
// What stays outside the bundle is what must be found on disk at run time: the native addons and
// the libraries that load them by path (better-sqlite3, zstd-napi, BLAKE3, ssh2), ink and React (ink
// awaits at its top level, which CommonJS cannot), node-cron (it finds a script of its own by its
// module's URL), and the SAML and mail libraries (a third of the code, loaded only for a SAML login
// or a mail). The workers kura starts (seal, chunking) are still ES modules.
//
// dist/kura.json lists every file the bundle was made from with its size and time; bin/kura uses
// the bundle only while all of them are unchanged (a `tsc` run after this one, a library
// installed again), else it loads the modules as before. Without esbuild (installed with
// --omit=dev) this step is skipped and bin/kura always loads the modules.
import { readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const out = path.join(dist, 'kura.cjs');
const manifest = path.join(dist, 'kura.json');
/** kura.json first: without it bin/kura never opens the rest (a kura starting meanwhile loads the modules) */
function removeBundle() {
  rmSync(manifest, { force: true });
  rmSync(out, { force: true });
  for (const f of readdirSync(dist)) if (/^kura\.cjs\..*cache/.test(f)) rmSync(path.join(dist, f), { force: true });
}
const caches = () => readdirSync(dist).filter((f) => /^kura\.cjs\..*\.cache$/.test(f));
// a failed or skipped build leaves no bundle behind that could outlive the code it was made from
removeBundle();

let esbuild;
try {
  esbuild = await import('esbuild');
} catch {
  console.error('bundle: esbuild is not installed (npm install without --omit=dev); kura loads its modules one by one, 0.1 s slower to start');
  process.exit(0);
}

const EXTERNAL = ['better-sqlite3', 'zstd-napi', '@napi-rs/blake-hash', 'ssh2', 'cpu-features', 'ink', 'react', 'node-cron', '@node-saml/node-saml', 'nodemailer'];
const srcDir = path.join(dist, 'src') + path.sep;
// kura's modules that stay ES modules beside the bundle: they import ink statically (the
// terminal UI), so the bundle imports them by URL when `kura top` runs on a terminal
const ESM_OUTSIDE = ['src/top/app.js'];
/** import.meta.url of a module under dist/: its own file again, found from the bundle's place at run time (a moved checkout still works). */
const checkoutPlugin = {
  name: 'kura-checkout',
  setup(b) {
    b.onResolve({ filter: /^\.\.?\// }, (args) => {
      const rel = path.relative(dist, path.resolve(args.resolveDir, args.path)).split(path.sep).join('/');
      return ESM_OUTSIDE.includes(rel) ? { path: `kura-esm:${rel}`, external: true } : undefined;
    });
    b.onLoad({ filter: /\.js$/, namespace: 'file' }, (args) => {
      if (!args.path.startsWith(srcDir)) return undefined;
      let src = readFileSync(args.path, 'utf8');
      if (!src.includes('import.meta.url') && !src.includes('createRequire')) return undefined;
      // a module's lazy require() (createRequire) becomes the bundle's own, which esbuild
      // follows: left to Node, require('../config/load.js') would load a second copy of kura's
      // modules beside the bundle's, with registries of their own
      src = src.replace(/^\s*const require = createRequire\(import\.meta\.url\);$/gm, '');
      // what is left may only load a native addon by path (native.js: createRequire(import.meta.url)('…node'))
      if (/createRequire\((?!import\.meta\.url\)\('[^']*\.node'\))/.test(src.replace(/^import .*$/gm, ''))) throw new Error(`${args.path}: a createRequire() the bundler cannot follow; use "const require = createRequire(import.meta.url)"`);
      const rel = JSON.stringify(path.relative(dist, args.path).split(path.sep).join('/'));
      return { contents: src.replaceAll('import.meta.url', `__kuraFileUrl(${rel})`), loader: 'js' };
    });
  },
};

const started = Date.now();
const r = await esbuild.build({
  absWorkingDir: root,
  entryPoints: [path.join(srcDir, 'sea', 'main.js')],
  outfile: out,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: EXTERNAL,
  // names kept, so a --debug stack trace still names functions (KURA_BUNDLE=0 runs the modules
  // themselves, with their own lines); without whitespace and comments there is less to read and hash
  minifySyntax: true,
  minifyWhitespace: true,
  legalComments: 'none',
  plugins: [checkoutPlugin],
  // defined before any module: a module's own `const require = createRequire(import.meta.url)` shadows require
  banner: {
    js: [
      "const __kuraFileUrl = (rel) => require('node:url').pathToFileURL(require('node:path').join(__dirname, rel)).href;",
      // V8 loses a script's dynamic import() callback when it is compiled from a code cache, so
      // import() of a library outside the bundle is bin/kura's own (same resolution, same result)
      "const __kuraImport = (specifier) => globalThis[Symbol.for('kura.import')](specifier);",
    ].join('\n'),
  },
  metafile: true,
  logLevel: 'error',
});

const code = readFileSync(out, 'utf8');
const dynamic = new RegExp(`\\bimport\\((${EXTERNAL.map((e) => JSON.stringify(e).replace(/[/.]/g, '\\$&')).join('|')})\\)`, 'g');
const rewritten = code.replace(dynamic, '__kuraImport($1)').replace(/\bimport\("kura-esm:([^"]+)"\)/g, '__kuraImport(__kuraFileUrl("$1"))');
const left = /\bimport\((?!\))|\brequire\("(?:\.\.?\/|kura-esm:)/.exec(rewritten.replace(/__kuraImport\(/g, ''));
if (left) {
  removeBundle();
  console.error(`bundle: an import() bin/kura cannot serve, or a require() of a module left outside: ${rewritten.slice(left.index, left.index + 60)}; revisit scripts/bundle.mjs`);
  process.exit(1);
}
writeFileSync(out, rewritten);

// the files it was made from: kura's modules, and each bundled library's package.json
const inputs = new Set();
for (const i of Object.keys(r.metafile.inputs)) {
  const abs = path.resolve(root, i);
  // a library by its place under this checkout's node_modules (esbuild names the real path, which
  // may lie elsewhere when node_modules is a link)
  const lib = /[\\/]node_modules[\\/]((?:(?:@[^\\/]+[\\/])?[^\\/]+[\\/]node_modules[\\/])*(?:@[^\\/]+[\\/])?[^\\/]+)[\\/]/.exec(abs);
  inputs.add(lib ? path.join(root, 'node_modules', lib[1], 'package.json') : abs);
}
const files = [...inputs].sort().map((f) => {
  const s = statSync(f);
  if (s.mtimeMs >= started) {
    // written while esbuild read the files (tsc --watch): the bundle may hold either version
    removeBundle();
    console.error(`bundle: ${path.relative(root, f)} changed while the bundle was made; run "npm run build" again (kura loads its modules one by one meanwhile)`);
    process.exit(process.env.CI === 'true' ? 1 : 0);
  }
  return [path.relative(dist, f), s.size, s.mtimeMs];
});
writeFileSync(manifest, JSON.stringify({ node: process.versions.node, files }));

// the code cache: bin/kura writes it when it finds none (or V8 refuses it); one run here makes it
// (with node's own flags: a cache made under other flags is refused)
const { KURA_BUNDLE: _forced, NODE_OPTIONS: _flags, ...env } = process.env;
const warm = spawnSync(process.execPath, [path.join(root, 'bin', 'kura'), '--version', '--json'], { encoding: 'utf8', env: { ...env, KURA_LOG_LEVEL: 'error' } });
let ran = '';
try {
  ran = JSON.parse(warm.stdout).code;
} catch {}
if (warm.status !== 0 || ran !== 'bundle' || caches().length !== 1) {
  removeBundle();
  const why = warm.status !== 0 ? warm.stderr.trim() || `exit ${warm.status}` : ran !== 'bundle' ? `it ran the ${ran || 'unknown'} code` : `it wrote ${caches().length} code caches`;
  console.error(`bundle: kura did not run from the new bundle (${why}); removed it, kura loads its modules one by one (KURA_BUNDLE=0 still works; "npm run build" tries again)`);
  process.exit(process.env.CI === 'true' ? 1 : 0);
}
console.error(`bundle: dist/kura.cjs from ${files.length} files, ${(statSync(out).size / 1048576).toFixed(1)} MiB, code cache ${(statSync(path.join(dist, caches()[0])).size / 1048576).toFixed(1)} MiB`);
