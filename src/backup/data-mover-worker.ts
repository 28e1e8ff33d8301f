/**
 * The data mover's thread (see src/backup/data-mover.ts for why it exists). It waits for a run,
 * then for each record: reads its extent from the pool disk straight into the ring, at the place
 * the stream puts the payload, computes the CRC-32, writes the DATA frame header before it, and
 * seals each chunk once every byte in it is final.
 *
 * Reads: a plain pread while they are fast (the extent is in the page cache, or the pool is in
 * memory: a thread-pool read would only add two thread switches per extent: 1.3–1.4× the time
 * of a full backup on tmpfs). Preads that wait for the disk (SLOW_READS_OF_8 of the last 8) switch the
 * next READS_AHEAD_SPAN records to reads through the thread pool, READS_IN_FLIGHT at once: one
 * read at a time from a cold, fragmented pool goes as slowly as the disk's latency allows. A full
 * backup of 1 GiB scattered over an ext4 pool, page cache dropped: 2.1–2.6 s before, 1.8–2.0 s
 * now (0.7–0.9 s warm; this virtual disk reads 64 KiB at random at 0.62 GB/s one at a time, at
 * 1.07 GB/s eight at a time). Records still complete in order: the CRC, the frame header and the
 * sealing happen as the oldest read ends.
 */
