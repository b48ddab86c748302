import { Frame, type RawFrame } from '../../protocol/frames.js';
import type { FrameRight } from '../access.js';
import type { VaultSession } from '../session.js';
import { anyBytes, atLeast, chunkIds, emptyObject, flushBody, helloBody, listBody, protectBody, putRun as putRunBody, snapshotIdBody, snapshotRef, type BodySchema } from './body.js';
import { hello } from './hello.js';
import { flush, has, put, putNext, putRun } from './upload.js';
import { commit, want } from './snapshots.js';
import { getChunks, getSnapshot, list, stats } from './read.js';
import { protect } from './admin.js';
import { routeStatus } from './routing.js';
import { loginBegin, loginBeginBody, loginWait, loginWaitBody } from './login.js';
import { slotAcquire, slotAcquireBody, slotRelease, slotReleaseBody, slotRenew, slotRenewBody } from './slots.js';

/**
 * One request frame the vault serves: the role it needs, the protocol version it came with, the
 * shape of its payload and what handles it. The session loop checks the role, the version and
 * the payload in that order, in one place, and only then calls the handler.
 */
export interface FrameEntry<T> {
  type: number;
  role: FrameRight;
  /** the protocol version that introduced the frame, and what an older client uses instead */
  since?: { protocol: number; instead: string };
  body: BodySchema<T>;
  handle(s: VaultSession, body: T, frame: RawFrame): Promise<void> | void;
}

const entry = <T>(e: FrameEntry<T>): FrameEntry<unknown> => e as FrameEntry<unknown>;

/** Every request the vault answers, with its rights (docs/protocol.md, "Roles", says the same). */
export const FRAMES: readonly FrameEntry<unknown>[] = [
  entry({ type: Frame.HELLO, role: 'any', body: helloBody, handle: hello }),
  entry({ type: Frame.HAS, role: 'backup', body: chunkIds, handle: has }),
  entry({ type: Frame.PUT, role: 'backup', body: atLeast(64, 'chunk ID ‖ BLAKE3 of the blob ‖ blob'), handle: put }),
  entry({ type: Frame.WANT, role: 'backup', since: { protocol: 2, instead: 'say so in HELLO (a kura relay of this version does), or use HAS and PUT' }, body: snapshotRef, handle: want }),
  entry({ type: Frame.PUT_NEXT, role: 'backup', body: anyBytes, handle: putNext }),
  entry({ type: Frame.PUT_RUN, role: 'backup', since: { protocol: 3, instead: 'say so in HELLO, or use PUT_NEXT' }, body: putRunBody, handle: putRun }),
  entry({ type: Frame.FLUSH, role: 'backup', body: flushBody, handle: flush }),
  entry({ type: Frame.COMMIT, role: 'backup', body: snapshotRef, handle: commit }),
  entry({ type: Frame.LIST, role: 'any', body: listBody, handle: list }),
  entry({ type: Frame.GET_SNAPSHOT, role: 'restore', body: snapshotIdBody, handle: getSnapshot }),
  entry({ type: Frame.GET_CHUNKS, role: 'restore', body: chunkIds, handle: getChunks }),
  entry({ type: Frame.PROTECT, role: 'tenant-admin', body: protectBody, handle: protect }),
  entry({ type: Frame.STATS, role: 'any', body: emptyObject, handle: stats }),
  entry({ type: Frame.ROUTE_STATUS, role: 'any', body: emptyObject, handle: routeStatus }),
  entry({ type: Frame.SLOT_ACQUIRE, role: 'backup', body: slotAcquireBody, handle: slotAcquire }),
  entry({ type: Frame.SLOT_RENEW, role: 'backup', body: slotRenewBody, handle: slotRenew }),
  entry({ type: Frame.SLOT_RELEASE, role: 'backup', body: slotReleaseBody, handle: slotRelease }),
  entry({ type: Frame.LOGIN_BEGIN, role: 'any', since: { protocol: 5, instead: 'upgrade kura: sign-ins need protocol 5' }, body: loginBeginBody, handle: loginBegin }),
  entry({ type: Frame.LOGIN_WAIT, role: 'any', since: { protocol: 5, instead: 'upgrade kura: sign-ins need protocol 5' }, body: loginWaitBody, handle: loginWait }),
];

export const frameEntries: ReadonlyMap<number, FrameEntry<unknown>> = new Map(FRAMES.map((e) => [e.type, e]));
