/** Maps exceptions from the device to NBD error values; anything that is not a ThinError is EIO. */
import { ERROR_CODES, isThinError, messageOf } from '../lib/errors.js';
import { NBD_ERRNO, NBD_EIO, type NbdErrnoName } from './protocol.js';

export interface NbdFailure {
  errno: number;
  message: string;
  /** True when the error was not a ThinError: a bug or an unexpected system error worth a log line. */
  unexpected: boolean;
}

export function failureFromError(error: unknown): NbdFailure {
  if (isThinError(error)) {
    const name: NbdErrnoName = ERROR_CODES[error.code].nbdErrno;
    return { errno: NBD_ERRNO[name] ?? NBD_EIO, message: error.message, unexpected: false };
  }
  return { errno: NBD_EIO, message: `internal error: ${messageOf(error)}`, unexpected: true };
}