import fs from 'node:fs';
import { receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { FRAME_HEADER_BYTES, TAG, crc32, renderFrameHeader } from './format/layout.js';
import { CONTROL, RECORD_FIELDS, RESULT, RUN_STATE, type BatchMessage, type MoverMemory, type RunMessage } from './data-mover-protocol.js';

const { memory, port, slowReadNsPerByte } = workerData as { memory: MoverMemory; port: MessagePort; slowReadNsPerByte: number };
const control = new Int32Array(memory.control);
const ring = Buffer.from(memory.ring);
const headerLog = Buffer.from(memory.headerLog);
const headerCounts = new Int32Array(memory.headerCounts);
const result = new Float64Array(memory.result);
const errorArea = Buffer.from(memory.error);
const { slotBytes, slotCount, headersPerSlotMax } = memory;
const frameHeader = Buffer.alloc(FRAME_HEADER_BYTES);

/** Reads through the thread pool at once, when the disk is being waited for. */
const READS_IN_FLIGHT = 8;
/** Records read through the thread pool after slow preads, before preads are tried again. */
const READS_AHEAD_SPAN = 1024;
/**
 * Slow preads among the last 8 that mean the disk is being waited for. One is not enough: on a
 * busy 2-core machine a pread from the page cache is now and then descheduled for 0.1–2 ms, and
 * a single slow one sent ~40% of a warm backup through the thread pool. With 6 of 8, a busy
 * period on tmpfs still sends a few spans there (0–9 of 16 per full backup; 0.986× the time of
 * preads only, paired over 10). Not "in a row" either: in a cold pool some preads still find
 * their pages (read ahead with a neighbour's), and 4 slow in a row left a quarter of a cold
 * backup at one read at a time.
 */
const SLOW_READS_OF_8 = 6;

/** Thrown out of a run when the job asked it to stop. */
class Stopped extends Error {}

function stopRequested(): boolean {
  return Atomics.load(control, CONTROL.stop) === 1;
}

/**
 * The next message from the job, waiting for it (the job bumps CONTROL.posted after each post).
 * In a run, a stop request ends the wait (Stopped); between runs nothing is asked to stop.
 * It blocks the thread: only call it with no read pending (a read's completion needs the event
 * loop, and an event loop with nothing but an asynchronous wait on it would let the thread exit).
 */
function nextMessage(inRun: boolean): unknown {
  for (;;) {
    // Read the counter before looking for a message: a post after the look moves it, so the wait
    // below returns at once. (It also moves without a message, to wake a run for a stop.)
    const posted = Atomics.load(control, CONTROL.posted);
    const received = receiveMessageOnPort(port);
    if (received) return received.message;
    if (inRun && stopRequested()) throw new Stopped();
    Atomics.wait(control, CONTROL.posted, posted);
  }
}

function signalJob(): void {
  Atomics.add(control, CONTROL.events, 1);
  Atomics.notify(control, CONTROL.events);
}

const slots = Array.from({ length: slotCount }, (_, index) => ring.subarray(index * slotBytes, (index + 1) * slotBytes));

function slotOf(chunk: number): Buffer {
  return slots[chunk % slotCount]!;
}

/** A record whose payload is being read through the thread pool; it completes (CRC, frame header, sealing) in order. */
interface PendingRecord {
  sourceExtent: number;
  headerAt: number;
  lengthBytes: number;
  /** The ring pieces the payload is read into. */
  pieces: Buffer[];
  /** Settles when every byte of the payload is in the ring (rejects with the read's error). */
  read: Promise<void>;
}

/** Runs one backup's data section; the stream offset `position` counts from the start of slot 0. */
class Run {
  /** Where the next record's frame header goes. */
  #position: number;
  /** Chunks whose slot was emptied for this run (their header logs reset). */
  #opened = 1;
  #sealed = 0;
  #records = 0;
  #dataBytes = 0;
  /** Records being read through the thread pool, oldest first; they complete in this order. */
  readonly #pending: PendingRecord[] = [];
  /** Records left to read through the thread pool before a pread is tried again (0: preads). */
  #aheadLeft = 0;
  /** The last 8 preads, newest in bit 0: 1 for a slow one. */
  #slowHistory = 0;

  readonly #generation: number;

  constructor(message: RunMessage) {
    this.#generation = message.generation;
    this.#position = message.startBytes;
    headerCounts[0] = 0;
  }

  async move(recordCount: number): Promise<void> {
    try {
      for (let moved = 0; moved < recordCount;) {
        const batch = await this.#nextBatch();
        Atomics.add(control, CONTROL.batchesTaken, 1);
        signalJob();
        for (let at = 0; at < batch.length; at += RECORD_FIELDS, moved++) {
          if (stopRequested()) throw new Stopped();
          // The usual case stays synchronous: no promise per record.
          if (this.#aheadLeft === 0 && this.#pending.length === 0) this.#moveNow(batch[at]!, batch[at + 1]!, batch[at + 2]!, batch[at + 3]!);
          else await this.#moveAhead(batch[at]!, batch[at + 1]!, batch[at + 2]!, batch[at + 3]!);
        }
      }
      await this.#completeAll();
    } finally {
      // Never end a run with a read still writing into the ring: the next run reuses it.
      await Promise.allSettled(this.#pending.map((pending) => pending.read));
    }
    result[RESULT.tailBytes] = this.#position - this.#sealed * slotBytes;
    result[RESULT.records] = this.#records;
    result[RESULT.dataBytes] = this.#dataBytes;
  }

  /** The run's next batch; batches an earlier, stopped run left in the port are dropped. */
  async #nextBatch(): Promise<Float64Array> {
    for (;;) {
      // With reads pending, only look; to wait, complete them first (nextMessage blocks).
      const message = (this.#pending.length > 0 ? receiveMessageOnPort(port)?.message : nextMessage(true)) as BatchMessage | RunMessage | undefined;
      if (message === undefined) await this.#completeAll();
      else if (message.type === 'batch' && message.generation === this.#generation) return message.records;
    }
  }

  /**
   * Nothing pending: reads the record with preads and completes it at once. The hot path of a warm
   * backup (the worker bounds a full backup on tmpfs): no allocation, the CRC of each piece right
   * after its read, while it is in the cache.
   */
  #moveNow(sourceExtent: number, fd: number, diskPosition: number, lengthBytes: number): void {
    const headerAt = this.#reserve(lengthBytes);
    let crc = 0;
    let readMs = 0;
    for (let at = headerAt + FRAME_HEADER_BYTES, done = 0; done < lengthBytes;) {
      const chunk = Math.floor(at / slotBytes);
      const offset = at - chunk * slotBytes;
      const piece = slotOf(chunk).subarray(offset, offset + Math.min(lengthBytes - done, slotBytes - offset));
      if (fd < 0) {
        piece.fill(0);
      } else {
        const startedMs = performance.now();
        readFully(fd, piece, diskPosition + done);
        readMs += performance.now() - startedMs;
      }
      crc = crc32(piece, crc);
      at += piece.length;
      done += piece.length;
    }
    if (fd >= 0) this.#noteRead(readMs * 1e6 > slowReadNsPerByte * lengthBytes);
    this.#finish(sourceExtent, headerAt, lengthBytes, crc);
  }

  /** One more pread, slow or not: enough slow ones among the last 8 start reading ahead. */
  #noteRead(slow: boolean): void {
    this.#slowHistory = ((this.#slowHistory << 1) | (slow ? 1 : 0)) & 0xff;
    if (bitCount(this.#slowHistory) >= SLOW_READS_OF_8) {
      this.#slowHistory = 0;
      this.#aheadLeft = READS_AHEAD_SPAN;
    }
  }

  /** Reading ahead: starts the record's read through the thread pool (or, once the span is over, goes back to preads). */
  async #moveAhead(sourceExtent: number, fd: number, diskPosition: number, lengthBytes: number): Promise<void> {
    if (this.#aheadLeft === 0) {
      await this.#completeAll();
      this.#moveNow(sourceExtent, fd, diskPosition, lengthBytes);
      return;
    }
    this.#aheadLeft--;
    while (this.#pending.length >= READS_IN_FLIGHT) await this.#completeOldest();
    // Waiting for a free slot blocks the thread: complete what is pending first (the chunks it
    // seals are what the job must write before it frees a slot).
    if (this.#mustWaitToOpen(this.#position + FRAME_HEADER_BYTES + lengthBytes)) await this.#completeAll();
    const headerAt = this.#reserve(lengthBytes);
    const pieces = payloadPieces(headerAt, lengthBytes);
    let read: Promise<void>;
    if (fd < 0) {
      for (const piece of pieces) piece.fill(0);
      read = Promise.resolve();
    } else {
      read = readPiecesAsync(fd, pieces, diskPosition);
      read.catch(() => undefined); // its failure is thrown by #completeOldest
    }
    this.#pending.push({ sourceExtent, headerAt, lengthBytes, pieces, read });
  }

  /** Reserves the stream bytes of the next record (its frame header, then its payload), opening the chunks they need; returns where its header goes. */
  #reserve(lengthBytes: number): number {
    const headerAt = this.#position;
    const end = headerAt + FRAME_HEADER_BYTES + lengthBytes;
    this.#open(Math.floor((end - 1) / slotBytes));
    this.#position = end;
    return headerAt;
  }

  async #completeAll(): Promise<void> {
    while (this.#pending.length > 0) await this.#completeOldest();
  }

  async #completeOldest(): Promise<void> {
    await this.#pending[0]!.read;
    const { sourceExtent, headerAt, lengthBytes, pieces } = this.#pending.shift()!;
    let crc = 0;
    for (const piece of pieces) crc = crc32(piece, crc);
    this.#finish(sourceExtent, headerAt, lengthBytes, crc);
  }

  /** A record's payload is in the ring with this CRC: its frame header, and the chunks it completes. */
  #finish(sourceExtent: number, headerAt: number, lengthBytes: number, crc: number): void {
    renderFrameHeader(frameHeader, 0, TAG.data, lengthBytes, this.#records, sourceExtent, crc);
    this.#write(headerAt, frameHeader);
    const logIndex = Math.floor(headerAt / slotBytes) % slotCount;
    const count = headerCounts[logIndex]!;
    if (count >= headersPerSlotMax) throw new Error(`data mover: more than ${headersPerSlotMax} frame headers start in one chunk`);
    frameHeader.copy(headerLog, (logIndex * headersPerSlotMax + count) * FRAME_HEADER_BYTES);
    headerCounts[logIndex] = count + 1;
    this.#records++;
    this.#dataBytes += lengthBytes;
    const complete = Math.floor((headerAt + FRAME_HEADER_BYTES + lengthBytes) / slotBytes);
    if (complete > this.#sealed) {
      this.#sealed = complete;
      Atomics.store(control, CONTROL.sealed, complete);
      signalJob();
    }
  }

  /** Whether the chunks up to stream byte `end` need a slot the job has not freed yet. */
  #mustWaitToOpen(end: number): boolean {
    return Math.floor((end - 1) / slotBytes) - Atomics.load(control, CONTROL.released) >= slotCount;
  }

  /**
   * Waits until every chunk up to `lastChunk` has a free slot, and empties the header logs of new
   * ones. The wait blocks the thread: only with nothing pending (see nextMessage).
   */
  #open(lastChunk: number): void {
    while (this.#opened <= lastChunk) {
      for (;;) {
        const released = Atomics.load(control, CONTROL.released);
        if (this.#opened - released < slotCount) break;
        if (stopRequested()) throw new Stopped();
        if (this.#pending.length > 0) throw new Error('data mover: waiting for a slot with reads pending');
        Atomics.wait(control, CONTROL.released, released);
      }
      headerCounts[this.#opened % slotCount] = 0;
      this.#opened++;
    }
  }

  /** Copies bytes to a stream position, across a chunk boundary if need be. */
  #write(position: number, bytes: Buffer): void {
    for (let done = 0; done < bytes.length;) {
      const chunk = Math.floor((position + done) / slotBytes);
      const offset = position + done - chunk * slotBytes;
      done += bytes.copy(slotOf(chunk), offset, done);
    }
  }
}

function bitCount(byte: number): number {
  let count = 0;
  for (let bits = byte; bits !== 0; bits &= bits - 1) count++;
  return count;
}

/** The ring pieces that hold the payload of the record whose frame header is at `headerAt`. */
function payloadPieces(headerAt: number, lengthBytes: number): Buffer[] {
  const pieces: Buffer[] = [];
  for (let at = headerAt + FRAME_HEADER_BYTES, placed = 0; placed < lengthBytes;) {
    const chunk = Math.floor(at / slotBytes);
    const offset = at - chunk * slotBytes;
    const piece = slotOf(chunk).subarray(offset, offset + Math.min(lengthBytes - placed, slotBytes - offset));
    pieces.push(piece);
    at += piece.length;
    placed += piece.length;
  }
  return pieces;
}

function readFully(fd: number, into: Buffer, position: number): void {
  for (let done = 0; done < into.length;) {
    const bytes = fs.readSync(fd, into, done, into.length - done, position + done);
    if (bytes === 0) throw new Error(`short read from a pool disk at byte ${position + done}`);
    done += bytes;
  }
}

async function readPiecesAsync(fd: number, pieces: readonly Buffer[], diskPosition: number): Promise<void> {
  let position = diskPosition;
  for (const piece of pieces) {
    for (let done = 0; done < piece.length;) {
      const bytes = await new Promise<number>((resolve, reject) => {
        fs.read(fd, piece, done, piece.length - done, position + done, (error, count) => (error ? reject(error) : resolve(count)));
      });
      if (bytes === 0) throw new Error(`short read from a pool disk at byte ${position + done}`);
      done += bytes;
    }
    position += piece.length;
  }
}

function fail(error: unknown): void {
  const text = error instanceof Error ? `${(error as NodeJS.ErrnoException).code ? `${(error as NodeJS.ErrnoException).code}: ` : ''}${error.message}` : String(error);
  const written = errorArea.write(text.slice(0, 1000), 0, 'utf8');
  Atomics.store(control, CONTROL.errorBytes, written);
}

for (;;) {
  const message = nextMessage(false) as RunMessage | BatchMessage;
  if (message.type !== 'run') continue; // a stopped run's leftover batch
  const run = new Run(message);
  let state: number = RUN_STATE.done;
  try {
    await run.move(message.recordCount);
  } catch (error) {
    state = error instanceof Stopped ? RUN_STATE.stopped : RUN_STATE.failed;
    if (state === RUN_STATE.failed) fail(error);
  }
  Atomics.store(control, CONTROL.state, state);
  signalJob();
}
