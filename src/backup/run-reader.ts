/**
 * Reads a backup's runs, in order, choosing for each read between a synchronous pread and the
 * thread pool — because which one is right depends on where the data is, and only a read says.
 *
 * - Small runs in the page cache (data written recently, a small incremental's scattered
 *   extents): a synchronous read of up to `syncRunBytesMax` is a memory copy of 10–60 µs, and the
 *   thread pool adds a hop of 30–100 µs per read on this 2-core machine (measured: an incremental
 *   of 328 scattered extents spent 20–30 ms only dispatching its reads).
 * - Small runs on disk: a synchronous read stalls the event loop, so every NBD connection, for
 *   the whole disk latency. Reads then go to the thread pool, `inFlightMax` ahead, and overlap.
 * - Large runs (a full backup's are 1 MiB) always go to the thread pool, read ahead: the copy out
 *   of the page cache then runs on the other core while this thread checksums and stages the
 *   previous run (synchronous 1 MiB reads were no faster on tmpfs, and stall on a miss).
 *
 * So small runs start synchronous. When `slowReadsToSwitch` of the last `slowReadsWindow`
 * synchronous reads took longer than `syncBudgetMs`, they were cache misses: the next
 * `threadPoolRunsAfterMiss` runs are read on the thread pool, then a synchronous read probes again.
 * Not one slow read: a lone one is as often this VM taking the CPU away for a few ms (seen on
 * tmpfs, where nothing can miss), and a switch for nothing cost an incremental 15 ms. Not in a
 * row: hits and misses alternate when the cache holds part of the data. The bound: between two
 * switches, at most slowReadsToSwitch − 1 of every slowReadsWindow synchronous reads stall a host.
 */
import { assert } from '../lib/assert.js';

export type ReadIo = 'sync' | 'thread-pool';

export interface RunReaderOptions {
  /** Thread-pool reads in flight at once, read ahead of the caller. */
  inFlightMax: number;
  /** A synchronous read longer than this came from the disk (or the thread lost the CPU meanwhile). */
  syncBudgetMs: number;
  /** Slow synchronous reads among the last slowReadsWindow that send the next runs to the thread pool. */
  slowReadsToSwitch: number;
  slowReadsWindow: number;
  /** Runs read on the thread pool after the switch, before the next synchronous probe. */
  threadPoolRunsAfterMiss: number;
  /** Runs of at most this many bytes may be read synchronously; larger ones always go to the thread pool. */
  syncRunBytesMax: number;
  /** The clock that times synchronous reads (tests pass a virtual one). */
  nowMs?: () => number;
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
  /** Whether each of the last slowReadsWindow synchronous reads took longer than syncBudgetMs, oldest first. */
  #recentSlow: boolean[] = [];
  readonly #nowMs: () => number;
  #syncReads = 0;
  #threadPoolReads = 0;

  constructor(runs: readonly Run[], bytesOf: (run: Run) => number, read: (run: Run, io: ReadIo) => Promise<Buffer>, options: RunReaderOptions) {
    assert(options.inFlightMax >= 1 && options.threadPoolRunsAfterMiss >= 1, 'RunReader needs room for one read ahead');
    assert(options.slowReadsToSwitch >= 1 && options.slowReadsToSwitch <= options.slowReadsWindow, 'RunReader: 1 ≤ slowReadsToSwitch ≤ slowReadsWindow');
    this.#nowMs = options.nowMs ?? (() => performance.now());
    this.#runs = runs;
    this.#read = read;
    this.#bytesOf = bytesOf;
    this.#options = options;
    this.#startAhead();
  }

  /** Reads done each way so far, for the job's log line. */
  get syncReads(): number {
    return this.#syncReads;
  }

  get threadPoolReads(): number {
    return this.#threadPoolReads;
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
    const t0 = this.#nowMs();
    const data = this.#read(run, 'sync');
    this.#syncReads++;
    this.#noteSyncRead(this.#nowMs() - t0 > this.#options.syncBudgetMs);
    this.#startAhead();
    return data;
  }

  #noteSyncRead(slow: boolean): void {
    this.#recentSlow.push(slow);
    if (this.#recentSlow.length > this.#options.slowReadsWindow) this.#recentSlow.shift();
    if (this.#recentSlow.filter(Boolean).length < this.#options.slowReadsToSwitch) return;
    this.#recentSlow = [];
    this.#threadPoolRunsLeft = this.#options.threadPoolRunsAfterMiss;
  }

  /** Waits for the thread-pool reads started and not handed out (after a failure, before the view they read goes away). */
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
      this.#threadPoolReads++;
    }
  }
}
