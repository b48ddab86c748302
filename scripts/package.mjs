// `npm run package`: one self-contained executable for linux-x64 and a Debian package made from it.
//   1. the compiled code (dist/, from `npm run build`) bundled by esbuild into one CommonJS file,
//      the entry Node's single executable applications (SEA) run, plus one bundle per worker thread;
//   2. the native addons (kura's own, better-sqlite3, zstd, BLAKE3, ssh2's crypto and cpu-features)
//      embedded as assets with their SHA-256 in a manifest; at run time src/sea/embedded.ts writes
//      each once to a private cache directory and checks it before every load;
//   3. a copy of this node, stripped of its symbols, with the blob injected by postject;
//   4. the .deb (scripts/deb.mjs).
// Without an addon's prebuilt binary this stops and says how to get it: it never leaves one out.
// Output: build/package/kura and build/package/kura_<version>_amd64.deb.
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'build', 'package');
const work = path.join(out, 'work');
const t0 = Date.now();
const say = (m) => console.error(`package: ${m} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
const fail = (m) => {
  console.error(`package: ${m}`);
  process.exit(1);
};

/** Every native addon the code loads, where a checkout has its prebuilt binary, and how to get it. */
const ADDONS = [
  { name: 'kura_native', file: 'build/Release/kura_native.node', how: 'run "npm run build" (node-gyp; needs a C compiler, make and python3)' },
  { name: 'better_sqlite3', file: 'node_modules/better-sqlite3/build/Release/better_sqlite3.node', how: 'run "npm install" (better-sqlite3 fetches or builds it)' },
  { name: 'zstd', file: 'node_modules/zstd-napi/build/Release/binding.node', how: 'run "npm install" (zstd-napi builds it)' },
  { name: 'blake', file: 'node_modules/@napi-rs/blake-hash-linux-x64-gnu/blake.linux-x64-gnu.node', how: 'run "npm install" (the optional package @napi-rs/blake-hash-linux-x64-gnu)' },
  { name: 'sshcrypto', file: 'node_modules/ssh2/lib/protocol/crypto/build/Release/sshcrypto.node', how: 'run "npm install" (ssh2 builds it; needs a C++ compiler)' },
  { name: 'cpufeatures', file: 'node_modules/cpu-features/build/Release/cpufeatures.node', how: 'run "npm install" (cpu-features builds it; needs a C++ compiler)' },
];
const WORKERS = ['src/archiver/seal-worker.js', 'src/chunker/pipeline-worker.js'];
const EMBEDDED_URL_BASE = 'file:///kura-executable/';

if (process.platform !== 'linux' || process.arch !== 'x64') fail(`the executable is built for linux-x64; this is ${process.platform}-${process.arch}`);

// 0. what must be there before anything is built
const missing = ADDONS.filter((a) => !existsSync(path.join(root, a.file)));
if (missing.length > 0) {
  fail(`missing prebuilt native addon${missing.length > 1 ? 's' : ''}; the executable is not built without ${missing.length > 1 ? 'them' : 'it'}:\n${missing.map((a) => `  ${a.name}: ${a.file} not found: ${a.how}`).join('\n')}`);
}
const entry = path.join(root, 'dist', 'src', 'sea', 'main.js');
if (!existsSync(entry)) fail(`${path.relative(root, entry)} not found: run "npm run build" first`);
const nodeBinary = process.execPath;
if (!readFileSync(nodeBinary).includes('NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2')) fail(`${nodeBinary} has no single-executable fuse: use an official Node.js 20.12 or later build`);
const tool = (name, pkg) => {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  if (r.status !== 0) fail(`${name} not found: install the Debian package ${pkg}`);
  return r.stdout.trim();
};
const strip = tool('strip', 'binutils');

rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });

// 1. bundles
const { build } = await import('esbuild');
const { checkoutCommit, checkoutLibraries, kuraVersion } = await import(pathToFileURL(path.join(root, 'dist', 'src', 'version.js')).href);
const embeddedModule = path.join(root, 'dist', 'src', 'sea', 'embedded.js');
const addonByFile = new Map(ADDONS.map((a) => [realpathSync(path.join(root, a.file)), a.name]));
const distDir = path.join(root, 'dist') + path.sep;
const stub = (name) => ({ contents: `module.exports = require(${JSON.stringify(embeddedModule)}).loadEmbeddedAddon(${JSON.stringify(name)});`, loader: 'js', resolveDir: root });

/** Teaches esbuild what Node resolves at run time: createRequire, import.meta.url, .node files, yoga's top-level await. */
const executablePlugin = {
  name: 'kura-executable',
  setup(b) {
    // ink loads React's devtools (with top-level await) only when DEV=true: not in the executable
    b.onLoad({ filter: /[\\/]ink[\\/]build[\\/]reconciler\.js$/ }, (args) => {
      const src = readFileSync(args.path, 'utf8');
      const devtools = /^if \(isDev\(\)\) \{\n\s+try \{\n\s+await import\('\.\/devtools\.js'\);[\s\S]*?\n\}\n/m;
      const pkg = /^const packageJson = isDev\(\)\n\s+\? await loadPackageJson\(\)\n\s+: (\{ name: undefined, version: undefined \});$/m;
      if (!devtools.test(src) || !pkg.test(src)) throw new Error(`${args.path}: ink's devtools loading changed; revisit scripts/package.mjs`);
      return { contents: src.replace(devtools, '').replace(pkg, 'const packageJson = $1;'), loader: 'js', resolveDir: path.dirname(args.path) };
    });
    b.onLoad({ filter: /\.node$/, namespace: 'file' }, (args) => {
      const name = addonByFile.get(realpathSync(args.path));
      if (!name) throw new Error(`${args.path}: a native addon the code loads is not in scripts/package.mjs ADDONS`);
      return stub(name);
    });
    // a .node file that is not there (another platform's build, tried inside try/catch) fails
    // in the bundle as it would in Node, instead of becoming a run-time require of a missing file
    b.onResolve({ filter: /\.node$/ }, (args) => (existsSync(path.resolve(args.resolveDir, args.path)) ? undefined : { path: args.path, namespace: 'kura-absent' }));
    b.onLoad({ filter: /.*/, namespace: 'kura-absent' }, (args) => ({ contents: `const e = new Error(${JSON.stringify(`Cannot find module '${args.path}'`)}); e.code = 'MODULE_NOT_FOUND'; throw e;`, loader: 'js' }));
    // likewise a library's require of something not installed (another platform's package,
    // blake-hash's WebAssembly fallback): it throws as in Node, without the executable's warning
    // that its require() only loads built-in modules
    b.onResolve({ filter: /^[^.\/]|^\.\.?\// }, async (args) => {
      if (args.pluginData?.probing || !args.importer.includes(`${path.sep}node_modules${path.sep}`) || args.kind !== 'require-call') return undefined;
      const r = await b.resolve(args.path, { kind: args.kind, importer: args.importer, resolveDir: args.resolveDir, pluginData: { probing: true } });
      return r.errors.length > 0 ? { path: args.path, namespace: 'kura-absent' } : undefined;
    });
    // better-sqlite3 finds its addon through `bindings`, zstd-napi through a computed path
    b.onResolve({ filter: /^bindings$/ }, () => ({ path: 'bindings', namespace: 'kura-bindings' }));
    b.onLoad({ filter: /.*/, namespace: 'kura-bindings' }, () => ({
      contents: `module.exports = (file) => { if (file !== 'better_sqlite3.node') throw new Error('no embedded addon ' + file); return require(${JSON.stringify(embeddedModule)}).loadEmbeddedAddon('better_sqlite3'); };`,
      loader: 'js',
      resolveDir: root,
    }));
    b.onLoad({ filter: /[\\/]zstd-napi[\\/]binding\.js$/ }, () => stub('zstd'));
    // yoga-layout (ink's layout engine) awaits its WebAssembly at the top level, which CommonJS
    // cannot: compile and instantiate the same bytes synchronously instead
    b.onLoad({ filter: /[\\/]yoga-layout[\\/]dist[\\/]src[\\/]index\.js$/ }, (args) => {
      const glue = readFileSync(path.join(path.dirname(args.path), '..', 'binaries', 'yoga-wasm-base64-esm.js'), 'utf8');
      const wasm = /data:application\/octet-stream;base64,([A-Za-z0-9+/=]+)/.exec(glue)?.[1];
      if (!wasm) throw new Error('yoga-layout: its WebAssembly is no longer inlined as base64; revisit the packaging of ink');
      return {
        contents: `import loadYoga from '../binaries/yoga-wasm-base64-esm.js';
import wrapAssembly from './wrapAssembly.js';
const wasm = new WebAssembly.Module(Buffer.from(${JSON.stringify(wasm)}, 'base64'));
const lib = { instantiateWasm(imports, receive) { const instance = new WebAssembly.Instance(wasm, imports); receive(instance); return instance.exports; } };
loadYoga(lib);
if (!lib.Node) throw new Error('yoga-layout did not initialise synchronously');
const Yoga = wrapAssembly(lib);
export default Yoga;
export * from './generated/YGEnums.js';
`,
        loader: 'js',
        resolveDir: path.dirname(args.path),
      };
    });
    // last, so the package-specific rewrites above win
    b.onLoad({ filter: /\.[cm]?js$/, namespace: 'file' }, (args) => {
      let src = readFileSync(args.path, 'utf8');
      if (!args.path.startsWith(distDir)) {
        // a library's own import.meta.url (node-cron's path to its daemon script) gets a stand-in URL
        if (!src.includes('import.meta.url')) return undefined;
        return { contents: src.replaceAll('import.meta.url', JSON.stringify(EMBEDDED_URL_BASE + path.relative(root, args.path))), loader: 'js' };
      }
      // createRequire(import.meta.url) becomes the bundle's own require, which esbuild resolves
      src = src.replace(/^\s*const require = createRequire\(import\.meta\.url\);$/gm, '').replaceAll('createRequire(import.meta.url)(', 'require(');
      if (/createRequire\([^)]/.test(src.replace(/^import .*$/gm, ''))) throw new Error(`${args.path}: a createRequire() the bundler cannot follow; use "const require = createRequire(import.meta.url)"`);
      src = src.replaceAll('import.meta.url', JSON.stringify(EMBEDDED_URL_BASE + path.relative(path.join(root, 'dist'), args.path)));
      return { contents: src, loader: 'js' };
    });
  },
};

