/**
 * file:PATH — a plain file, a FIFO or a character device (tape), written and read strictly in
 * order: never a seek, never a rewrite. A FIFO or a tape is written through an fs stream (write(2)
 * at the current position) and cannot be made durable; a plain file is written by
 * DirectFileWriter (O_DIRECT where the filesystem allows it) and fdatasync'ed before close.
 * SequentialFileWriter also writes dir: cartridges (plain files, through the cache).
 */
import fs from 'node:fs';
import { ThinError, isThinError } from '../../lib/errors.js';
import type { WriteBehind } from '../../lib/write-behind.js';
import { BACKUP_LIMITS } from '../format/limits.js';
import { DirectFileWriter } from './direct-file-writer.js';
import { fileMediumWriteBehind, mediumError, type MediumReader, type MediumWriter } from './medium.js';

export type FileKind = 'file' | 'fifo' | 'char-device';

// ---- one job per FIFO end or tape ------------------------------------------------------------

/**
 * The FIFO ends (by side) and tape devices that a medium of this process has open or is opening.
 * Two writers on one FIFO interleave their streams, two readers split one stream between them, and
 * the release of a cancelled wait (openDescriptor) would also release a second job waiting on the
 * same side: so each is one job's at a time, and the second is refused (BUSY) before it opens.
 * A FIFO is keyed by filesystem and inode (a hard link is the same FIFO), a tape by device number.
 */
const claimedEnds = new Set<string>();

type Side = 'write' | 'read';

function endKey(stats: fs.Stats, kind: FileKind, side: Side): string {
  // A FIFO's two ends are two media (a backup writing while a restore reads it). A tape is one,
  // named by its device number: /dev/st0 and /dev/nst0, or a node made with mknod, are one drive.
  return kind === 'fifo' ? `fifo:${stats.dev}:${stats.ino}:${side}` : `device:${stats.rdev}`;
}

/** Claims the end of the FIFO or tape at `filePath` for one medium; returns its release (idempotent). */
function claimEnd(filePath: string, kind: FileKind, side: Side, description: string, field = 'medium'): () => void {
  let stats: fs.Stats;
  try {
    stats = fs.statSync(filePath);
  } catch (error) {
    throw mediumError(error, description, 'stat'); // removed since it was looked at
  }
  const key = endKey(stats, kind, side);
  if (claimedEnds.has(key)) {
    const what = kind === 'fifo' ? `another job is already ${side === 'write' ? 'writing to' : 'reading from'} this FIFO` : 'another job is already using this device';
    throw new ThinError('BUSY', `${description}: ${what}; wait for it to end or cancel it (job list)`, { field });
  }
  claimedEnds.add(key);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    claimedEnds.delete(key);
  };
}

/**
 * Throws BUSY when a job of this process holds that end of the FIFO or tape at `filePath` (nothing
 * when it is anything else, or nothing): for a request to be refused before it records anything.
 * Returns what is at `filePath` (statMediumPath), so that the caller need not look again.
 */
export async function requireFreeEnd(filePath: string, side: Side, description: string, field: string): Promise<FileKind | null> {
  const kind = await statMediumPath(filePath, description);
  if (kind === 'fifo' || kind === 'char-device') claimEnd(filePath, kind, side, description, field)();
  return kind;
}

