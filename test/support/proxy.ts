import net from 'node:net';

/**
 * A userspace TCP proxy the tests control, standing in for a WAN link: rate limit, delay,
 * pause (traffic stalls, connections stay open), black hole (as pause, and a connection made
 * meanwhile does not reach the far end either), down (connections reset, new ones refused at
 * once) and reset. It counts the bytes it forwards in each direction.
 */
export class LinkProxy {
  private server: net.Server;
  private pairs = new Set<{ a: net.Socket; b: net.Socket }>();
  private held = new Set<net.Socket>(); // connections made into the black hole
  private paused = false;
  private holed = false;
  private isDown = false;
  private rate: number | null = null; // bytes per second, client → server and back
  private delayMs = 0;
  bytesUp = 0; // client → server
  bytesDown = 0;
  connections = 0; // forwarded to the far end
  accepted = 0; // TCP connections made to the link, forwarded or held in a black hole
  port = 0;

  constructor(private readonly targetPort: number, private readonly targetHost = '127.0.0.1') {
    this.server = net.createServer((client) => {
      this.accepted++;
      this.accept(client);
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  private accept(client: net.Socket): void {
    if (this.isDown) {
      client.resetAndDestroy();
      return;
    }
    if (this.holed) {
      // a SYN into a black hole: the far end sees nothing until the line returns (this side's
      // kernel has accepted the connection; what the client sends waits in its buffers)
      client.pause();
      client.on('error', () => {});
      this.held.add(client);
      void (async () => {
        while (this.holed && !client.destroyed) await sleep(20);
        this.held.delete(client);
        if (client.destroyed) return;
        this.accept(client);
        client.resume();
      })();
      return;
    }
    this.connections++;
    const upstream = net.connect(this.targetPort, this.targetHost);
    const pair = { a: client, b: upstream };
    this.pairs.add(pair);
    // Like a network path: bytes one end wrote are still delivered after it closes (or dies),
    // then the other end sees the close; only reset() or down() drop bytes in flight. A byte is
    // counted once the far socket's kernel buffer has taken it.
    const pipe = (from: net.Socket, to: net.Socket, count: (n: number) => void) => {
      let chain = Promise.resolve();
      from.on('data', (d: Buffer) => {
        from.pause();
        chain = chain.then(async () => {
          for (let off = 0; off < d.length; ) {
            while ((this.paused || this.holed) && !to.destroyed) await sleep(20);
            const piece = this.rate ? d.subarray(off, off + Math.max(1024, Math.floor(this.rate / 20))) : d.subarray(off);
            if (this.delayMs) await sleep(this.delayMs);
            if (to.destroyed) return;
            const written = new Promise<void>((r) => to.write(piece, (err) => (err ? r() : (count(piece.length), r()))));
            if (to.writableNeedDrain) await drainedOrClosed(to);
            if (this.rate) await Promise.all([written, sleep((piece.length / this.rate) * 1000)]);
            off += piece.length;
          }
          if (!from.destroyed) from.resume();
        });
      });
      // the end, a close or an error of `from`: what it had sent still goes, then `to` is ended
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        void chain.then(async () => {
          while (this.holed && !to.destroyed) await sleep(20);
          if (!to.destroyed) to.end();
        });
      };
      from.on('end', end);
      from.on('close', end);
      from.on('error', end);
    };
    client.allowHalfOpen = true;
    upstream.allowHalfOpen = true;
    pipe(client, upstream, (n) => (this.bytesUp += n));
    pipe(upstream, client, (n) => (this.bytesDown += n));
    const forget = () => {
      if (client.destroyed && upstream.destroyed) this.pairs.delete(pair);
    };
    // a side whose both directions are done is closed; the pair is forgotten once both are
    for (const s of [client, upstream]) {
      s.on('finish', () => s.readableEnded && s.destroy());
      s.on('end', () => s.writableFinished && s.destroy());
      s.on('close', forget);
    }
  }

  setRate(bytesPerSecond: number | null): void {
    this.rate = bytesPerSecond;
  }
  setDelay(ms: number): void {
    this.delayMs = ms;
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  /**
   * Black hole (a cut cable, a firewall that drops, a far host without power): nothing is
   * forwarded in either direction, nothing is sent, nothing is reset; connections stay open and
   * a side that closes is not told to the other. New connections are accepted here but do not
   * reach the far end. heal() lets everything held go on, as TCP does when the line returns.
   */
  blackHole(): void {
    this.holed = true;
  }
  heal(): void {
    this.holed = false;
  }
  /** Line down: live connections are reset and new ones refused until up(). */
  down(): void {
    this.isDown = true;
    this.resetAll();
  }
  up(): void {
    this.isDown = false;
    this.paused = false;
  }
  resetAll(): void {
    for (const c of this.held) c.resetAndDestroy();
    for (const p of this.pairs) {
      p.a.resetAndDestroy();
      p.b.resetAndDestroy();
    }
    this.pairs.clear();
  }
  async close(): Promise<void> {
    this.resetAll();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** Resolves once `s` can take writes again, or is closed (listeners removed either way). */
function drainedOrClosed(s: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.on('drain', done);
    s.on('close', done);
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