const common = {
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // whitespace kept: an operator's --debug stack trace then shows a readable line
  minifySyntax: true,
  legalComments: 'none',
  define: { 'process.env.NODE_ENV': '"production"' },
  plugins: [executablePlugin],
  metafile: true,
  logLevel: process.env.KURA_PACKAGE_LOG ?? 'error',
};
const bundles = [{ in: entry, out: path.join(work, 'kura.cjs') }, ...WORKERS.map((w) => ({ in: path.join(root, 'dist', w), out: path.join(work, 'worker', w) }))];
const inputs = new Set();
for (const b of bundles) {
  const r = await build({ ...common, entryPoints: [b.in], outfile: b.out });
  for (const i of Object.keys(r.metafile.inputs)) inputs.add(i);
}
say(`bundled ${inputs.size} modules (${(statSync(bundles[0].out).size / 1048576).toFixed(1)} MiB main bundle)`);

// the npm packages inside, with their licences, for the copyright file
const packages = new Map();
for (const i of inputs) {
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(i);
  if (!m || packages.has(m[1])) continue;
  const pj = JSON.parse(readFileSync(path.join(root, 'node_modules', m[1], 'package.json'), 'utf8'));
  packages.set(m[1], { version: pj.version, license: typeof pj.license === 'string' ? pj.license : (pj.license?.type ?? 'see its package'), author: typeof pj.author === 'string' ? pj.author : (pj.author?.name ?? '') });
}
for (const a of ADDONS) {
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(a.file);
  if (m && !packages.has(m[1])) {
    const pj = JSON.parse(readFileSync(path.join(root, 'node_modules', m[1], 'package.json'), 'utf8'));
    packages.set(m[1], { version: pj.version, license: typeof pj.license === 'string' ? pj.license : 'see its package', author: typeof pj.author === 'string' ? pj.author : (pj.author?.name ?? '') });
  }
}
writeFileSync(path.join(work, 'packages.json'), JSON.stringify(Object.fromEntries([...packages].sort()), null, 2));

