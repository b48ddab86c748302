import type { Readable } from 'node:stream';

/**
 * SSH flow control: how many bytes the far side may send on a channel before this side has read
 * them. ssh2 grants 2 MiB and tops it up to 2 MiB as data arrives; a relay streaming blobs then
 * stalls whenever the vault spends a few milliseconds assembling a pack (both ends measured idle
 * ~40 % of a 256 MiB send). The vault protocol keeps a 16 MiB window instead, granted only for
 * bytes the session has actually taken from the channel, so a reader that stops still stops the
 * sender after at most that much.
 */
export const CHANNEL_WINDOW = 16 << 20;

/**
 * The window is topped up for every this many bytes read, not once half of it is used: each grant
 * tells the sender that the reader is taking data, which the relay counts as progress on a
 * narrow line (relay.deadAfter). Half the window (8 MiB) would take 85 s at 96 KiB/s.
 */
export const GRANT_STEP = 256 << 10;

/** The parts of an ssh2 channel that carry its flow control (not in ssh2's typings). */
interface Ssh2ChannelInternals {
  incoming?: { window?: number };
  outgoing?: { id?: number; state?: string };
  _client?: { _protocol?: { channelWindowAdjust?: (id: number, amount: number) => void } };
}

/**
 * Returns a function to call each time data has been taken from `channel`: it grants the far side
 * window up to `bytes` again once `step` of it is used. A stream that is not an ssh2 channel
 * (stdin under OpenSSH, whose sshd keeps its own window and grants as finely) gets a function
 * that does nothing.
 */
export function keepChannelWindow(channel: Readable, bytes = CHANNEL_WINDOW, step = GRANT_STEP): () => void {
  const ch = channel as unknown as Ssh2ChannelInternals;
  const proto = ch._client?._protocol;
  if (typeof ch.incoming?.window !== 'number' || typeof ch.outgoing?.id !== 'number' || typeof proto?.channelWindowAdjust !== 'function') return () => {};
  const incoming = ch.incoming as { window: number };
  const outgoing = ch.outgoing as { id: number; state?: string };
  const grant = () => {
    if (outgoing.state === 'closed' || incoming.window > bytes - step) return;
    const amount = bytes - incoming.window;
    incoming.window += amount;
    proto.channelWindowAdjust!(outgoing.id, amount);
  };
  grant();
  return grant;
}
