/**
 * The zstd levels a repository's new chunks may use (0: stored as they are), declared once for
 * the config schema (`repository.compression`, a source's `compression`), the CLI's
 * `--compression` and Repository.init.
 */
export const COMPRESSION_LEVEL = { min: 0, max: 22, default: 3 } as const;

/** What is wrong with `level` as a compression level, or null. */
export function compressionLevelProblem(level: number): string | null {
  return Number.isInteger(level) && level >= COMPRESSION_LEVEL.min && level <= COMPRESSION_LEVEL.max ? null : `must be ${COMPRESSION_LEVEL.min} (none) to ${COMPRESSION_LEVEL.max}, got ${level}`;
}
