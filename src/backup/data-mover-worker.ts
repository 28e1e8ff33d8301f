/**
 * The data mover's thread (see src/backup/data-mover.ts for why it exists). It waits for a run,
 * then for each record: reads its extent from the pool disk straight into the ring, at the place
 * the stream puts the payload, computes the CRC-32, writes the DATA frame header before it, and
 * seals each chunk once every byte in it is final. It blocks only itself: the reads are plain
 * preads, the waits are Atomics.wait on the shared control words.
 */
import fs from 'node:fs';
import { receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { FRAME_HEADER_BYTES, TAG, crc32, renderFrameHeader } from './format/layout.js';
import { CONTROL, RECORD_FIELDS, RESULT, RUN_STATE, type BatchMessage, type MoverMemory, type RunMessage } from './data-mover-protocol.js';

const { memory, port } = workerData as { memory: MoverMemory; port: MessagePort };
const control = new Int32Array(memory.control);
const ring = Buffer.from(memory.ring);
const headerLog = Buffer.from(memory.headerLog);
const headerCounts = new Int32Array(memory.headerCounts);
const result = new Float64Array(memory.result);
const errorArea = Buffer.from(memory.error);
const { slotBytes, slotCount, headersPerSlotMax } = memory;
const frameHeader = Buffer.alloc(FRAME_HEADER_BYTES);

/** Thrown out of a run when the job asked it to stop. */
class Stopped extends Error {}

/**
 * The next message from the job, waiting for it (the job bumps CONTROL.posted after each post).
 * In a run, a stop request ends the wait (Stopped); between runs nothing is asked to stop.
 */
function nextMessage(inRun: boolean): unknown {
  for (;;) {
    // Read the counter before looking for a message: a post after the look moves it, so the wait
    // below returns at once. (It also moves without a message, to wake a run for a stop.)
    const posted = Atomics.load(control, CONTROL.posted);
    const received = receiveMessageOnPort(port);
    if (received) return received.message;
    if (inRun && Atomics.load(control, CONTROL.stop) === 1) throw new Stopped();
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

/** Runs one backup's data section; the stream offset `position` counts from the start of slot 0. */
class Run {
  #position: number;
  /** Chunks whose slot was emptied for this run (their header logs reset). */
  #opened = 1;
  #sealed = 0;
  #records = 0;
  #dataBytes = 0;

  readonly #generation: number;

  constructor(message: RunMessage) {
    this.#generation = message.generation;
    this.#position = message.startBytes;
    headerCounts[0] = 0;
  }

  /** The run's next batch; batches an earlier, stopped run left in the port are dropped. */
  #nextBatch(): Float64Array {
    for (;;) {
      const message = nextMessage(true) as BatchMessage | RunMessage;
      if (message.type === 'batch' && message.generation === this.#generation) return message.records;
    }
  }

  move(recordCount: number): void {
    while (this.#records < recordCount) {
      const batch = this.#nextBatch();
      Atomics.add(control, CONTROL.batchesTaken, 1);
      signalJob();
      for (let at = 0; at < batch.length; at += RECORD_FIELDS) {
        if (Atomics.load(control, CONTROL.stop) === 1) throw new Stopped();
        this.#moveRecord(batch[at]!, batch[at + 1]!, batch[at + 2]!, batch[at + 3]!);
      }
    }
    result[RESULT.tailBytes] = this.#position - this.#sealed * slotBytes;
    result[RESULT.records] = this.#records;
    result[RESULT.dataBytes] = this.#dataBytes;
  }

  #moveRecord(sourceExtent: number, fd: number, diskPosition: number, lengthBytes: number): void {
    const headerAt = this.#position;
    const end = headerAt + FRAME_HEADER_BYTES + lengthBytes;
    this.#open(Math.floor((end - 1) / slotBytes));
    let crc = 0;
    for (let at = headerAt + FRAME_HEADER_BYTES, read = 0; read < lengthBytes;) {
      const chunk = Math.floor(at / slotBytes);
      const offset = at - chunk * slotBytes;
      const piece = slotOf(chunk).subarray(offset, offset + Math.min(lengthBytes - read, slotBytes - offset));
      if (fd < 0) piece.fill(0);
      else readFully(fd, piece, diskPosition + read);
      crc = crc32(piece, crc);
      at += piece.length;
      read += piece.length;
    }
    renderFrameHeader(frameHeader, 0, TAG.data, lengthBytes, this.#records, sourceExtent, crc);
    this.#place(headerAt, frameHeader);
    const logIndex = Math.floor(headerAt / slotBytes) % slotCount;
    const count = headerCounts[logIndex]!;
    if (count >= headersPerSlotMax) throw new Error(`data mover: more than ${headersPerSlotMax} frame headers start in one chunk`);
    frameHeader.copy(headerLog, (logIndex * headersPerSlotMax + count) * FRAME_HEADER_BYTES);
    headerCounts[logIndex] = count + 1;
    this.#position = end;
    this.#records++;
    this.#dataBytes += lengthBytes;
    const complete = Math.floor(end / slotBytes);
    if (complete > this.#sealed) {
      this.#sealed = complete;
      Atomics.store(control, CONTROL.sealed, complete);
      signalJob();
    }
  }

  /** Waits until every chunk up to `lastChunk` has a free slot, and empties the header logs of new ones. */
  #open(lastChunk: number): void {
    while (this.#opened <= lastChunk) {
      for (;;) {
        const released = Atomics.load(control, CONTROL.released);
        if (this.#opened - released < slotCount) break;
        if (Atomics.load(control, CONTROL.stop) === 1) throw new Stopped();
        Atomics.wait(control, CONTROL.released, released);
      }
      headerCounts[this.#opened % slotCount] = 0;
      this.#opened++;
    }
  }

  /** Copies bytes to a stream position, across a chunk boundary if need be. */
  #place(position: number, bytes: Buffer): void {
    for (let done = 0; done < bytes.length;) {
      const chunk = Math.floor((position + done) / slotBytes);
      const offset = position + done - chunk * slotBytes;
      done += bytes.copy(slotOf(chunk), offset, done);
    }
  }
}

function readFully(fd: number, into: Buffer, position: number): void {
  for (let done = 0; done < into.length;) {
    const bytes = fs.readSync(fd, into, done, into.length - done, position + done);
    if (bytes === 0) throw new Error(`short read from a pool disk at byte ${position + done}`);
    done += bytes;
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
    run.move(message.recordCount);
  } catch (error) {
    state = error instanceof Stopped ? RUN_STATE.stopped : RUN_STATE.failed;
    if (state === RUN_STATE.failed) fail(error);
  }
  Atomics.store(control, CONTROL.state, state);
  signalJob();
}