// 2. manifest and assets
const { commit, dirty } = checkoutCommit(root);
const manifest = {
  kura: kuraVersion(),
  commit,
  node: process.versions.node,
  builtFrom: { dirty },
  libraries: checkoutLibraries(root),
  addons: {},
  workers: WORKERS,
};
const assets = {};
for (const a of ADDONS) {
  const bytes = readFileSync(path.join(root, a.file));
  manifest.addons[a.name] = { sha256: createHash('sha256').update(bytes).digest('hex'), bytes: bytes.length };
  assets[`addon/${a.name}.node`] = path.join(root, a.file);
}
for (const w of WORKERS) assets[`worker/${w}`] = path.join(work, 'worker', w);
writeFileSync(path.join(work, 'manifest.json'), JSON.stringify(manifest, null, 2));
assets['manifest.json'] = path.join(work, 'manifest.json');
const seaConfig = path.join(work, 'sea-config.json');
// the code cache makes start-up faster (measured in bench/executable.ts); it only fits this node, which is the one embedded
writeFileSync(seaConfig, JSON.stringify({ main: path.join(work, 'kura.cjs'), output: path.join(work, 'sea.blob'), disableExperimentalSEAWarning: true, useCodeCache: true, assets }, null, 2));
const blob = spawnSync(nodeBinary, ['--experimental-sea-config', seaConfig], { encoding: 'utf8' });
if (blob.status !== 0) fail(`node --experimental-sea-config failed: ${blob.stderr}`);
say('made the SEA blob');

