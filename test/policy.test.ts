import { test } from 'node:test';
import assert from 'node:assert/strict';
import { authorize, fingerprint, ipInNetwork, keyBlobOf } from '../src/vault/access.js';
import { parseRate, rateAt, TokenBucket, type Clock } from '../src/relay/bandwidth.js';
import { backoffDelay } from '../src/relay/backoff.js';
import { encodeFrame, FrameParser } from '../src/protocol/frames.js';
import { KuraError } from '../src/errors.js';
import { sealWorkers } from '../src/archiver/seal-pool.js';

test('ipInNetwork: IPv4, IPv6 and IPv4-mapped addresses', () => {
  const table: Array<[string, string, boolean]> = [
    ['127.0.0.1', '127.0.0.0/8', true],
    ['128.0.0.1', '127.0.0.0/8', false],
    ['10.1.2.3', '10.1.0.0/16', true],
    ['10.2.2.3', '10.1.0.0/16', false],
    ['192.168.1.7', '192.168.1.7/32', true],
    ['192.168.1.8', '192.168.1.7/32', false],
    ['8.8.8.8', '0.0.0.0/0', true],
    ['::ffff:127.0.0.1', '127.0.0.0/8', true],
    ['::1', '::1/128', true],
    ['::2', '::1/128', false],
    ['2001:db8::5', '2001:db8::/32', true],
    ['2001:db9::5', '2001:db8::/32', false],
    ['127.0.0.1', '::1/128', false],
  ];
  for (const [ip, net, want] of table) assert.equal(ipInNetwork(ip, net), want, `${ip} in ${net}`);
});

const KEY_A = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa a@x';
const KEY_B = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb b@x';
const KEY_C = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICcccccccccccccccccccccccccccccccccccccccccc c@x';
const tenants = {
  'city-a': { clients: [{ key: KEY_A, role: 'backup' as const, networks: ['10.0.0.0/8'] }] },
  'city-b': { clients: [{ key: KEY_B, role: 'restore' as const, networks: ['127.0.0.0/8'] }] },
};

test('authorize: the key decides the tenant and role; user name, network and unknown keys are refused', () => {
  const attempt = (key: string, username: string, ip: string) => {
    const k = keyBlobOf(key)!;
    return authorize({ username, keyAlgo: k.algo, keyData: k.data, ip }, tenants);
  };
  assert.deepEqual(attempt(KEY_A, 'city-a', '10.9.9.9'), { ok: true, tenant: 'city-a', role: 'backup', fingerprint: fingerprint(keyBlobOf(KEY_A)!.data) });
  assert.equal((attempt(KEY_B, 'city-b', '127.0.0.1') as { role: string }).role, 'restore');
  const unknown = attempt(KEY_C, 'city-a', '10.0.0.1');
  assert.equal(unknown.ok, false);
  assert.equal(!unknown.ok && unknown.reason, 'unknown key');
  const other = attempt(KEY_A, 'city-b', '10.0.0.1');
  assert.equal(!other.ok && other.code, 'E_TENANT_MISMATCH');
  const outside = attempt(KEY_A, 'city-a', '192.168.0.1');
  assert.equal(!outside.ok && outside.code, 'E_AUTH_DENIED');
  assert.match(!outside.ok ? outside.reason : '', /outside/);
});

test('parseRate reads SI and IEC units', () => {
  assert.equal(parseRate('unlimited'), null);
  assert.equal(parseRate('2MB/s'), 2_000_000);
  assert.equal(parseRate('500KiB/s'), 512_000);
  assert.equal(parseRate('1.5GB/s'), 1.5e9);
  assert.equal(parseRate('100B/s'), 100);
});

test('rateAt: weekday office hours, weekends, windows spanning midnight', () => {
  const windows = [
    { days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '08:00', to: '18:00', rate: '2MB/s' },
    { days: ['fri'], from: '22:00', to: '02:00', rate: '50MB/s' },
  ];
  // 2026-11-23 is a Monday
  const at = (day: number, hh: number, mm = 0) => new Date(2026, 10, 23 + day, hh, mm);
  const table: Array<[Date, number | null]> = [
    [at(0, 7, 59), null],
    [at(0, 8, 0), 2e6],
    [at(0, 17, 59), 2e6],
    [at(0, 18, 0), null],
    [at(4, 12), 2e6], // Friday noon
    [at(4, 23), 50e6], // Friday night
    [at(5, 1, 30), 50e6], // Saturday 01:30 still belongs to Friday's window
    [at(5, 2, 0), null],
    [at(5, 12), null], // Saturday noon
    [at(3, 23), null], // Thursday night: the night window is Friday's only
  ];
  for (const [d, want] of table) assert.equal(rateAt(windows, 'unlimited', d), want, d.toString());
  assert.equal(rateAt([], '10MB/s', at(0, 3)), 10e6);
});

test('the token bucket holds a stream to its rate, allowing a quarter second of burst', async () => {
  let now = 0;
  let slept = 0;
  const clock: Clock = {
    now: () => now,
    sleep: async (ms) => {
      now += ms;
      slept += ms;
    },
  };
  const bucket = new TokenBucket(() => 1_000_000, clock);
  for (let i = 0; i < 100; i++) await bucket.take(100_000); // 10 MB at 1 MB/s
  assert.ok(Math.abs(now - 10_000) < 300, `10 MB at 1 MB/s took ${now} ms`);
  const free = new TokenBucket(() => null, clock);
  const before = slept;
  await free.take(1e9);
  assert.equal(slept, before, 'unlimited never waits');
});

test('back-off doubles from the initial delay up to the cap', () => {
  const mid = () => 0.5; // no jitter
  assert.deepEqual([1, 2, 3, 4, 5, 10].map((a) => backoffDelay(a, 1000, 10_000, mid)), [1000, 2000, 4000, 8000, 10_000, 10_000]);
  assert.ok(backoffDelay(1, 1000, 10_000, () => 0) >= 900);
});

test('frames parse across arbitrary splits, and an oversized length is refused before buffering', () => {
  const frames = [encodeFrame(0x01, { hello: 1 }), encodeFrame(0x12, Buffer.alloc(70_000, 7)), encodeFrame(0x13, {})];
  const all = Buffer.concat(frames);
  for (const step of [1, 3, 4, 5, 1000, all.length]) {
    const p = new FrameParser(1 << 20);
    const got = [];
    for (let o = 0; o < all.length; o += step) got.push(...p.push(all.subarray(o, o + step)));
    assert.deepEqual(got.map((f) => [f.type, f.payload.length]), [[0x01, 11], [0x12, 70_000], [0x13, 2]], `split ${step}`);
    assert.equal(p.pending, 0);
  }
  const p = new FrameParser(1 << 20);
  assert.throws(() => p.push(Buffer.from([0x10, 0, 0, 0, 1])), (e: unknown) => e instanceof KuraError && e.code === 'E_FRAME_TOO_LARGE');
  const q = new FrameParser(1 << 20);
  q.push(encodeFrame(0x12, Buffer.alloc(10)).subarray(0, 8));
  assert.equal(q.pending, 8, 'a truncated frame is visible at end of stream');
});

test('sealWorkers: one core is left to the main thread and the chunking worker, at least one worker, at most 8', () => {
  const table: Array<[number, number]> = [
    [1, 1],
    [2, 1],
    [3, 2],
    [4, 3],
    [8, 7],
    [9, 8],
    [64, 8],
  ];
  for (const [cores, want] of table) assert.equal(sealWorkers(cores), want, `${cores} cores`);
});
