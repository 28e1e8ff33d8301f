/**
 * Reads a backup's runs, in order, choosing for each read between a synchronous pread and the
 * thread pool — because which one is right depends on where the data is, and only a read says.
 *
 * - In the page cache (data written recently, a small incremental): a synchronous 64 KiB–1 MiB
 *   read is a memory copy of 10–300 µs. The thread pool adds a hop of 30–100 µs per read on this
 *   2-core machine (measured: an incremental of 328 scattered extents spent 20–30 ms only
 *   dispatching its reads), and the backup's own fixed costs are what its time is judged by.
 * - On disk: a synchronous read stalls the event loop, so every NBD connection, for the whole
 *   disk latency. Reads then go to the thread pool, `inFlightMax` ahead, where they also overlap.
 *
 * - Large runs (over `syncRunBytesMax`; a full backup's are 1 MiB) always go to the thread pool, read ahead: there the copy out
 *   of the page cache runs on the other core while this thread checksums and stages the previous
 *   run (synchronous 1 MiB reads made a full backup 0.68 → 0.84 s on tmpfs).
 *
 * So small runs start synchronous; `slowReadsToSwitch` of them in a row taking longer than
 * `syncBudgetMs` are taken as cache misses, and the next `threadPoolRunsAfterMiss` runs are read on
 * the thread pool; then a synchronous read probes again. In a row, because one slow read alone is
 * as often this VM taking the CPU away for a few ms (seen on tmpfs, where nothing can miss), and a
 * switch for nothing cost an incremental 15 ms. The cost bound: a host sees at most that many
 * disk reads' stall per threadPoolRunsAfterMiss runs.
 */
import { assert } from '../lib/assert.js';

export type ReadIo = 'sync' | 'thread-pool';

export interface RunReaderOptions {
  /** Thread-pool reads in flight at once, read ahead of the caller. */
  inFlightMax: number;
  /** A synchronous read longer than this came from the disk (or the thread lost the CPU meanwhile). */
  syncBudgetMs: number;
  /** Slow synchronous reads in a row that send the next runs to the thread pool. */
  slowReadsToSwitch: number;
  /** Runs read on the thread pool after a synchronous read missed, before the next probe. */
  threadPoolRunsAfterMiss: number;
  /** Runs of at most this many bytes may be read synchronously; larger ones always go to the thread pool. */
  syncRunBytesMax: number;
}

export class RunReader<Run> {
  readonly #runs: readonly Run[];
  readonly #read: (run: Run, io: ReadIo) => Promise<Buffer>;
  readonly #bytesOf: (run: Run) => number;
  readonly #options: RunReaderOptions;
  /** Thread-pool reads already started, in run order. */
  readonly #ahead: Array<Promise<Buffer>> = [];
  #nextToStart = 0;
  /** Runs still to be started on the thread pool before a synchronous probe. */
  #threadPoolRunsLeft = 0;
  /** Synchronous reads in a row that took longer than syncBudgetMs. */
  #slowInARow = 0;
  /** Counters, for the job's log line. */
  syncReads = 0;
  threadPoolReads = 0;

  constructor(runs: readonly Run[], bytesOf: (run: Run) => number, read: (run: Run, io: ReadIo) => Promise<Buffer>, options: RunReaderOptions) {
    assert(options.inFlightMax >= 1 && options.threadPoolRunsAfterMiss >= 1 && options.slowReadsToSwitch >= 1, 'RunReader needs room for one read ahead');
    this.#runs = runs;
    this.#read = read;
    this.#bytesOf = bytesOf;
    this.#options = options;
    this.#startAhead();
  }

  /** The next run's data, or undefined after the last: await it before the next call. A failed read rejects here, in order. */
  next(): Promise<Buffer> | undefined {
    // Refilled here, not after the shift below: the run handed out is in flight until the caller
    // has it, and the caller asks for the next one only then, so at most inFlightMax run at once.
    this.#startAhead();
    const started = this.#ahead.shift();
    if (started) return started;
    if (this.#nextToStart >= this.#runs.length) return undefined;
    const run = this.#runs[this.#nextToStart++]!;
    const t0 = performance.now();
    const data = this.#read(run, 'sync');
    this.syncReads++;
    this.#slowInARow = performance.now() - t0 > this.#options.syncBudgetMs ? this.#slowInARow + 1 : 0;
    if (this.#slowInARow >= this.#options.slowReadsToSwitch) {
      this.#slowInARow = 0;
      this.#threadPoolRunsLeft = this.#options.threadPoolRunsAfterMiss;
    }
    this.#startAhead();
    return data;
  }

  /** Waits for reads still in flight (after a failure, before their buffers' owner goes away). */
  async settle(): Promise<void> {
    await Promise.allSettled(this.#ahead);
  }

  /** Starts thread-pool reads of the next runs while they are large or a miss was seen, up to inFlightMax. */
  #startAhead(): void {
    while (this.#ahead.length < this.#options.inFlightMax && this.#nextToStart < this.#runs.length) {
      const run = this.#runs[this.#nextToStart]!;
      const large = this.#bytesOf(run) > this.#options.syncRunBytesMax;
      if (!large && this.#threadPoolRunsLeft === 0) return;
      if (!large) this.#threadPoolRunsLeft--;
      this.#nextToStart++;
      const read = this.#read(run, 'thread-pool');
      read.catch(() => undefined); // awaited in order by next(); a failure surfaces there
      this.#ahead.push(read);
      this.threadPoolReads++;
    }
  }
}
