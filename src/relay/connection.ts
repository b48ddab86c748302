import { createRequire } from 'node:module';
import { once } from 'node:events';
import net from 'node:net';
import type { Client, ClientChannel } from 'ssh2';
import { KuraError } from '../errors.js';
import { DEFAULT_MAX_FRAME, Frame, FrameParser, OLDEST_RELAY_PROTOCOL, PROTOCOL_VERSION, encodeFrame, frameName, jsonOf, type RawFrame } from '../protocol/frames.js';
import { keepChannelWindow } from '../protocol/window.js';
import { log } from '../log.js';
import type { TokenBucket } from './bandwidth.js';
import { verifyMoved, type MovedAnswer } from './moved.js';
import { clockOffset } from './route-policy.js';
import { endpointOrder } from '../vault/nodes/policy.js';
import { DEFAULT_DEAD_AFTER_MS, formatQuiet, pingIntervalOf, socketProgress, watchProgress } from './liveness.js';

const require = createRequire(import.meta.url);
const ssh2 = require('ssh2') as typeof import('ssh2');

export interface Endpoint {
  host: string;
  port: number;
  user?: string | undefined;
  hostKeySha256?: string | undefined;
  /** vault.node.id of the endpoint (vault nodes sharing a store) */
  node?: string | undefined;
}

export interface ConnectOptions {
  route: string;
  tenant: string;
  privateKey: Buffer;
  keepaliveMs: number;
  readyTimeoutMs: number;
  /** a line from which nothing arrives for this long is down (relay.deadAfter; default 60 s) */
  deadAfterMs?: number;
  /** ends the connection, or its opening, at once: what waits on it fails with the signal's reason */
  signal?: AbortSignal;
  maxFrame?: number;
  limiter?: TokenBucket;
  /** the protocol version offered in HELLO (default: this relay's newest) */
  protocol?: number;
}

function pinToHex(pin: string): string | null {
  const m = /^SHA256:([A-Za-z0-9+/]+)=*$/.exec(pin.trim());
  return m ? Buffer.from(m[1]!, 'base64').toString('hex') : null;
}

/** How long a connection being closed may take to say goodbye before its socket is destroyed. */
const LINGER_MS = 1000;

/**
 * One protocol session with a vault over SSH. Frames out go through the route's token bucket;
 * frames in are parsed as they arrive; an ERROR frame becomes a KuraError with the vault's code.
 * The connection counts what crosses the wire so transfers can be accounted.
 *
 * It fails (E_LINK_DOWN), and its socket is destroyed, when nothing arrives for `deadAfterMs`
 * (see liveness.ts), when the peer closes or resets it, or when `signal` aborts; SSH keepalive
 * pings only probe a quiet line and never end one themselves.
 */
/** Bytes sent by every connection of this process (a progress meter follows it). */
export const wireTotals = { bytesOut: 0 };

