/**
 * Errors with stable codes. The code is part of the API: the HTTP layer maps it to a status,
 * the NBD layer to an errno, the CLI prints it. Messages are for people; codes are for programs.
 */

export const ERROR_CODES = {
  INVALID_ARGUMENT: { httpStatus: 400, nbdErrno: 'EINVAL' },
  NOT_FOUND: { httpStatus: 404, nbdErrno: 'EINVAL' },
  ALREADY_EXISTS: { httpStatus: 409, nbdErrno: 'EINVAL' },
  CONFLICT: { httpStatus: 409, nbdErrno: 'EINVAL' },
  BUSY: { httpStatus: 409, nbdErrno: 'EINVAL' },
  NO_SPACE: { httpStatus: 507, nbdErrno: 'ENOSPC' },
  OUT_OF_RANGE: { httpStatus: 400, nbdErrno: 'EINVAL' },
  READ_ONLY: { httpStatus: 409, nbdErrno: 'EPERM' },
  IO_ERROR: { httpStatus: 500, nbdErrno: 'EIO' },
  UNAUTHORIZED: { httpStatus: 401, nbdErrno: 'EPERM' },
  UNSUPPORTED: { httpStatus: 400, nbdErrno: 'ENOTSUP' },
  CORRUPT: { httpStatus: 500, nbdErrno: 'EIO' },
  INTERNAL: { httpStatus: 500, nbdErrno: 'EIO' },
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class ThinError extends Error {
  readonly code: ErrorCode;
  /** The input field the error is about, when there is one (API validation names it). */
  readonly field: string | undefined;

  constructor(code: ErrorCode, message: string, options?: { field?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ThinError';
    this.code = code;
    this.field = options?.field;
  }
}

export function isThinError(error: unknown): error is ThinError {
  return error instanceof ThinError;
}

/** The message of anything thrown (an Error's message, else its string form). */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Maps an operating-system error from fs calls into a ThinError, keeping the cause. */
export function fromSystemError(error: unknown, what: string): ThinError {
  if (isThinError(error)) return error;
  const systemCode = (error as NodeJS.ErrnoException | undefined)?.code;
  if (systemCode === 'ENOSPC' || systemCode === 'EDQUOT') {
    return new ThinError('NO_SPACE', `${what}: no space left on the device holding the pool`, { cause: error });
  }
  return new ThinError('IO_ERROR', `${what}: ${messageOf(error)}`, { cause: error });
}
