/**
 * Writes a backup stream strictly sequentially: preamble, header frames, one DATA frame per
 * extent in copy order, trailer. Bytes are staged into a few fixed-size buffers that are reused,
 * so memory stays bounded and the medium sees large writes of one size (what a tape wants).
 */
import { createHash, type Hash } from 'node:crypto';
import { ThinError } from '../../lib/errors.js';
import { assert } from '../../lib/assert.js';
import { acquireAlignedBuffer, releaseAlignedBuffer } from '../../lib/aligned-buffers.js';
import type { MediumWriter } from '../media/medium.js';
import { BACKUP_LIMITS } from './limits.js';
import { countsOf, findHeaderProblem, recordBytesFor, renderHeadPayload, type BackupHeaderFields } from './header.js';
import {
  CORRESPONDENCE_ENTRY_BYTES, DIGEST_ALGORITHM, FRAME_HEADER_BYTES, RUN_BYTES, TAG, TRAILER,
  crc32, renderFrameHeader, renderPreamble, writeU64, writeU64s, type FrameTag,
} from './layout.js';

/** What finish() reports: the numbers a catalog entry keeps. */
export interface BackupStreamSummary {
  recordCount: number;
  dataBytes: number;
  /** Every byte of the stream, trailer included. */
  streamBytes: number;
  /** The stream digest (hex) stored in the trailer: SHA-256 of the header section and every DATA frame header. */
  digestHex: string;
}

/** 'digest': bytes the stream digest covers; 'payload': DATA payloads (covered by their CRC-32 in the digested frame header) and the trailer. */
type ByteRole = 'digest' | 'payload';

interface Dispatched {
  buffer: Buffer;
  done: Promise<void>;
}

export class BackupStreamWriter {
  // Set at creation, never changed.
  readonly #medium: MediumWriter;
  readonly #fields: BackupHeaderFields;
  readonly #expectedDataBytes: number;
  readonly #mappedExtentCount: number;
  readonly #frameHeader = Buffer.alloc(FRAME_HEADER_BYTES);

  // Changes during the run.
  #state: 'new' | 'data' | 'external' | 'finished' | 'failed' = 'new';
  #recordsWritten = 0;
  #dataBytesWritten = 0;
  /** Stream bytes staged so far (the stream offset of the next byte). */
  #streamBytes = 0;
  /** The stream digest: the header section and every frame header before the trailer (not the payloads: each frame header carries its payload's CRC-32). */
  readonly #streamDigest: Hash = createHash(DIGEST_ALGORITHM);
  /** Digest of the header bytes (preamble through CORR) for HEND; null once the header is written. */
  #headerDigest: Hash | null = createHash(DIGEST_ALGORITHM);
  /**
   * The chunk being filled. Staging chunks are page-aligned, so a medium that writes with O_DIRECT
   * (DirectFileWriter) sends every full one to the device without copying it; they are recycled
   * (src/lib/aligned-buffers.ts) once no write of them can still be running: at finish or abort.
   */
  #staging: Buffer;
  #stagedBytes = 0;
  /** Every staging chunk this writer took (the one being filled, those in flight, those free again). */
  readonly #stagingOwned: Buffer[] = [];
  readonly #inFlight: Dispatched[] = [];
  /** Medium writes of chunks an outside producer staged (beginExternalData): their memory is the producer's. */
  readonly #externalInFlight = new Set<Promise<void>>();
  #failure: unknown = null;
  /** A call is staging bytes: calls must come one at a time (each awaited), or frames would interleave. */
  #busy = false;

  constructor(medium: MediumWriter, fields: BackupHeaderFields) {
    const problem = findHeaderProblem(fields);
    if (problem) throw new ThinError('INVALID_ARGUMENT', `backup header: ${problem}`);
    this.#medium = medium;
    this.#fields = fields;
    const counts = countsOf(fields);
    this.#expectedDataBytes = counts.dataBytes;
    this.#mappedExtentCount = counts.mappedExtentCount;
    this.#staging = this.#takeStaging();
  }

