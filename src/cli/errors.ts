/**
 * CLI failures and their exit codes. Every failure ends as one line on stderr,
 * `thinarray: <message>`, and one of these codes.
 */
export const EXIT_CODES = {
  ok: 0,
  /** The array (through the API) refused or failed the operation. */
  failed: 1,
  /** Bad command line: unknown command or option, missing argument, unreadable size. */
  usage: 2,
  /** No daemon answered at the API address. */
  unreachable: 3,
} as const;

export type ExitCode = (typeof EXIT_CODES)[keyof typeof EXIT_CODES];

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode,
    /** The API's stable error code, when the error came from the daemon. */
    readonly apiCode?: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export function usageError(message: string): CliError {
  return new CliError(message, EXIT_CODES.usage);
}
