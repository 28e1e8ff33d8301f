/**
 * Moves a backup's data section from the pool to the stream on a worker thread.
 *
 * Why: the data section is a read, a CRC-32 and a copy per extent, then a write to the medium.
 * Done on the event loop (one thread-pool read per physically contiguous piece, the CRC and the
 * staging copy on this thread), a full backup of 1 GiB kept this thread busy about 390 ms, and
 * waking a pool thread for each of its 16 reads per MiB took the CPU away from it at every step
 * (2 cores): the backup ran at 1.3–1.6× a plain `cp` on tmpfs. The worker reads each extent
 * straight into the place the stream puts it, in a ring of page-aligned chunks in shared memory,
 * computes the CRC and writes the frame header; this thread only hands sealed chunks to the
 * medium (as before: any MediumWriter, O_DIRECT for files) and digests their frame headers.
 * In the saved bench runs on tmpfs (bench/results), backup / cp went from 1.28–1.58 with the
 * event-loop version to 0.93–1.29 with this one (1.11–1.15 in the three runs of 2026-11-22 16–17h).
 *
 * The worker reads through positions this thread computes (Volume.diskLocation): valid because a
 * backup view's point-in-time extents are never rewritten or freed while the view lives, and the
 * job drops the view only after the run ends. Movers are kept between backups (a worker takes
 * tens of milliseconds to start, longer than a small incremental); one runs one backup at a time.
 */
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { assert } from '../lib/assert.js';
import { createAlignedSharedMemory } from '../lib/aligned-buffers.js';
import { ThinError } from '../lib/errors.js';
import { LIMITS } from '../lib/limits.js';
import { FRAME_HEADER_BYTES } from './format/layout.js';
import { BACKUP_LIMITS } from './format/limits.js';
import type { BackupStreamWriter } from './format/writer.js';
import {
  CONTROL, CONTROL_WORDS, ERROR_AREA_BYTES, RECORD_FIELDS, RESULT, RESULT_WORDS, RUN_STATE, type BatchMessage, type MoverMemory, type RunMessage,
} from './data-mover-protocol.js';

/** Chunks in the ring: 16 MiB of 1 MiB chunks, room for the largest extent (4 MiB) several times over. */
const SLOT_COUNT = 16;
/** Records per batch posted to the worker (32 bytes each); two batches are kept ahead of it. */
const RECORDS_PER_BATCH = 8192;
const BATCHES_AHEAD = 2;
/** Idle movers kept (a thread and 16 MiB each); more run at once only for concurrent backups. */
const IDLE_MOVERS_MAX = 2;
/**
 * A pread slower than this per byte waited for the disk, and the worker then reads ahead through
 * the thread pool (see data-mover-worker.ts): a page-cache copy of 64 KiB takes ~15 µs here, a
 * disk read of 64 KiB 100 µs or more; 1 ns per byte puts the line at 64 µs for 64 KiB.
 */
const SLOW_READ_NS_PER_BYTE = 1;

export interface MoveRequest {
  writer: BackupStreamWriter;
  /** The stream's extent size: every record but the last is this long. */
  extentBytes: number;
  recordCount: number;
  /** Fills `into` with RECORD_FIELDS numbers per record for records [first, first + count): source extent, fd (−1: zeros), disk position, length. */
  describe: (first: number, count: number, into: Float64Array) => void;
  signal: AbortSignal;
  /** Called as chunks reach the medium, with their bytes. */
  onProgress: (streamBytes: number) => void;
}

export class DataMover {
  readonly #worker: Worker;
  readonly #port: MessagePort;
  readonly #memory: MoverMemory;
  readonly #control: Int32Array;
  readonly #slots: Buffer[];
  readonly #headerLog: Buffer;
  readonly #headerCounts: Int32Array;
  /** Why the worker is gone (it never exits on its own); null while it runs. */
  #death: ThinError | null = null;
  #busy = false;
  /** The current run reached a final state and none of its chunk writes is running. */
  #runSettled = false;
  /** Numbers the runs, so that the worker drops what an earlier run left in its port. */
  #generation = 0;