/** What is at `filePath`: null when nothing is; throws for kinds a medium cannot be. */
export async function statMediumPath(filePath: string, description: string): Promise<FileKind | null> {
  let stats: fs.Stats;
  try {
    stats = await fs.promises.stat(filePath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw mediumError(error, description, 'stat');
  }
  if (stats.isFile()) return 'file';
  if (stats.isFIFO()) return 'fifo';
  if (stats.isCharacterDevice()) return 'char-device';
  if (stats.isDirectory()) throw new ThinError('INVALID_ARGUMENT', `${description} is a directory (use dir:PATH for cartridges)`, { field: 'medium' });
  throw new ThinError('UNSUPPORTED', `${description} is neither a file, a FIFO nor a character device`, { field: 'medium' });
}

/**
 * Opens file:PATH for writing. An existing plain file is refused unless `overwrite` (it may be
 * an earlier backup); a FIFO waits here until a reader opens it.
 */
export async function openFileWriter(filePath: string, options: { overwrite?: boolean; signal?: AbortSignal } = {}): Promise<MediumWriter> {
  const description = `file:${filePath}`;
  if (!options.overwrite) {
    // The usual case, a new file: create it at once (O_EXCL), and look at what is there only when
    // something is (a FIFO, a tape, or a file to refuse) — one round trip fewer per backup.
    try {
      return await DirectFileWriter.open(filePath, description, true);
    } catch (error) {
      if (!isThinError(error) || error.code !== 'ALREADY_EXISTS') throw error;
    }
  }
  const kind = await statMediumPath(filePath, description);
  if (kind === 'file' && !options.overwrite) throw new ThinError('ALREADY_EXISTS', `${description} already exists (refusing to overwrite what may be another backup)`, { field: 'medium' });
  // A new file is created with O_EXCL, failing if one appeared meanwhile (O_EXCL also refuses a symlink planted there).
  if (kind === null || kind === 'file') return await DirectFileWriter.open(filePath, description, kind === null);
  const release = claimEnd(filePath, kind, 'write', description);
  try {
    return await SequentialFileWriter.open(filePath, description, 'w', false, options.signal, release);
  } catch (error) {
    release();
    throw error;
  }
}

export async function openFileReader(filePath: string, signal?: AbortSignal): Promise<MediumReader> {
  const description = `file:${filePath}`;
  const kind = await statMediumPath(filePath, description);
  if (kind === null) throw new ThinError('NOT_FOUND', `${description} does not exist`, { field: 'medium' });
  if (kind === 'file') return await SequentialFileReader.open(filePath, description, signal);
  const release = claimEnd(filePath, kind, 'read', description);
  try {
    return await SequentialFileReader.open(filePath, description, signal, release);
  } catch (error) {
    release();
    throw error;
  }
}

/** One fs.WriteStream: writes in order at the current file position. */
export class SequentialFileWriter implements MediumWriter {
  readonly description: string;
  readonly #stream: fs.WriteStream;
  /** Regular files are made durable on close; the others (FIFO, tape) cannot be. */
  readonly #durable: boolean;
  #bytesWritten = 0;
  #error: ThinError | null = null;
  /**
   * Background fdatasyncs (regular files only: fileMediumWriteBehind), so the one at close finds
   * little left (without them, a 512 MiB backup spent 0.27 s of its 0.43 s in that last fsync).
   */
  readonly #writeBehind: WriteBehind;

  /** `release` gives back the claim on a FIFO end or tape (claimEnd) when the descriptor is closed, however that happens. */
  private constructor(stream: fs.WriteStream, description: string, fd: number, durable: boolean, release: () => void) {
    this.#stream = stream;
    stream.once('close', release);
    this.description = description;
    this.#durable = durable;
    this.#writeBehind = fileMediumWriteBehind(fd, description, (error) => (this.#error ??= error));
    stream.on('error', (error) => {
      this.#error ??= mediumError(error, description, 'write');
    });
  }

  static async open(filePath: string, description: string, flags: string, fsyncOnClose: boolean, signal?: AbortSignal, release: () => void = () => undefined): Promise<SequentialFileWriter> {
    // No `start`: fs streams then write at the current position (write(2), not pwrite(2)), which a FIFO needs.
    // The descriptor is opened here, not by the stream, because the write-behind sync needs it.
    const fd = await openDescriptor(filePath, flags, description, signal);
    const stream = fs.createWriteStream(filePath, { fd, flush: fsyncOnClose, highWaterMark: BACKUP_LIMITS.writeChunkBytes });
    return new SequentialFileWriter(stream, description, fd, fsyncOnClose, release);
  }

  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  write(chunk: Buffer): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      this.#stream.write(chunk, (error) => {
        if (error) return reject(this.#error ?? mediumError(error, this.description, 'write'));
        this.#bytesWritten += chunk.length;
        if (this.#durable) this.#writeBehind.note(chunk.length);
        resolve();
      });
    });
  }

  async close(): Promise<void> {
    await this.#writeBehind.settled();
    if (this.#error) {
      await this.abort();
      throw this.#error;
    }
    await new Promise<void>((resolve, reject) => {
      this.#stream.once('close', () => (this.#error ? reject(this.#error) : resolve()));
      this.#stream.end();
    });
  }

  async abort(): Promise<void> {
    await this.#writeBehind.settled(); // never close the descriptor under a running fdatasync
    if (this.#stream.closed) return;
    await new Promise<void>((resolve) => {
      this.#stream.once('close', () => resolve());
      this.#stream.destroy();
    });
  }
}

/**
 * Reads in order (read(2) at the current position, so FIFOs and tapes work) into a ring of
 * RING_SLOTS reused buffers, one read ahead of the caller. A fresh buffer per read (an fs stream)
 * made V8 collect garbage for 37% of a writeback restore: 1 MiB of external memory per read.
 * A returned chunk therefore stays valid only until the second read() after it (the ring wraps),
 * which the MediumReader contract says.
 */
