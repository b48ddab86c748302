/**
 * Every failure an operator can meet is a KuraError with a stable code. The CLI maps codes to
 * exit statuses (sysexits-style, so job-management software can tell classes of failure apart).
 */
export const ExitStatus = {
  OK: 0,
  FAILED: 1, // the job ran and something failed (e.g. some sources failed)
  USAGE: 64, // bad command line
  DATA: 65, // corrupt data found (chunk, snapshot, frame)
  NO_INPUT: 66, // repository, snapshot or file not found
  UNAVAILABLE: 69, // a capability that is not built yet / service unavailable
  SOFTWARE: 70, // internal error (a bug): run with --debug and report it
  IO: 74, // I/O error writing or reading the store
  TEMP_FAIL: 75, // could not lock; try again later
  NO_PERM: 77, // wrong key or passphrase, permission denied
  CANT_CREATE: 73, // a restore target that is not empty (without --force)
  CONFIG: 78, // configuration error
} as const;

export const errorCodes = {
  E_USAGE: ExitStatus.USAGE,
  E_CONFIG: ExitStatus.CONFIG,
  E_NOT_IMPLEMENTED: ExitStatus.UNAVAILABLE,
  E_REPO_NOT_FOUND: ExitStatus.NO_INPUT,
  E_REPO_EXISTS: ExitStatus.USAGE,
  E_REPO_FORMAT: ExitStatus.DATA,
  E_SNAPSHOT_NOT_FOUND: ExitStatus.NO_INPUT,
  E_SNAPSHOT_AMBIGUOUS: ExitStatus.USAGE,
  E_SNAPSHOT_CORRUPT: ExitStatus.DATA,
  E_SNAPSHOT_DAMAGED: ExitStatus.DATA,
  E_SNAPSHOT_PROTECTED: ExitStatus.NO_PERM,
  E_CHUNK_MISSING: ExitStatus.DATA,
  E_CHUNK_CORRUPT: ExitStatus.DATA,
  E_CHECK_FAILED: ExitStatus.DATA,
  E_INPUT: ExitStatus.NO_INPUT,
  E_INPUT_FAILED: ExitStatus.FAILED,
  E_KEY_MISSING: ExitStatus.NO_PERM,
  E_KEY_WRONG: ExitStatus.NO_PERM,
  E_KEY_FILE: ExitStatus.NO_PERM,
  E_IO: ExitStatus.IO,
  // a store that overwrites on a conditional create (If-None-Match: *): kura refuses to use it
  E_STORE_UNSAFE: ExitStatus.CONFIG,
  E_LOCKED: ExitStatus.TEMP_FAIL,
  E_PROTOCOL: ExitStatus.DATA,
  // the two sides share no protocol version: one of them must be upgraded
  E_PROTOCOL_VERSION: ExitStatus.UNAVAILABLE,
  E_FRAME_TOO_LARGE: ExitStatus.DATA,
  E_FRAME_TRUNCATED: ExitStatus.DATA,
  E_AUTH_DENIED: ExitStatus.NO_PERM,
  E_FORBIDDEN: ExitStatus.NO_PERM,
  E_TENANT_MISMATCH: ExitStatus.NO_PERM,
  E_LINK_DOWN: ExitStatus.TEMP_FAIL,
  E_HOST_KEY: ExitStatus.NO_PERM,
  // a vault answered that the tenant lives elsewhere now (a signed MOVED): the relay follows it
  E_TENANT_MOVED: ExitStatus.TEMP_FAIL,
  // vault nodes sharing a store: another live node holds the tenant's lease (the relay tries the route's next endpoint)
  E_TENANT_ELSEWHERE: ExitStatus.TEMP_FAIL,
  // this vault node no longer holds the tenant's lease (expired while paused, or taken over): nothing more is written or deleted
  E_LEASE_LOST: ExitStatus.TEMP_FAIL,
  E_BACKLOG_LEFT: ExitStatus.TEMP_FAIL,
  E_QUOTA: ExitStatus.TEMP_FAIL,
  E_BUSY: ExitStatus.TEMP_FAIL,
  E_RPO_EXCEEDED: ExitStatus.FAILED,
  E_BACKUP_FAILED: ExitStatus.FAILED,
  E_EXPORT_FAILED: ExitStatus.FAILED,
  E_EXPORT_TIMEOUT: ExitStatus.FAILED,
  E_RESTORE_FAILED: ExitStatus.FAILED,
  E_INTERRUPTED: ExitStatus.TEMP_FAIL, // stopped by SIGTERM/SIGINT before it finished; run it again
  E_TARGET_NOT_EMPTY: ExitStatus.CANT_CREATE,
  E_PLAN_FULL: ExitStatus.CONFIG,
  E_INTERNAL: ExitStatus.SOFTWARE,
  // single sign-on (docs/sso.md): a sign-in the identity provider or the vault refused, an
  // operator ticket that is missing, forged, expired, revoked or for another tenant, an
  // operation that needs a fresher or stronger sign-in (kura login --step-up), a role that
  // does not allow the operation
  E_SSO_FAILED: ExitStatus.NO_PERM,
  E_TICKET_MISSING: ExitStatus.NO_PERM,
  E_TICKET_INVALID: ExitStatus.NO_PERM,
  E_TICKET_EXPIRED: ExitStatus.NO_PERM,
  E_TICKET_REVOKED: ExitStatus.NO_PERM,
  E_STEP_UP: ExitStatus.NO_PERM,
  E_SSO_REQUIRED: ExitStatus.NO_PERM,
} as const;

export type ErrorCode = keyof typeof errorCodes;

export class KuraError extends Error {
  readonly code: ErrorCode;
  /** Extra machine-readable facts for --json output and logs. */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KuraError';
    this.code = code;
    this.details = details;
  }

  get exitStatus(): number {
    return errorCodes[this.code] ?? ExitStatus.FAILED;
  }
}

export function isKuraError(e: unknown): e is KuraError {
  return e instanceof KuraError;
}

/** Wrap an unexpected Node error (ENOSPC, EACCES...) into a coded error that says what to do. */
export function ioError(what: string, err: unknown): KuraError {
  const e = err as NodeJS.ErrnoException;
  const hint =
    e?.code === 'ENOSPC' ? 'free disk space and rerun'
    : e?.code === 'EACCES' || e?.code === 'EPERM' ? 'check the permissions of the path'
    : e?.code === 'ENOENT' ? 'check that the path exists'
    : 'check the path and the disk, then rerun';
  return new KuraError('E_IO', `${what}: ${e?.message ?? String(err)} (${hint})`, { errno: e?.code }, { cause: err });
}
