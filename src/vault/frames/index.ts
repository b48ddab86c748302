import { Frame, type RawFrame } from '../../protocol/frames.js';
import type { FrameRight } from '../access.js';
import type { VaultSession } from '../session.js';
import { anyBytes, atLeast, authBody, chunkIds, emptyObject, flushBody, helloBody, listBody, protectBody, pruneBody, putRun as putRunBody, snapshotIdBody, snapshotRef, usageBody, type BodySchema } from './body.js';
import { hello } from './hello.js';
import { flush, has, put, putNext, putRun } from './upload.js';
import { commit, want } from './snapshots.js';
import { getChunks } from './chunks.js';
import { getSnapshot, list, stats } from './read.js';
import { deleteSnapshot, protect, pruneTenant, usage } from './admin.js';
import { auth, logout } from './auth.js';
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
  /**
   * a sensitive operation (restore, delete, prune, lifting a hold): with an operator ticket it
   * needs a strong and recent sign-in (vault.sso.sensitive), else E_STEP_UP (src/vault/rights.ts)
   */
  sensitive?: boolean | ((body: T) => boolean);
  /** a sensitive frame a session that passed the step-up check goes on sending (a long restore's GET_CHUNKS) */
  continues?: boolean;
  handle(s: VaultSession, body: T, frame: RawFrame): Promise<void> | void;
}

const entry = <T>(e: FrameEntry<T>): FrameEntry<unknown> => e as FrameEntry<unknown>;

const V5 = { protocol: 5, instead: 'upgrade the client (kura of protocol version 5)' };

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
  entry({ type: Frame.LIST, role: 'tenant', body: listBody, handle: list }),
  entry({ type: Frame.AUTH, role: 'any', since: V5, body: authBody, handle: auth }),
  entry({ type: Frame.LOGOUT, role: 'any', since: V5, body: emptyObject, handle: logout }),
  entry({ type: Frame.GET_SNAPSHOT, role: 'restore', sensitive: true, body: snapshotIdBody, handle: getSnapshot }),
  entry({ type: Frame.GET_CHUNKS, role: 'restore', sensitive: true, continues: true, body: chunkIds, handle: getChunks }),
  entry({ type: Frame.PROTECT, role: 'tenant-admin', sensitive: (b) => !b.protect, body: protectBody, handle: protect }),
  entry({ type: Frame.PRUNE, role: 'tenant-admin', since: V5, sensitive: (b) => !b.dryRun, body: pruneBody, handle: pruneTenant }),
  entry({ type: Frame.DELETE, role: 'tenant-admin', since: V5, sensitive: true, body: snapshotIdBody, handle: deleteSnapshot }),
  entry({ type: Frame.USAGE, role: 'system-admin', since: V5, body: usageBody, handle: usage }),
  entry({ type: Frame.STATS, role: 'tenant', body: emptyObject, handle: stats }),
  entry({ type: Frame.ROUTE_STATUS, role: 'tenant', body: emptyObject, handle: routeStatus }),
  entry({ type: Frame.SLOT_ACQUIRE, role: 'backup', body: slotAcquireBody, handle: slotAcquire }),
  entry({ type: Frame.SLOT_RENEW, role: 'backup', body: slotRenewBody, handle: slotRenew }),
  entry({ type: Frame.SLOT_RELEASE, role: 'backup', body: slotReleaseBody, handle: slotRelease }),
  entry({ type: Frame.LOGIN_BEGIN, role: 'any', since: V5, body: loginBeginBody, handle: loginBegin }),
  entry({ type: Frame.LOGIN_WAIT, role: 'any', since: V5, body: loginWaitBody, handle: loginWait }),
];

export const frameEntries: ReadonlyMap<number, FrameEntry<unknown>> = new Map(FRAMES.map((e) => [e.type, e]));
