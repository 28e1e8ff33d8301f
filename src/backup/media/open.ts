/**
 * Opening a parsed medium for writing or reading (with the media-root guard when roots are
 * given), and `inspectMedium`, what `thinarray medium inspect MEDIUM` calls without the daemon.
 */
import type { Readable } from 'node:stream';
import { ThinError } from '../../lib/errors.js';
import { inspectStream, type StreamSummary } from '../format/inspect.js';
import { openDirReader, openDirWriter } from './dir-medium.js';
import { openFileReader, openFileWriter } from './file-medium.js';
import { formatMedium, parseMedium, type Medium, type MediumReader, type MediumWriter } from './medium.js';
import { resolveUnderRoots } from './roots.js';
import { ReadableMediumReader } from './stream-medium.js';

export interface OpenMediumOptions {
  /** When given, the path must lie under one of these (the daemon passes its --media-root list). */
  roots?: readonly string[];
  /** dir: names the cartridges; when reading, optional if the directory holds one backup. */
  backupId?: string;
  /** dir: cartridge size for writing (`--media-size`), label included. */
  mediaSizeBytes?: number;
  /** file: replace an existing plain file. */
  overwrite?: boolean;
  /** `-` when reading: the stream to read (the CLI's own stdin for `medium inspect -`). */
  stdin?: Readable;
  /** Ends a wait for a FIFO's other end (a job cancelled or stopped meanwhile): see file-medium.ts. */
  signal?: AbortSignal;
}

export async function openMediumWriter(medium: Medium, options: OpenMediumOptions = {}): Promise<MediumWriter> {
  switch (medium.kind) {
    case 'file':
      return await openFileWriter(await guarded(medium.path, options), { overwrite: options.overwrite ?? false, ...(options.signal ? { signal: options.signal } : {}) });
    case 'dir': {
      if (options.backupId === undefined) throw new ThinError('INVALID_ARGUMENT', 'dir: media need the backup id to name cartridges', { field: 'backupId' });
      if (options.mediaSizeBytes === undefined) throw new ThinError('INVALID_ARGUMENT', `${formatMedium(medium)}: a dir: medium needs --media-size SIZE (the cartridge size)`, { field: 'mediaSize' });
      return await openDirWriter(await guarded(medium.path, options), { backupId: options.backupId, cartridgeBytes: options.mediaSizeBytes });
    }
    default:
      throw notHere(medium);
  }
}

export async function openMediumReader(medium: Medium, options: OpenMediumOptions = {}): Promise<MediumReader> {
  switch (medium.kind) {
    case 'stdio':
      if (options.stdin === undefined) throw notHere(medium);
      return new ReadableMediumReader(options.stdin, 'stdin');
    case 'file':
      return await openFileReader(await guarded(medium.path, options), options.signal);
    case 'dir':
      return await openDirReader(await guarded(medium.path, options), options.backupId === undefined ? {} : { backupId: options.backupId });
    default:
      throw notHere(medium);
  }
}

export interface MediumSummary extends StreamSummary {
  /** dir: media: cartridges read. */
  cartridges?: number;
}

/** Reads a whole medium, checking everything; throws CORRUPT (BackupCorruptError) on any damage. */
export async function inspectMedium(medium: Medium | string, options: OpenMediumOptions = {}): Promise<MediumSummary> {
  const parsed = typeof medium === 'string' ? parseMedium(medium) : medium;
  const reader = await openMediumReader(parsed, options);
  try {
    const summary: MediumSummary = await inspectStream(reader);
    if ('cartridgesRead' in reader) summary.cartridges = reader.cartridgesRead as number;
    return summary;
  } finally {
    await reader.close();
  }
}

async function guarded(filePath: string, options: OpenMediumOptions): Promise<string> {
  return options.roots === undefined ? filePath : await resolveUnderRoots(filePath, options.roots);
}

function notHere(medium: Medium): ThinError {
  if (medium.kind === 'volume') {
    return new ThinError('UNSUPPORTED', `${formatMedium(medium)} is a backup region inside the array: the daemon reads it (backup verify ${formatMedium(medium)})`, { field: 'medium' });
  }
  const what = medium.kind === 'stdio' ? 'the CLI\'s stdout/stdin (the API streams it)' : 'a volume of the array (the backup layer opens it)';
  return new ThinError('UNSUPPORTED', `${formatMedium(medium)} is ${what}, not a medium this library opens`, { field: 'medium' });
}
