import { assert } from './assert.js';

/**
 * Write-behind for long sequential writers: one sync starts in the background (never two at once)
 * after `firstBytes` written, then after twice that, and so on up to every `everyBytes`, so the
 * disk writes overlap the writing and the durable sync at the end finds little left. File media
 * use it for backups (their fdatasync), restores for the pool. It only gives the disk a head
 * start: the writer's own final sync is still what counts.
 *
 * Why the interval grows: a small write (an incremental of 20 MiB) never reached a fixed 64 MiB
 * interval and paid its whole fsync at the end (15–20 ms here); a fixed small interval would
 * make a long write pay one more journal commit per few MiB.
 */
export class WriteBehind {
  readonly #sync: () => Promise<void>;
  readonly #everyBytes: number;
  #bytesSinceSync = 0;
  /** Bytes after which the next sync starts: firstBytes, doubling up to everyBytes. */
  #intervalBytes: number;
  #running: Promise<void> | undefined;

  /** `sync` reports its own failures (the final sync will meet the same fault); a rejection is ignored here. */
  constructor(sync: () => Promise<void>, everyBytes: number, firstBytes = everyBytes) {
    assert(firstBytes > 0 && firstBytes <= everyBytes, 'write-behind intervals: 0 < first ≤ every');
    this.#sync = sync;
    this.#everyBytes = everyBytes;
    this.#intervalBytes = firstBytes;
  }

  /** `bytes` more were written; starts a sync when enough have been since the last one started. */
  note(bytes: number): void {
    this.#bytesSinceSync += bytes;
    if (this.#running || this.#bytesSinceSync < this.#intervalBytes) return;
    this.#bytesSinceSync = 0;
    this.#intervalBytes = Math.min(this.#everyBytes, 2 * this.#intervalBytes);
    this.#running = this.#sync()
      .catch(() => undefined)
      .finally(() => (this.#running = undefined));
  }

  /** Resolves once no background sync runs (before the descriptor closes, or the writer reports done). */
  async settled(): Promise<void> {
    await this.#running;
  }
}
