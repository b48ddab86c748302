import { KuraError } from '../errors.js';
import { blobInfo } from '../crypto/blob.js';
import { isListBlob, openListBlob } from './chunklist.js';
import { DIGEST_BYTES, digestVerdicts, runDigests, type DigestVerdict } from './digest.js';
import type { DamagedBlob } from './quarantine.js';
import type { BlobRun } from './reader.js';

/** What a keyless reader found of a run of blobs. */
export interface RunCheck {
  /** the blobs' digests as they are now (n × 16 bytes): what a sender passes on */
  digests: Buffer;
  verdicts: DigestVerdict[];
  /** the blobs that do not hash to their recorded digest (or, without one, are not what they claim) */
  damaged: DamagedBlob[];
  /** blobs without a recorded digest that could be checked only for their structure (written before pack format 2) */
  unverified: number;
}

/**
 * Verify a run of stored blobs without a key: each against the digest recorded when it was
 * written. Blobs without one (pack format 1) get what is possible: a list block is checked
 * against its ID (plaintext, unkeyed), a chunk blob only for its structure (`unverified`: its tag
 * needs the key).
 */
export function verifyRun(run: BlobRun): RunCheck {
  const digests = runDigests(run.bytes, run.lengths);
  const verdicts = digestVerdicts(run.digests, digests);
  const damaged: DamagedBlob[] = [];
  let unverified = 0;
  let off = 0;
  for (let i = 0; i < run.ids.length; i++) {
    const length = run.lengths[i]!;
    const blob = run.bytes.subarray(off, off + length);
    const where = { chunk: run.ids[i]!, pack: run.pack, offset: run.offset + off, length, digest: run.digests[i] ?? null };
    if (verdicts[i] === 'damaged') {
      damaged.push({ ...where, reason: `stored bytes hash to ${digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES).toString('hex')}, not to the digest ${run.digests[i]!.toString('hex')} recorded when written` });
    } else if (verdicts[i] === 'unrecorded') {
      if (isListBlob(blob)) {
        try {
          openListBlob(blob, run.ids[i]!);
        } catch (e) {
          if (!(e instanceof KuraError)) throw e;
          damaged.push({ ...where, reason: e.message });
        }
      } else if (!blobInfo(blob)) damaged.push({ ...where, reason: 'not a blob of a known format (truncated or damaged)' });
      else unverified++;
    }
    off += length;
  }
  return { digests, verdicts, damaged, unverified };
}

/**
 * A run about to be sent: verified (throws damagedBlobError if any blob is damaged); `digests`
 * are what the vault checks the blobs against (protocol 4): the digests recorded when they were
 * written, or for older blobs the ones computed now (`unverified` of them).
 */
export function checkedForSending(run: BlobRun, snapshot: string): { digests: Buffer; unverified: number } {
  const c = verifyRun(run);
  if (c.damaged.length > 0) throw damagedBlobError(c.damaged, `snapshot ${snapshot}`, snapshot);
  run.digests.forEach((d, i) => d?.copy(c.digests, i * DIGEST_BYTES));
  return { digests: c.digests, unverified: c.unverified };
}

/** The coded error of damaged blobs found while reading `what` for sending: relay.ts quarantines them and sets the entry aside. */
export function damagedBlobError(damaged: DamagedBlob[], what: string, snapshot: string): KuraError {
  const d = damaged[0]!;
  const hex = d.chunk.toString('hex');
  return new KuraError(
    'E_CHUNK_CORRUPT',
    `chunk ${hex} of ${what} is damaged in pack ${d.pack} at offset ${d.offset} (${d.reason})${damaged.length > 1 ? `, and ${damaged.length - 1} more` : ''}; a backup that meets the same data stores it again, "kura check --read-data" says what else it damages`,
    { chunk: hex, snapshot, damaged },
  );
}
