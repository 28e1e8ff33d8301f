/**
 * Transfer rate over a moving window: the bytes done in the last LIMITS.jobRateWindowMs divided
 * by the time they took. A window, not the average since the start, so the rate follows a job
 * that speeds up or slows down (a copy competing with host I/O) and falls to 0 when it stalls.
 */
import { assert } from '../lib/assert.js';

interface Sample {
  atMs: number;
  doneBytes: number;
}

/** Samples closer together than this are merged: bounds memory to window / spacing samples. */
const SAMPLE_SPACING_MS = 250;
/** Below this much elapsed time a rate is noise; report 0 until there is more. */
const ELAPSED_MS_MIN = 200;

export class RateMeter {
  // Set at creation, never changed.
  readonly #windowMs: number;
  readonly #nowMs: () => number;

  // Changes during the run: oldest first; samples[0] is the baseline of the window.
  readonly #samples: Sample[] = [];

  constructor(windowMs: number, nowMs: () => number, startDoneBytes: number) {
    assert(windowMs > SAMPLE_SPACING_MS, `rate window ${windowMs} ms must exceed the sample spacing`);
    this.#windowMs = windowMs;
    this.#nowMs = nowMs;
    this.#samples.push({ atMs: nowMs(), doneBytes: startDoneBytes });
  }

  /** Records the job's running total of bytes done. */
  record(doneBytes: number): void {
    const atMs = this.#nowMs();
    const last = this.#samples[this.#samples.length - 1]!;
    if (this.#samples.length > 1 && atMs - this.#samples[this.#samples.length - 2]!.atMs < SAMPLE_SPACING_MS) {
      last.atMs = atMs;
      last.doneBytes = doneBytes;
    } else {
      this.#samples.push({ atMs, doneBytes });
    }
    this.#prune(atMs);
  }

  /** Bytes per second over the window ending now (0 until enough time has passed). */
  rateBytesPerSec(currentDoneBytes: number): number {
    const nowMs = this.#nowMs();
    this.#prune(nowMs);
    const baseline = this.#baseline(nowMs - this.#windowMs);
    const elapsedMs = nowMs - baseline.atMs;
    if (elapsedMs < ELAPSED_MS_MIN) return 0;
    return Math.max(0, Math.round(((currentDoneBytes - baseline.doneBytes) * 1000) / elapsedMs));
  }

  /**
   * The progress at the start of the window, interpolated between the samples either side of it:
   * without that, the oldest sample (up to SAMPLE_SPACING_MS before the window) would mix a
   * little of the previous speed into the rate.
   */
  #baseline(windowStartMs: number): Sample {
    const [oldest, next] = this.#samples;
    if (next === undefined || oldest!.atMs >= windowStartMs) return oldest!;
    const fraction = (windowStartMs - oldest!.atMs) / (next.atMs - oldest!.atMs);
    return { atMs: windowStartMs, doneBytes: oldest!.doneBytes + fraction * (next.doneBytes - oldest!.doneBytes) };
  }

  /**
   * Drops samples that left the window, keeping the newest of them as the baseline so that the
   * window always spans the whole of its length once the job has run that long.
   */
  #prune(nowMs: number): void {
    const windowStartMs = nowMs - this.#windowMs;
    while (this.#samples.length > 1 && this.#samples[1]!.atMs <= windowStartMs) this.#samples.shift();
  }
}

/** Seconds left at the current rate; null while unknown (no total yet, or no progress in the window). */
export function etaSeconds(doneBytes: number, totalBytes: number, rateBytesPerSec: number): number | null {
  if (totalBytes <= 0 || rateBytesPerSec <= 0) return null;
  return Math.ceil(Math.max(0, totalBytes - doneBytes) / rateBytesPerSec);
}
