/**
 * What a backup is written to and read from: a strictly sequential byte stream. Nothing here
 * seeks or rewrites, so the same code drives a plain file, a FIFO, a tape character device and
 * a set of cartridge files.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ThinError, messageOf } from '../../lib/errors.js';
import { WriteBehind } from '../../lib/write-behind.js';
import { BACKUP_LIMITS } from '../format/limits.js';

export interface MediumWriter {
  /** For messages: "file:/path", "dir:/path (cartridge 3)". */
  readonly description: string;
  /** Bytes the medium has written (stream bytes, cartridge labels not counted). */
  readonly bytesWritten: number;
  /**
   * Appends `chunk`. Resolves once the medium has written it: only then may the caller reuse the
   * buffer. A caller bounds its memory by bounding the writes it has in flight (backpressure).
   */
  write(chunk: Buffer): Promise<void>;
  /** Waits for every write, makes the data durable where the medium can (fsync of files), closes. */
  close(): Promise<void>;
  /** Stops without completing: closes and leaves what was written (a reader then sees a truncated stream). */
  abort(): Promise<void>;
}

export interface MediumReader {
  readonly description: string;
  /** Stream bytes returned so far (cartridge labels not counted). */
  readonly bytesRead: number;
  /**
   * The next bytes of the stream; null at the end. The buffer may be reused by the reader: it is
   * valid until the second read() after the one that returned it (so a caller may look one chunk
   * back, not further) — copy what must live longer.
   */
  read(): Promise<Buffer | null>;
  close(): Promise<void>;
}

/**
 * A medium named on the command line. `-` is the CLI's stdout/stdin (through the API, not
 * server-free) and `volume:NAME` a backup region inside the array (seed 003): both are types only
 * here, implemented by the layers that own them.
 */
export type Medium =
  | { kind: 'file'; path: string }
  | { kind: 'dir'; path: string }
  | { kind: 'stdio' }
  | { kind: 'volume'; name: string };

/** Parses "file:PATH", "dir:PATH", "volume:NAME" or "-". Relative paths are taken from `baseDir` (default: the cwd). */
export function parseMedium(text: string, options: { baseDir?: string; field?: string } = {}): Medium {
  const field = options.field ?? 'medium';
  if (text === '-') return { kind: 'stdio' };
  const match = /^(file|dir|volume):(.*)$/s.exec(text);
  if (!match) throw new ThinError('INVALID_ARGUMENT', `${field}: "${text}" is not a medium (expected file:PATH, dir:PATH, volume:NAME or -)`, { field });
  const kind = match[1] as 'file' | 'dir' | 'volume';
  const rest = match[2]!;
  if (rest === '') throw new ThinError('INVALID_ARGUMENT', `${field}: "${text}" names no ${kind === 'volume' ? 'volume' : 'path'}`, { field });
  if (rest.includes('\0')) throw new ThinError('INVALID_ARGUMENT', `${field}: the path contains a NUL byte`, { field });
  if (kind === 'volume') return { kind, name: rest };
  return { kind, path: path.resolve(options.baseDir ?? process.cwd(), rest) };
}

export function formatMedium(medium: Medium): string {
  switch (medium.kind) {
    case 'stdio':
      return '-';
    case 'volume':
      return `volume:${medium.name}`;
    default:
      return `${medium.kind}:${medium.path}`;
  }
}

/** An fs error as a ThinError that says which medium and what was being done. */
export function mediumError(error: unknown, description: string, operation: string): ThinError {
  if (error instanceof ThinError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const detail = messageOf(error);
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new ThinError('NO_SPACE', `${description}: the medium is full (${operation})`, { cause: error });
    case 'EPIPE':
      return new ThinError('IO_ERROR', `${description}: the reader went away (${operation}: broken pipe)`, { cause: error });
    case 'ENOENT':
      return new ThinError('NOT_FOUND', `${description}: ${detail}`, { cause: error, field: 'medium' });
    case 'EEXIST':
      return new ThinError('ALREADY_EXISTS', `${description} already exists`, { cause: error, field: 'medium' });
    case 'EACCES':
    case 'EPERM':
      return new ThinError('INVALID_ARGUMENT', `${description}: permission denied (${operation})`, { cause: error, field: 'medium' });
    default:
      return new ThinError('IO_ERROR', `${description}: ${operation} failed: ${detail}`, { cause: error });
  }
}

/**
 * A plain-file medium's write-behind: background fdatasyncs of `fd` from the first
 * syncBehindFirstBytes up to every syncBehindBytes, so the one at close finds little left.
 * A failure goes to `keep` as a medium error, for the writer to report at its next write or close:
 * a backup is never called complete on it.
 */
export function fileMediumWriteBehind(fd: number, description: string, keep: (error: ThinError) => void): WriteBehind {
  const sync = (): Promise<void> => new Promise((resolve) => {
    fs.fdatasync(fd, (error) => {
      if (error) keep(mediumError(error, description, 'write'));
      resolve();
    });
  });
  return new WriteBehind(sync, BACKUP_LIMITS.syncBehindBytes, BACKUP_LIMITS.syncBehindFirstBytes);
}