  get recordsWritten(): number {
    return this.#recordsWritten;
  }

  /** Stream bytes produced so far (staged; the medium's bytesWritten trails it by at most the buffers in flight). */
  get streamBytes(): number {
    return this.#streamBytes;
  }

  /** Preamble, HEAD, the allocation map, the correspondence table and HEND. */
  async writeHeader(): Promise<void> {
    this.#expectState('new', 'writeHeader');
    await this.#guard(async () => {
      await this.#append(renderPreamble(), 'digest');
      const counts = { mappedExtentCount: this.#mappedExtentCount, dataBytes: this.#expectedDataBytes };
      await this.#appendFrame(TAG.head, renderHeadPayload(this.#fields, counts), 0, 0);
      await this.#appendTable(TAG.allocationMap, this.#fields.allocationRuns, 2, BACKUP_LIMITS.runsPerFrameMax, RUN_BYTES);
      await this.#appendTable(TAG.correspondence, this.#fields.correspondence, 1, BACKUP_LIMITS.correspondencePerFrameMax, CORRESPONDENCE_ENTRY_BYTES);
      const headerBytes = this.#streamBytes;
      const headerDigest = this.#headerDigest!.digest();
      this.#headerDigest = null;
      await this.#appendFrame(TAG.headerEnd, headerDigest, headerBytes, 0);
      this.#state = 'data';
    });
  }

  /**
   * Appends the next record. `sourceExtent` must be the next entry of the correspondence table and
   * `data` exactly its length. Resolves once `data` has been copied: the caller may reuse it.
   */
  async writeExtent(sourceExtent: number, data: Uint8Array): Promise<void> {
    this.#expectState('data', 'writeExtent');
    const index = this.#recordsWritten;
    const table = this.#fields.correspondence;
    if (index >= table.length) throw new ThinError('INVALID_ARGUMENT', `writeExtent: the header announced ${table.length} records; this would be record ${index}`);
    if (table[index] !== sourceExtent) throw new ThinError('INVALID_ARGUMENT', `writeExtent: record ${index} is source extent ${table[index]} in the correspondence table, not ${sourceExtent}`);
    const expectedBytes = recordBytesFor(sourceExtent, this.#fields.sourceCapacityBytes, this.#fields.extentBytes);
    if (data.length !== expectedBytes) throw new ThinError('INVALID_ARGUMENT', `writeExtent: record ${index} (source extent ${sourceExtent}) must be ${expectedBytes} bytes, got ${data.length}`);
    await this.#guard(async () => {
      renderFrameHeader(this.#frameHeader, 0, TAG.data, data.length, index, sourceExtent, crc32(data));
      await this.#append(this.#frameHeader, 'digest');
      await this.#append(data, 'payload');
      this.#recordsWritten++;
      this.#dataBytesWritten += data.length;
    });
  }

  /**
   * Hands the data section to an outside producer (src/backup/data-mover.ts), which lays the DATA
   * frames out itself, exactly as writeExtent would, in chunks of `chunkBytes`. Returns the bytes
   * staged so far: the producer's first chunk must start with them (copy them before the next
   * call). Until endExternalData, the writer only sends the producer's chunks to the medium.
   */
  beginExternalData(): { chunkBytes: number; stagedHead: Buffer } {
    this.#expectState('data', 'beginExternalData');
    assert(this.#recordsWritten === 0, 'the data section goes outside before its first record');
    const stagedHead = this.#staging.subarray(0, this.#stagedBytes);
    // Those bytes now travel in the producer's first chunk, counted when it is written.
    this.#streamBytes -= this.#stagedBytes;
    this.#stagedBytes = 0;
    this.#state = 'external';
    return { chunkBytes: this.#staging.length, stagedHead };
  }

  /**
   * One full chunk of the data section. `frameHeaders`: the DATA frame headers that start in it,
   * in order (the stream digest covers them). Resolves once the medium has the chunk, so the
   * producer may reuse its memory; rejects if the medium failed (the stream is then failed).
   */
  writeExternalChunk(chunk: Buffer, frameHeaders: Buffer): Promise<void> {
    this.#expectState('external', 'writeExternalChunk');
    assert(chunk.length === this.#staging.length, 'an outside chunk is a whole chunk');
    assert(frameHeaders.length % FRAME_HEADER_BYTES === 0, 'whole frame headers');
    this.#throwIfFailed();
    this.#streamDigest.update(frameHeaders);
    this.#streamBytes += chunk.length;
    const done = this.#medium.write(chunk).catch((error: unknown) => {
      this.#failure ??= error;
      this.#state = 'failed';
      throw error;
    });
    const tracked: Promise<void> = done.catch(() => undefined).then(() => {
      this.#externalInFlight.delete(tracked);
    });
    this.#externalInFlight.add(tracked);
    return done;
  }

  /**
   * The producer is done: `tail` (shorter than a chunk) is staged here, as the start of the next
   * chunk, with the frame headers that start in it. `recordCount` and `dataBytes`: the whole data
   * section's, which finish() checks against the header.
   */
  endExternalData(tail: Buffer, frameHeaders: Buffer, recordCount: number, dataBytes: number): void {
    this.#expectState('external', 'endExternalData');
    assert(tail.length < this.#staging.length && this.#stagedBytes === 0, 'the tail fits in the staging chunk');
    this.#throwIfFailed();
    this.#streamDigest.update(frameHeaders);
    tail.copy(this.#staging, 0);
    this.#stagedBytes = tail.length;
    this.#streamBytes += tail.length;
    this.#recordsWritten = recordCount;
    this.#dataBytesWritten = dataBytes;
    this.#state = 'data';
  }

  /** Trailer, then waits for the medium and closes it (durable where the medium can be). */
  async finish(): Promise<BackupStreamSummary> {
    this.#expectState('data', 'finish');
    const announced = this.#fields.correspondence.length;
    if (this.#recordsWritten !== announced) throw new ThinError('INVALID_ARGUMENT', `finish: the header announced ${announced} records, ${this.#recordsWritten} were written`);
    assert(this.#dataBytesWritten === this.#expectedDataBytes, 'data bytes written match the header');
    return await this.#guard(async () => {
      const digest = this.#streamDigest.digest();
      const streamBytesBeforeTrailer = this.#streamBytes;
      const payload = Buffer.alloc(TRAILER.payloadBytes);
      writeU64(payload, this.#recordsWritten, TRAILER.recordCount);
      writeU64(payload, this.#dataBytesWritten, TRAILER.dataBytes);
      writeU64(payload, streamBytesBeforeTrailer, TRAILER.streamBytesBeforeTrailer);
      digest.copy(payload, TRAILER.digest);
      await this.#appendFrame(TAG.trailer, payload, 0, 0, 'payload');
      await this.#dispatch(false);
      await Promise.all([...this.#inFlight.map((d) => d.done), ...this.#externalInFlight]);
      this.#giveBackStaging();
      this.#throwIfFailed();
      await this.#medium.close();
      this.#state = 'finished';
      return { recordCount: this.#recordsWritten, dataBytes: this.#dataBytesWritten, streamBytes: this.#streamBytes, digestHex: digest.toString('hex') };
    });
  }

  /** Gives up: the medium is closed with what it has (a reader reports the stream truncated). */
  async abort(): Promise<void> {
    if (this.#state === 'finished') return;
    this.#state = 'failed';
    await Promise.all([...this.#inFlight.map((d) => d.done), ...this.#externalInFlight]);
    // A call still staging bytes (abort without awaiting it) may still hand a chunk to the medium:
    // its chunks then stay out of the pool for good (a few MiB), rather than be handed to another
    // backup while a write may still read them. The backup job never aborts a call under way.
    if (!this.#busy) this.#giveBackStaging();
    await this.#medium.abort();
  }

  #takeStaging(): Buffer {
    const buffer = acquireAlignedBuffer(BACKUP_LIMITS.writeChunkBytes);
    this.#stagingOwned.push(buffer);
    return buffer;
  }

  /** Only once no medium write can still read them. */
  #giveBackStaging(): void {
    for (const buffer of this.#stagingOwned.splice(0)) releaseAlignedBuffer(buffer);
  }

  #expectState(state: 'new' | 'data' | 'external', operation: string): void {
    if (this.#state === 'failed') throw new ThinError('IO_ERROR', `${operation}: the backup stream to ${this.#medium.description} has already failed`, { cause: this.#failure });
    if (this.#state !== state) throw new ThinError('INVALID_ARGUMENT', `${operation}: not allowed now (stream state ${this.#state})`);
  }

  /** Any failure while bytes are half-staged leaves the stream unusable: mark it so. */
  async #guard<T>(work: () => Promise<T>): Promise<T> {
    if (this.#busy) throw new ThinError('INVALID_ARGUMENT', 'backup stream writer: await each call before the next one');
    this.#busy = true;
    try {
      return await work();
    } catch (error) {
      this.#state = 'failed';
      this.#failure ??= error;
      throw error;
    } finally {
      this.#busy = false;
    }
  }

  /** A whole frame; header-section frames go into the stream digest (the default), the trailer does not. */
  async #appendFrame(tag: FrameTag, payload: Buffer, arg0: number, arg1: number, role: ByteRole = 'digest'): Promise<void> {
    renderFrameHeader(this.#frameHeader, 0, tag, payload.length, arg0, arg1, crc32(payload));
    await this.#append(this.#frameHeader, role);
    await this.#append(payload, role);
  }

  /** A table (runs: 2 numbers per entry; correspondence: 1) as frames of at most `perFrame` entries of u64s. */
  async #appendTable(tag: FrameTag, values: ArrayLike<number>, numbersPerEntry: number, perFrame: number, entryBytes: number): Promise<void> {
    const entryCount = values.length / numbersPerEntry;
    const payload = Buffer.alloc(perFrame * entryBytes);
    for (let first = 0; first < entryCount; first += perFrame) {
      const count = Math.min(perFrame, entryCount - first);
      writeU64s(payload, values, first * numbersPerEntry, count * numbersPerEntry);
      await this.#appendFrame(tag, payload.subarray(0, count * entryBytes), first, count);
    }
  }

  /** Copies `bytes` into the staging buffers, sending each one to the medium as it fills. */
  async #append(bytes: Uint8Array, role: ByteRole): Promise<void> {
    this.#headerDigest?.update(bytes);
    if (role === 'digest') this.#streamDigest.update(bytes);
    let copied = 0;
    while (copied < bytes.length) {
      const take = Math.min(bytes.length - copied, this.#staging.length - this.#stagedBytes);
      this.#staging.set(bytes.subarray(copied, copied + take), this.#stagedBytes);
      this.#stagedBytes += take;
      copied += take;
      if (this.#stagedBytes === this.#staging.length) await this.#dispatch(true);
    }
    this.#streamBytes += bytes.length;
  }

  /** Hands the staged bytes to the medium and takes a free staging buffer (waiting for the oldest write when all are in flight). */
  async #dispatch(needNext: boolean): Promise<void> {
    if (this.#stagedBytes > 0) {
      const buffer = this.#staging;
      const done = this.#medium.write(buffer.subarray(0, this.#stagedBytes)).catch((error: unknown) => {
        this.#failure ??= error;
      });
      this.#inFlight.push({ buffer, done });
    }
    this.#stagedBytes = 0;
    if (!needNext) return;
    if (this.#inFlight.length < BACKUP_LIMITS.writeChunksInFlightMax) {
      this.#staging = this.#takeStaging();
    } else {
      const oldest = this.#inFlight.shift()!;
      await oldest.done;
      this.#staging = oldest.buffer;
    }
    this.#throwIfFailed();
  }

  #throwIfFailed(): void {
    if (this.#failure !== null) throw this.#failure;
  }
}