export class VaultConnection {
  bytesOut = 0;
  bytesIn = 0;
  private frames: RawFrame[] = [];
  private waiter: { resolve: (f: RawFrame) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  session = '';
  role = '';
  /** the person the vault accepted in AUTH (an operator's ticket), if any */
  operator: { subject: string; provider: string; role: string } | null = null;
  /** the protocol version the vault answered HELLO with (it may be older than this relay's) */
  protocol = PROTOCOL_VERSION;
  /** the vault's clock offset measured at HELLO (null: an older vault did not say its time) */
  clock: { offsetMs: number; rttMs: number } | null = null;
  /** the largest frame the vault takes */
  maxFrame = DEFAULT_MAX_FRAME;
  /** Settles (rejects) once when the link fails: every wait for the channel races it. */
  private readonly broken: Promise<never>;
  private breakNow: (e: Error) => void = () => {};
  private readonly watch: { stop(): void };
  private unlisten: () => void = () => {};

  private constructor(
    private readonly client: Client,
    private readonly channel: ClientChannel,
    private readonly sock: net.Socket,
    readonly endpoint: Endpoint,
    private readonly opts: ConnectOptions,
  ) {
    this.broken = new Promise<never>((_, reject) => (this.breakNow = reject));
    this.broken.catch(() => {});
    const where = `${endpoint.host}:${endpoint.port}`;
    const deadAfter = opts.deadAfterMs ?? DEFAULT_DEAD_AFTER_MS;
    this.watch = watchProgress(() => socketProgress(sock), deadAfter, () =>
      this.cut(new KuraError('E_LINK_DOWN', `no progress for ${formatQuiet(deadAfter)} on the line to ${where}: nothing acknowledged, nothing received (relay.deadAfter); the transfer resumes from what the vault holds once the line moves again`)),
    );
    const signal = opts.signal;
    if (signal) {
      const onAbort = () => this.cut(stopReason(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      this.unlisten = () => signal.removeEventListener('abort', onAbort);
    }
    const parser = new FrameParser(opts.maxFrame ?? 64 << 20);
    const consumed = keepChannelWindow(channel);
    channel.on('data', (d: Buffer) => {
      consumed();
      this.bytesIn += d.length;
      try {
        for (const f of parser.push(d)) this.deliver(f);
      } catch (e) {
        this.fail(e as Error);
      }
    });
    channel.stderr.on('data', (d: Buffer) => log().debug({ route: opts.route, stderr: d.toString().trim() }, 'vault stderr'));
    // the far end said goodbye (or its half of the connection ended): nothing more will come
    const closedByPeer = () => this.cut(new KuraError('E_LINK_DOWN', `connection to ${where} closed by peer`));
    channel.on('close', closedByPeer);
    client.on('end', closedByPeer);
    client.on('close', closedByPeer);
    client.on('error', (e: Error) => this.cut(new KuraError('E_LINK_DOWN', `link to ${where} failed: ${e.message}`)));
    if (signal?.aborted) this.cut(stopReason(signal));
  }

  /** Try the route's endpoints in order; the first that completes the handshake is used. */
  static async open(endpoints: readonly Endpoint[], opts: ConnectOptions): Promise<VaultConnection> {
    const errors: string[] = [];
    for (const ep of endpointOrder(opts.tenant, endpoints)) {
      try {
        const conn = await VaultConnection.connectOne(ep, opts);
        // the vault's clock is read between HELLO and HELLO_OK: the offset is known to half the round trip
        const t0 = Date.now();
        await conn.send(Frame.HELLO, { protocol: opts.protocol ?? PROTOCOL_VERSION, tenant: opts.tenant, client: 'kura', time: t0 });
        const hello = await conn.next();
        const t1 = Date.now();
        if (hello.type === Frame.MOVED) {
          conn.close();
          const answer = jsonOf<MovedAnswer>(hello);
          const { signedBy } = verifyMoved(answer, ep.hostKeySha256, `${ep.host}:${ep.port}`);
          throw new KuraError('E_TENANT_MOVED', `the vault at ${ep.host}:${ep.port} says tenant ${opts.tenant} moved to ${answer.endpoints.map((e) => `${e.host}:${e.port}`).join(', ')} (signed by ${signedBy})`, { moved: answer, signedBy });
        }
        if (hello.type !== Frame.HELLO_OK) throw new KuraError('E_PROTOCOL', `expected HELLO_OK from the vault, got ${frameName(hello.type)}`);
        const ok = jsonOf<{ session: string; role: string; protocol?: number; maxFrame?: number; time?: number }>(hello);
        if (typeof ok.time === 'number') conn.clock = clockOffset(t0, t1, ok.time);
        if (typeof ok.maxFrame === 'number' && ok.maxFrame > 0) conn.maxFrame = ok.maxFrame;
        conn.session = ok.session;
        conn.role = ok.role;
        conn.protocol = ok.protocol ?? 1;
        if (conn.protocol < OLDEST_RELAY_PROTOCOL) {
          conn.close();
          throw new KuraError('E_PROTOCOL_VERSION', `the vault at ${ep.host}:${ep.port} speaks protocol version ${conn.protocol}; this relay speaks ${OLDEST_RELAY_PROTOCOL} to ${PROTOCOL_VERSION}: upgrade the vault`);
        }
        return conn;
      } catch (e) {
        const err = e as KuraError;
        if (opts.signal?.aborted) throw stopReason(opts.signal);
        // a refusal by the vault itself is not a line fault: failing over would not help
        if (err.code === 'E_HOST_KEY' || err.code === 'E_TENANT_MOVED' || err.code === 'E_CONFIG' || err.code === 'E_AUTH_DENIED' || err.code === 'E_TENANT_MISMATCH' || err.code === 'E_FORBIDDEN' || err.code === 'E_PROTOCOL' || err.code === 'E_PROTOCOL_VERSION') throw err;
        errors.push(`${ep.host}:${ep.port}: ${err.message}`);
      }
    }
    throw new KuraError('E_LINK_DOWN', `no endpoint of route ${opts.route} answered (${errors.join('; ')})`);
  }

  private static connectOne(ep: Endpoint, opts: ConnectOptions): Promise<VaultConnection> {
    return new Promise((resolve, reject) => {
      const signal = opts.signal;
      if (signal?.aborted) return reject(stopReason(signal));
      const client = new ssh2.Client();
      // the TCP socket is opened here, not by ssh2, so the line's progress can be read off it
      const sock = net.connect({ host: ep.host, port: ep.port });
      // small frames (WANT, FLUSH, COMMIT) must not wait for Nagle's delayed ACK: ~40 ms each
      sock.setNoDelay(true);
      const onAbort = () => {
        sock.destroy();
        reject(stopReason(signal!));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const settled = () => signal?.removeEventListener('abort', onAbort);
      let hostKeyProblem: KuraError | null = null;
      const pin = ep.hostKeySha256 ? pinToHex(ep.hostKeySha256) : null;
      client.on('error', (e: Error & { level?: string }) => {
        settled();
        endSoon(client, sock);
        if (hostKeyProblem) return reject(hostKeyProblem);
        if (e.level === 'client-authentication') return reject(new KuraError('E_AUTH_DENIED', `the vault at ${ep.host}:${ep.port} refused this host's key for tenant ${opts.tenant}; register the key with the vault operator`));
        reject(new KuraError('E_LINK_DOWN', e.message));
      });
      client.on('ready', () => {
        client.exec('kura-vault', (err, channel) => {
          settled();
          if (err) {
            endSoon(client, sock);
            return reject(new KuraError('E_LINK_DOWN', `the vault at ${ep.host}:${ep.port} refused the protocol channel: ${err.message}`));
          }
          resolve(new VaultConnection(client, channel, sock, ep, opts));
        });
      });
      // the socket's errors are the client's once it takes the socket; until then (a key that does
      // not parse throws first) they must not be unhandled
      sock.on('error', () => {});
      try {
        client.connect({
          sock,
          username: ep.user ?? opts.tenant,
          privateKey: opts.privateKey,
          // pings probe a quiet line (their answers are progress); the progress watch, not a count of
          // unanswered pings, decides that a line is down: on a narrow line a ping waits behind
          // megabytes of data that are still moving
          keepaliveInterval: pingIntervalOf(opts.keepaliveMs, opts.deadAfterMs ?? DEFAULT_DEAD_AFTER_MS),
          keepaliveCountMax: Infinity,
          readyTimeout: opts.readyTimeoutMs,
          hostHash: 'sha256',
          hostVerifier: (hashHex: string) => {
            if (pin === null) {
              log().warn({ route: opts.route, endpoint: `${ep.host}:${ep.port}`, hostKey: 'SHA256:' + Buffer.from(hashHex, 'hex').toString('base64').replace(/=+$/, '') }, 'vault host key not pinned (set hostKeySha256)');
              return true;
            }
            if (hashHex === pin) return true;
            hostKeyProblem = new KuraError('E_HOST_KEY', `the host key of ${ep.host}:${ep.port} is not the pinned ${ep.hostKeySha256}; refusing to send (check the vault or update the pin)`);
            return false;
          },
        } as import('ssh2').ConnectConfig);
      } catch (e) {
        settled();
        sock.destroy();
        reject(new KuraError('E_CONFIG', `cannot use the SSH key of route ${opts.route}: ${(e as Error).message}`));
      }
    });
  }

  private deliver(f: RawFrame): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      if (f.type === Frame.ERROR) w.reject(vaultError(f));
      else w.resolve(f);
    } else this.frames.push(f);
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.watch.stop();
    this.unlisten();
    this.breakNow(e);
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(e);
    }
  }

  /** The line is dead, stopped or gone: fail what waits on it and drop the socket (no goodbye can get through). */
  private cut(e: Error): void {
    if (this.failure) return;
    this.fail(e);
    this.sock.destroy();
  }

  async send(type: number, payload?: Uint8Array | object): Promise<void> {
    return this.sendFrame(encodeFrame(type, payload));
  }

  /** An already encoded frame, in one buffer or in parts written in order (a bulk payload is not copied). */
  async sendFrame(frame: Buffer | readonly Buffer[]): Promise<void> {
    if (this.failure) throw this.failure;
    const parts = Buffer.isBuffer(frame) ? [frame] : frame;
    let length = 0;
    for (const p of parts) length += p.length;
    await this.opts.limiter?.take(length);
    this.bytesOut += length;
    wireTotals.bytesOut += length;
    let ok = true;
    for (const p of parts) ok = this.channel.write(p);
    if (!ok) await Promise.race([once(this.channel, 'drain'), this.broken]);
  }

  next(): Promise<RawFrame> {
    const f = this.frames.shift();
    if (f) return f.type === Frame.ERROR ? Promise.reject(vaultError(f)) : Promise.resolve(f);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  async expect(type: number): Promise<RawFrame> {
    const f = await this.next();
    if (f.type !== type) throw new KuraError('E_PROTOCOL', `expected ${frameName(type)} from the vault, got ${frameName(f.type)}`);
    return f;
  }

  async request(type: number, payload: Uint8Array | object, reply: number): Promise<RawFrame> {
    await this.send(type, payload);
    return this.expect(reply);
  }

  /** End the session politely; a socket that cannot say goodbye (the line does not move) is destroyed after a second. */
  close(): void {
    this.fail(new KuraError('E_LINK_DOWN', 'closed'));
    this.channel.end();
    endSoon(this.client, this.sock);
  }
}

/** SSH goodbye, then the socket goes whatever the line does: a socket left open would keep a stopping process alive. */
function endSoon(client: Client, sock: net.Socket): void {
  client.end();
  if (!sock.destroyed) setTimeout(() => sock.destroy(), LINGER_MS).unref();
}

/** Why a connection was stopped: the signal's KuraError, or a line fault. */
function stopReason(signal: AbortSignal): Error {
  return signal.reason instanceof KuraError ? signal.reason : new KuraError('E_LINK_DOWN', 'the connection was stopped');
}

function vaultError(f: RawFrame): KuraError {
  const e = jsonOf<{ code?: string; message?: string }>(f);
  const code = (e.code ?? 'E_PROTOCOL') as KuraError['code'];
  return new KuraError(code, `vault: ${e.message ?? 'error'}`, { fromVault: true });
}