export class SequentialFileReader implements MediumReader {
  static readonly RING_SLOTS = 3;
  readonly description: string;
  readonly #fd: number;
  readonly #ring: Buffer[] = [];
  #nextSlot = 0;
  /** The read ahead, started when the previous chunk was handed out. */
  #ahead: Promise<Buffer | null> | null = null;
  #bytesRead = 0;
  #closed = false;
  /** Gives back the claim on a FIFO end or tape (claimEnd), once the descriptor is closed. */
  readonly #release: () => void;

  private constructor(fd: number, description: string, release: () => void) {
    this.#fd = fd;
    this.description = description;
    this.#release = release;
  }

  static async open(filePath: string, description: string, signal?: AbortSignal, release: () => void = () => undefined): Promise<SequentialFileReader> {
    const fd = await openDescriptor(filePath, 'r', description, signal);
    return new SequentialFileReader(fd, description, release);
  }

  get bytesRead(): number {
    return this.#bytesRead;
  }

  async read(): Promise<Buffer | null> {
    if (this.#closed) throw new ThinError('IO_ERROR', `${this.description}: read after close`);
    const pending = this.#ahead ?? this.#readNext();
    this.#ahead = null;
    const chunk = await pending;
    if (chunk === null) return null;
    this.#bytesRead += chunk.length;
    if (this.#closed) return chunk; // closed while this read ran: no read ahead on a closed descriptor
    this.#ahead = this.#readNext();
    this.#ahead.catch(() => undefined); // its failure is reported by the read() that takes it
    return chunk;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#ahead?.catch(() => undefined); // never close the descriptor under a running read
    this.#ahead = null;
    await new Promise<void>((resolve) => fs.close(this.#fd, () => resolve()));
    this.#release();
  }

  /** The next chunk into the next ring slot; null at the end of the stream. */
  #readNext(): Promise<Buffer | null> {
    const slot = this.#nextSlot;
    this.#nextSlot = (slot + 1) % SequentialFileReader.RING_SLOTS;
    const buffer = (this.#ring[slot] ??= Buffer.allocUnsafeSlow(BACKUP_LIMITS.readChunkBytes));
    return new Promise((resolve, reject) => {
      fs.read(this.#fd, buffer, 0, buffer.length, null, (error, bytes) => {
        if (error) reject(mediumError(error, this.description, 'read'));
        else resolve(bytes === 0 ? null : buffer.subarray(0, bytes));
      });
    });
  }
}


/**
 * Opens `filePath`. A FIFO's open waits for its other end (a reader for 'w', a writer for 'r') on a
 * thread-pool thread that nothing can interrupt: a backup cancelled while nobody read its FIFO
 * stayed "cancelling" for ever, and the daemon could not exit (Node joins its thread pool on exit).
 * So when `signal` aborts during the wait, the other end is opened here for an instant, which
 * lets the waiting open return; its descriptor is closed and the abort's reason thrown.
 * - Synchronously, non-blocking: a FIFO's O_NONBLOCK open never waits, and the thread pool may be
 *   full of such waiting opens.
 * - Repeated until the open returns: a knock that comes before the open started waiting does not
 *   count; none once it has returned.
 * - Only on a FIFO (opening a tape device can rewind it). It releases every open waiting on that
 *   side of the FIFO: no other job of this daemon waits there (claimEnd), but a process outside it
 *   that does sees its peer come and go (an empty, truncated stream or a broken pipe).
 */
async function openDescriptor(filePath: string, flags: string, description: string, signal?: AbortSignal): Promise<number> {
  if (signal?.aborted) throw signal.reason;
  const opening = new Promise<number>((resolve, reject) => {
    fs.open(filePath, flags, 0o666, (error, fd) => (error ? reject(mediumError(error, description, 'open')) : resolve(fd)));
  });
  if (!signal) return await opening;
  let settled = false;
  let knocking: NodeJS.Timeout | undefined;
  const otherEnd = (flags === 'r' ? fs.constants.O_WRONLY : fs.constants.O_RDONLY) | fs.constants.O_NONBLOCK;
  const knock = (): void => {
    if (settled) return;
    try {
      fs.closeSync(fs.openSync(filePath, otherEnd));
    } catch {
      // ENXIO: a writer's knock before our reader waits; the next one comes in FIFO_KNOCK_INTERVAL_MS
    }
  };
  const onAbort = (): void => {
    let isFifo = false;
    try {
      isFifo = fs.statSync(filePath).isFIFO();
    } catch {
      // gone: the open fails on its own
    }
    if (!isFifo) return;
    knock();
    knocking = setInterval(knock, FIFO_KNOCK_INTERVAL_MS);
  };
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    const fd = await opening;
    if (signal.aborted) {
      fs.close(fd, () => undefined);
      throw signal.reason;
    }
    return fd;
  } finally {
    settled = true;
    signal.removeEventListener('abort', onAbort);
    clearInterval(knocking);
  }
}

const FIFO_KNOCK_INTERVAL_MS = 50;