  /** `slowReadNsPerByte`: see SLOW_READ_NS_PER_BYTE (tests set 0, so that every record but a few is read through the thread pool). */
  constructor(options: { slowReadNsPerByte?: number } = {}) {
    const slotBytes = BACKUP_LIMITS.writeChunkBytes;
    // Every record is a frame header and at least one byte; all but the source's last extent are whole.
    const headersPerSlotMax = Math.floor(slotBytes / (FRAME_HEADER_BYTES + LIMITS.extentBytesMin)) + 2;
    this.#memory = {
      ring: createAlignedSharedMemory(SLOT_COUNT * slotBytes),
      control: new SharedArrayBuffer(CONTROL_WORDS * 4),
      headerLog: new SharedArrayBuffer(SLOT_COUNT * headersPerSlotMax * FRAME_HEADER_BYTES),
      headerCounts: new SharedArrayBuffer(SLOT_COUNT * 4),
      result: new SharedArrayBuffer(RESULT_WORDS * 8),
      error: new SharedArrayBuffer(ERROR_AREA_BYTES),
      slotBytes, slotCount: SLOT_COUNT, headersPerSlotMax,
    };
    this.#control = new Int32Array(this.#memory.control);
    const ring = Buffer.from(this.#memory.ring);
    this.#slots = Array.from({ length: SLOT_COUNT }, (_, index) => ring.subarray(index * slotBytes, (index + 1) * slotBytes));
    this.#headerLog = Buffer.from(this.#memory.headerLog);
    this.#headerCounts = new Int32Array(this.#memory.headerCounts);
    const { port1, port2 } = new MessageChannel();
    this.#port = port1;
    this.#worker = new Worker(new URL('./data-mover-worker.js', import.meta.url), { workerData: { memory: this.#memory, port: port2, slowReadNsPerByte: options.slowReadNsPerByte ?? SLOW_READ_NS_PER_BYTE }, transferList: [port2] });
    this.#worker.unref();
    const die = (cause: unknown): void => {
      this.#death ??= new ThinError('INTERNAL', `the backup data mover thread ended: ${cause instanceof Error ? cause.message : String(cause)}`);
      // Wakes a run waiting for the worker (Atomics.notify wakes this thread's async waiters too).
      Atomics.add(this.#control, CONTROL.events, 1);
      Atomics.notify(this.#control, CONTROL.events);
    };
    this.#worker.once('error', die);
    this.#worker.once('exit', (code) => die(`exit code ${code}`));
  }

  /** Alive and not in a run: may take the next backup. */
  get reusable(): boolean {
    return this.#death === null && !this.#busy;
  }

  /**
   * Moves the whole data section of `writer`'s stream (which has written its header): every
   * record's frame goes to the medium, and the writer is left staging the tail, ready for finish().
   * Rejects (the writer is then failed) on a read or medium error, or when `signal` aborts; in
   * every case only after the worker has stopped (or died) and no chunk write of this run is running.
   */
  async move(request: MoveRequest): Promise<void> {
    assert(this.reusable, 'a data mover runs one backup at a time');
    this.#busy = true;
    this.#runSettled = false;
    this.#worker.ref(); // a run in progress keeps the process alive
    try {
      await this.#move(request);
    } finally {
      this.#worker.unref();
      // A run that did not reach a final state (the worker died) leaves the mover unusable.
      if (this.#runSettled) this.#busy = false;
      else await this.close();
    }
  }

  async #move(request: MoveRequest): Promise<void> {
    const { writer, extentBytes, signal } = request;
    // The header logs are sized for the smallest extent; the worker needs every chunk a record
    // touches free at once, with room to spare so that it runs ahead of the medium.
    assert(extentBytes >= LIMITS.extentBytesMin, 'the data mover handles extents of at least extentBytesMin');
    assert(Math.ceil((extentBytes + FRAME_HEADER_BYTES) / this.#memory.slotBytes) + 1 <= SLOT_COUNT / 2, 'a record spans at most half the ring');
    const { chunkBytes, stagedHead } = writer.beginExternalData();
    assert(chunkBytes === this.#memory.slotBytes, 'the writer stages chunks of the ring slot size');
    const control = this.#control;
    for (const word of [CONTROL.sealed, CONTROL.released, CONTROL.stop, CONTROL.batchesTaken, CONTROL.errorBytes]) Atomics.store(control, word, 0);
    Atomics.store(control, CONTROL.state, RUN_STATE.running);
    stagedHead.copy(this.#slots[0]!, 0);
    const generation = ++this.#generation;
    this.#post({ type: 'run', generation, startBytes: stagedHead.length, recordCount: request.recordCount } satisfies RunMessage);

    const run = new RunDriver(request, generation, {
      control, slots: this.#slots, headersOf: (slot) => this.#headersOf(slot), post: (message, transfer) => this.#post(message, transfer),
    });
    const onAbort = (): void => run.fail(signal.reason);
    signal.addEventListener('abort', onAbort);
    if (signal.aborted) onAbort();
    try {
      const state = await run.untilWorkerEnds(() => this.#death !== null);
      await run.writesSettled();
      if (this.#death) throw this.#death;
      this.#runSettled = true;
      if (state === RUN_STATE.failed) {
        const text = Buffer.from(this.#memory.error).subarray(0, Atomics.load(control, CONTROL.errorBytes)).toString('utf8');
        throw new ThinError('IO_ERROR', `backup read: ${text}`);
      }
      run.throwIfFailed();
      assert(state === RUN_STATE.done, 'the worker ends a run done, failed or stopped');
      const result = new Float64Array(this.#memory.result);
      const tailBytes = result[RESULT.tailBytes]!;
      const tailSlot = Atomics.load(control, CONTROL.sealed) % SLOT_COUNT;
      // An empty tail holds no frame header; its slot's log may still be an earlier chunk's.
      const tailHeaders = tailBytes === 0 ? Buffer.alloc(0) : this.#headersOf(tailSlot);
      writer.endExternalData(this.#slots[tailSlot]!.subarray(0, tailBytes), tailHeaders, result[RESULT.records]!, result[RESULT.dataBytes]!);
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** The frame headers logged for a slot (valid until the slot is released). */
  #headersOf(slot: number): Buffer {
    const first = slot * this.#memory.headersPerSlotMax;
    return this.#headerLog.subarray(first * FRAME_HEADER_BYTES, (first + this.#headerCounts[slot]!) * FRAME_HEADER_BYTES);
  }

  #post(message: unknown, transfer: ArrayBuffer[] = []): void {
    this.#port.postMessage(message, transfer);
    Atomics.add(this.#control, CONTROL.posted, 1);
    Atomics.notify(this.#control, CONTROL.posted);
  }

  async close(): Promise<void> {
    this.#death ??= new ThinError('INTERNAL', 'the backup data mover was closed');
    this.#port.close();
    await this.#worker.terminate();
  }
}

/** What a RunDriver uses of its mover. */
interface MoverAccess {
  control: Int32Array;
  slots: readonly Buffer[];
  headersOf(slot: number): Buffer;
  post(message: unknown, transfer?: ArrayBuffer[]): void;
}

/**
 * One run, from this thread's side: keeps BATCHES_AHEAD record batches posted ahead of the worker,
 * hands each chunk the worker seals to the stream writer, and frees slots, in order, as the medium
 * takes their chunks. The first failure (medium, cancel, a throw while describing) asks the worker
 * to stop; nothing more is dispatched or posted after it.
 */
class RunDriver {
  readonly #request: MoveRequest;
  readonly #generation: number;
  readonly #mover: MoverAccess;
  #failure: unknown = null;
  #recordsPosted = 0;
  #batchesPosted = 0;
  /** Chunks handed to the writer, and chunks released to the worker (a prefix of those written). */
  #dispatched = 0;
  #released = 0;
  /** Chunks the medium has, beyond the released prefix. */
  readonly #written = new Set<number>();
  readonly #writes = new Set<Promise<void>>();

  constructor(request: MoveRequest, generation: number, mover: MoverAccess) {
    this.#request = request;
    this.#generation = generation;
    this.#mover = mover;
  }

  fail(error: unknown): void {
    this.#failure ??= error;
    const { control } = this.#mover;
    Atomics.store(control, CONTROL.stop, 1);
    Atomics.notify(control, CONTROL.released); // a worker waiting for a slot
    Atomics.add(control, CONTROL.posted, 1); // a worker waiting for a batch
    Atomics.notify(control, CONTROL.posted);
  }

  throwIfFailed(): void {
    if (this.#failure !== null) throw this.#failure;
  }

  /** Serves the worker until its run reaches a final state (or `gone()`); returns that state. */
  async untilWorkerEnds(gone: () => boolean): Promise<number> {
    const { control } = this.#mover;
    for (;;) {
      const events = Atomics.load(control, CONTROL.events);
      const state = Atomics.load(control, CONTROL.state);
      if (gone()) return state;
      // A run that ended done has sealed every chunk: the last ones are dispatched here too.
      if (state === RUN_STATE.running || state === RUN_STATE.done) this.#serve(state === RUN_STATE.running);
      if (state !== RUN_STATE.running) return state;
      const wait = Atomics.waitAsync(control, CONTROL.events, events);
      if (wait.async) await wait.value;
    }
  }

  /** Every chunk write of this run has ended (the ring may then be reused). */
  async writesSettled(): Promise<void> {
    await Promise.all(this.#writes);
  }

  #serve(postMore: boolean): void {
    if (this.#failure !== null) return;
    try {
      for (const sealed = Atomics.load(this.#mover.control, CONTROL.sealed); this.#dispatched < sealed;) this.#dispatch(this.#dispatched++);
      if (postMore) this.#postBatches();
    } catch (error) {
      this.fail(error);
    }
  }

  #postBatches(): void {
    const { recordCount, describe } = this.#request;
    while (this.#recordsPosted < recordCount && this.#batchesPosted - Atomics.load(this.#mover.control, CONTROL.batchesTaken) < BATCHES_AHEAD) {
      const count = Math.min(RECORDS_PER_BATCH, recordCount - this.#recordsPosted);
      const records = new Float64Array(count * RECORD_FIELDS);
      describe(this.#recordsPosted, count, records);
      this.#mover.post({ type: 'batch', generation: this.#generation, records } satisfies BatchMessage, [records.buffer]);
      this.#recordsPosted += count;
      this.#batchesPosted++;
    }
  }

  #dispatch(chunk: number): void {
    const slot = chunk % SLOT_COUNT;
    const write = this.#request.writer.writeExternalChunk(this.#mover.slots[slot]!, this.#mover.headersOf(slot)).then(() => {
      this.#written.add(chunk);
      this.#release();
      this.#request.onProgress(this.#mover.slots[slot]!.length);
    }, (error: unknown) => this.fail(error));
    this.#writes.add(write);
    void write.then(() => this.#writes.delete(write));
  }

  /** Frees the slots of the written prefix: the worker reuses slots in order. */
  #release(): void {
    while (this.#written.delete(this.#released)) this.#released++;
    Atomics.store(this.#mover.control, CONTROL.released, this.#released);
    Atomics.notify(this.#mover.control, CONTROL.released);
  }
}

/** The movers of one array: an idle one takes the next backup, a new one starts when none is idle. */
export class DataMoverPool {
  readonly #idle: DataMover[] = [];
  readonly #all = new Set<DataMover>();
  #closed = false;

  /** Runs `work` with a mover, kept for the next backup afterwards unless its thread died. */
  async withMover<T>(work: (mover: DataMover) => Promise<T>): Promise<T> {
    if (this.#closed) throw new ThinError('BUSY', 'the array is closing: no backup can start now');
    let mover = this.#idle.pop();
    while (mover && !mover.reusable) {
      this.#all.delete(mover); // its thread died while idle
      mover = this.#idle.pop();
    }
    mover ??= new DataMover();
    this.#all.add(mover);
    try {
      return await work(mover);
    } finally {
      if (mover.reusable && this.#idle.length < IDLE_MOVERS_MAX) {
        this.#idle.push(mover);
      } else {
        this.#all.delete(mover);
        if (mover.reusable) await mover.close(); // beyond what concurrent backups usually need
      }
    }
  }

  /** Starts a mover ahead of the first backup (a worker takes ~80 ms to start: the first backup after a daemon start waited 83 ms for it). */
  prestart(): void {
    if (this.#all.size > 0 || this.#closed) return;
    const mover = new DataMover();
    this.#all.add(mover);
    this.#idle.push(mover);
  }

  /** Ends every mover's thread (at array close, after the jobs have stopped). */
  async close(): Promise<void> {
    this.#closed = true;
    this.#idle.length = 0;
    const movers = [...this.#all];
    this.#all.clear();
    await Promise.all(movers.map((mover) => mover.close()));
  }
}