// 3. node, stripped, with the blob injected
const exe = path.join(work, 'kura');
copyFileSync(nodeBinary, exe);
chmodSync(exe, 0o755);
const s = spawnSync(strip, ['--strip-all', exe], { encoding: 'utf8' });
if (s.status !== 0) fail(`strip failed: ${s.stderr}`);
const postject = path.join(root, 'node_modules', 'postject', 'dist', 'cli.js');
const inj = spawnSync(nodeBinary, [postject, exe, 'NODE_SEA_BLOB', path.join(work, 'sea.blob'), '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'], { encoding: 'utf8' });
if (inj.status !== 0) fail(`postject failed: ${inj.stderr}${inj.stdout}`);
say('injected the blob');

// a smoke run before anything is published: the version report loads every library and addon
const smokeHome = path.join(work, 'smoke-home');
mkdirSync(smokeHome, { recursive: true, mode: 0o700 });
const smoke = spawnSync(exe, ['--version', '--json'], { encoding: 'utf8', env: { PATH: '/usr/bin:/bin', HOME: smokeHome, KURA_CACHE_DIR: path.join(smokeHome, 'cache') } });
if (smoke.status !== 0) fail(`the new executable does not run: ${smoke.stderr}`);
const report = JSON.parse(smoke.stdout);
if (report.executable !== 'single' || report.native.kura !== 'loaded' || report.commit !== commit) fail(`the new executable reports ${smoke.stdout}`);
rmSync(smokeHome, { recursive: true, force: true });
const finalExe = path.join(out, 'kura');
copyFileSync(exe, finalExe + '.tmp');
chmodSync(finalExe + '.tmp', 0o755);
spawnSync('mv', ['-f', finalExe + '.tmp', finalExe]);
say(`executable ${path.relative(root, finalExe)}: ${(statSync(finalExe).size / 1048576).toFixed(1)} MiB`);

// 4. the Debian package
if (!process.argv.includes('--no-deb')) {
  const { buildDeb } = await import('./deb.mjs');
  const deb = await buildDeb({ root, exe: finalExe, work: path.join(work, 'deb'), out, manifest, packages, addonFiles: ADDONS.map((a) => path.join(root, a.file)) });
  say(`Debian package ${path.relative(root, deb)}: ${(statSync(deb).size / 1048576).toFixed(1)} MiB`);
}
rmSync(work, { recursive: true, force: true });
