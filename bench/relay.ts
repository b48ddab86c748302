/**
 * bench/relay: relay → vault figures over loopback SSH, printed as JSON lines.
 *   npm run bench:relay [-- --mib 256 --runs 3 --dumps DIR --chunk-avg BYTES]
 * - unlimited: wire MB/s of a first full send (incompressible data, so the wire carries it all),
 *   over the whole `relay once` process and over the transfer alone (first WANT to COMMITTED);
 *   each of `runs` runs and their median, after one warm-up send to the (long-running) vault
 * - limited: the same with the route capped at 10 MB/s (share of the cap achieved)
 * - churned day: bytes that crossed the link (counted by a TCP proxy, SSH included) for a day's
 *   increment of a SQL-like dump, against the new bytes the backup stored
 * - catch-up (with --dumps DIR: day1.sql, day2.sql, … as bench/daily --save-dumps leaves them):
 *   every night of DIR backed up and queued while the line is down, then one `relay once`
 *   ships them all in order, straight to the vault's port; its seconds, the nights' chunks
 *   and the bytes on the wire. At --chunk-avg 4096 this is where the vault's per-chunk
 *   bookkeeping (presence checks, leases, commit checks) shows.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KURA, ROOT } from '../test/support/cli.js';
import { Prng, collect, sqlDump } from '../test/support/generate.js';
import { LinkProxy } from '../test/support/proxy.js';
import { agentConfig, sshKey, startVault } from '../test/support/vault.js';

const MiB = 1 << 20;
const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const sizeMiB = arg('mib', 256);
const runs = arg('runs', 3);
const dumps = process.argv.includes('--dumps') ? process.argv[process.argv.indexOf('--dumps') + 1]! : '';
const chunkAvg = process.argv.includes('--chunk-avg') ? ['--chunk-avg', String(arg('chunk-avg', 0))] : [];
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');

async function run(args: string[], env: Record<string, string>): Promise<{ out: string; seconds: number }> {
  const t = process.hrtime.bigint();
  const child = spawn(process.execPath, [KURA, ...args], { cwd: ROOT, env: { ...process.env, KURA_PASSPHRASE: 'bench', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const [code] = (await once(child, 'exit')) as [number];
  if (code !== 0) throw new Error(`kura ${args.join(' ')} exited ${code}: ${err}`);
  return { out, seconds: Number(process.hrtime.bigint() - t) / 1e9 };
}

const dir = mkdtempSync(path.join(tmpdir(), 'kura-bench-relay-'));
try {
  const key = sshKey(dir, 'relay');
  const vault = await startVault(dir, `    city-a:\n      clients:\n        - key: ${key.public}\n          role: tenant-admin\n`);
  const link = await new LinkProxy(vault.port).start();
  const setup = async (name: string, rate?: string, direct = false) => {
    const d = path.join(dir, name);
    const { mkdirSync } = await import('node:fs');
    mkdirSync(d);
    const cfg = agentConfig(d, { port: direct ? vault.port : link.port, hostKeySha256: vault.hostKeySha256, key: key.private, tenant: `city-a` });
    writeFileSync(cfg, readFileSync(cfg, 'utf8').replace('batchBytes: 1048576', 'batchBytes: 4194304').replace('        clientKey', `${rate ? `        rate: ${rate}\n` : ''}        clientKey`));
    const env = { KURA_CONFIG: cfg };
    await run(['repo', 'init'], env);
    return env;
  };

  // 1. unlimited, incompressible data, straight to the vault's port (the test proxy is JS too).
  // A vault is a long-running service: one small send warms it up (its code is compiled, the
  // tenant's repository open) before the measured runs, each a first send of new data.
  {
    const f = path.join(dir, 'random.bin');
    const warm = await setup('warm-up', undefined, true);
    writeFileSync(f, new Prng(100).bytes(32 * MiB));
    await run(['backup', '--name', 'rnd', '--file', f, '--route', 'peer-dc'], warm);
    await run(['relay', 'once'], warm);
    const whole: number[] = [];
    const transfer: number[] = [];
    for (let i = 0; i < runs; i++) {
      const env = await setup(`unlimited-${i}`, undefined, true);
      writeFileSync(f, new Prng(1 + i).bytes(sizeMiB * MiB));
      await run(['backup', '--name', 'rnd', '--file', f, '--route', 'peer-dc'], env);
      const r = await run(['relay', 'once', '--json'], env);
      const rep = JSON.parse(r.out) as { bytesOnWire: number; sendingSeconds: number };
      const wire = rep.bytesOnWire;
      whole.push(wire / r.seconds / 1e6);
      transfer.push(wire / rep.sendingSeconds / 1e6);
      emit({ case: 'unlimited (protocol bytes, whole relay process)', run: i + 1, bytesOnLink: wire, seconds: Number(r.seconds.toFixed(3)), MBps: Number(whole[i]!.toFixed(1)), target: 150 });
      // the same run without process start, key, SSH handshake and exit: the transfer itself
      emit({ case: 'unlimited (protocol bytes, first WANT to COMMITTED)', run: i + 1, bytesOnLink: wire, seconds: rep.sendingSeconds, MBps: Number(transfer[i]!.toFixed(1)), target: 150 });
    }
    emit({ case: 'unlimited (whole relay process), median', runs, MBps: Number(median(whole).toFixed(1)), target: 150 });
    emit({ case: 'unlimited (first WANT to COMMITTED), median', runs, MBps: Number(median(transfer).toFixed(1)), target: 150 });
    rmSync(f);
  }
  // 2. capped at 10 MB/s
  {
    const env = await setup('limited', '10MB/s');
    const f = path.join(dir, 'random2.bin');
    writeFileSync(f, new Prng(2).bytes(Math.min(sizeMiB, 96) * MiB));
    await run(['backup', '--name', 'rnd', '--file', f, '--route', 'peer-dc'], env);
    const before = link.bytesUp;
    const r = await run(['relay', 'once', '--json'], env);
    const wire = link.bytesUp - before;
    const mbps = wire / r.seconds / 1e6;
    emit({ case: 'limited 10MB/s', bytesOnLink: wire, seconds: Number(r.seconds.toFixed(3)), MBps: Number(mbps.toFixed(2)), shareOfCap: Number((mbps / 10).toFixed(3)), target: 0.9 });
    rmSync(f);
  }
  // 3. a churned day of a SQL-like dump: changed chunks as deltas (the default), and stored whole
  for (const mode of ['delta', 'whole'] as const) {
    const env = await setup(`churn-${mode}`);
    const extra = mode === 'whole' ? ['--no-delta'] : [];
    const day1 = await collect(sqlDump(9, sizeMiB * MiB));
    const f = path.join(dir, `day-${mode}.sql`);
    writeFileSync(f, day1);
    await run(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc', ...extra], env);
    await run(['relay', 'once'], env);
    // day 2: a thousand scattered in-place row edits and 1% appended rows
    const day2 = Buffer.from(day1);
    const r = new Prng(10);
    for (let i = 0; i < 1000; i++) {
      const pos = r.next() % (day2.length - 16);
      day2.write(String(r.next() % 1e6).padStart(6, '0'), pos, 'latin1');
    }
    writeFileSync(f, Buffer.concat([day2, await collect(sqlDump(11, Math.round(day1.length / 100)))]));
    const b = JSON.parse((await run(['backup', '--name', 'juki', '--file', f, '--route', 'peer-dc', '--json', ...extra], env)).out) as { newBytes: number; chunks: number };
    const before = link.bytesUp;
    const sent = JSON.parse((await run(['relay', 'once', '--json'], env)).out) as { bytesOnWire: number };
    const wire = link.bytesUp - before;
    emit({ case: `churned day (${mode === 'delta' ? 'changed chunks as deltas' : 'changed chunks whole, --no-delta'})`, chunks: b.chunks, newBytesStored: b.newBytes, protocolBytes: sent.bytesOnWire, bytesOnLink: wire, ratio: Number((wire / b.newBytes).toFixed(4)), target: 1.02 });
  }
  // 4. catch-up: the saved nights of --dumps, queued while the line was down, shipped by one relay
  if (dumps) {
    const env = await setup('catch-up', undefined, true);
    const nights = readdirSync(dumps)
      .filter((f) => /^day\d+\.sql$/.test(f))
      .sort((a, b) => Number(a.slice(3, -4)) - Number(b.slice(3, -4)));
    let chunks = 0;
    let stored = 0;
    for (const night of nights) {
      const b = JSON.parse((await run(['backup', '--name', 'juki', '--file', path.join(dumps, night), '--route', 'peer-dc', '--json', ...chunkAvg], env)).out) as { chunks: number; newBytes: number };
      chunks += b.chunks;
      stored += b.newBytes;
    }
    spawnSync('sync'); // the backups' writes are not timed with the relay
    const r = await run(['relay', 'once', '--json'], env);
    const rep = JSON.parse(r.out) as { bytesOnWire: number; sendingSeconds: number };
    emit({ case: 'catch-up (queued nights, one relay once)', nights: nights.length, chunkAvg: chunkAvg[1] ?? 'default', chunks, newBytesStored: stored, bytesOnWire: rep.bytesOnWire, seconds: Number(r.seconds.toFixed(2)), sendingSeconds: rep.sendingSeconds });
  }
  await link.close();
  await vault.stop();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
