import { Frame } from '../protocol/frames.js';
import type { TransferBytes } from '../repository/catalogue.js';

/** Where a session's bytes are kept: the tenant catalogue's `transfer_bytes` (kura vault usage). */
export interface TransferSink {
  addTransferBytes(day: string, bytes: TransferBytes): void;
}

/** Unrecorded bytes a session lets add up between durability points (what a killed vault can lose). */
export const RECORD_EVERY = 4 << 20;
/** Requests after which the bytes so far are recorded: the client's durability points and the restore reads. */
const RECORD_AFTER: ReadonlySet<number> = new Set([Frame.FLUSH, Frame.COMMIT, Frame.GET_SNAPSHOT, Frame.GET_CHUNKS]);
/** Frames that carry restore data: snapshot files and chunk blobs (counted whole, with their headers). */
const RESTORE_DATA: ReadonlySet<number> = new Set([Frame.SNAPSHOT, Frame.CHUNK]);

const utcDay = (): string => new Date().toISOString().slice(0, 10);

/**
 * The protocol bytes of one vault session: counted where the session reads and writes, added to
 * the tenant's catalogue in batches. A batch goes to the UTC day it is recorded on. When recording
 * fails (the catalogue is busy or closing) the bytes stay counted and go with the next batch.
 */
export class TransferAccounting {
  private wireIn = 0;
  private wireOut = 0;
  private restoreOut = 0;

  constructor(
    private readonly sink: TransferSink,
    private readonly onError: (e: unknown) => void,
    private readonly today: () => string = utcDay,
  ) {}

  /** `bytes` read from the client's side of the channel. */
  read(bytes: number): void {
    this.wireIn += bytes;
  }

  /** A frame of `type`, `bytes` long with its header, written to the client. */
  wrote(type: number, bytes: number): void {
    this.wireOut += bytes;
    if (RESTORE_DATA.has(type)) this.restoreOut += bytes;
  }

  /** A request of `type` was handled (answered, or its data taken in). */
  handled(type: number): void {
    if (RECORD_AFTER.has(type) || this.wireIn + this.wireOut >= RECORD_EVERY) this.record();
  }

  /** Add what is not recorded yet to the day's row (also when the session ends, however it ends). */
  record(): void {
    if (this.wireIn === 0 && this.wireOut === 0) return;
    try {
      this.sink.addTransferBytes(this.today(), { wireIn: this.wireIn, wireOut: this.wireOut, restoreOut: this.restoreOut });
    } catch (e) {
      this.onError(e);
      return;
    }
    this.wireIn = this.wireOut = this.restoreOut = 0;
  }
}
