/**
 * The copy engine: walks a list of work items in order, copying the ones not done yet in batches
 * of adjacent items, with a bound on batches in flight, progress, cancellation and a resumable
 * position. It knows nothing of volumes: point-in-time copies, and later pair resync, backup and
 * restore, describe their work as `CopyWork` (which items exist, which are done, how to copy a
 * batch) and share this one loop.
 */
import { ThinError } from '../lib/errors.js';

export interface CopyWork {
  /** Items, indexed 0 … count-1, copied in that order. */
  readonly count: number;
  isDone(index: number): boolean;
  /** Whether item `index` can join a batch that ends with item `index - 1` (e.g. adjacent on disk). */
  joins(index: number): boolean;
  /** Copies items [first, first+count); resolves with the bytes copied. */
  copyBatch(first: number, count: number): Promise<number>;
}

export interface EngineOptions {
  /** Where to start (a resumed run starts at its last saved position). */
  startIndex: number;
  batchItemsMax: number;
  batchesInFlightMax: number;
  signal: AbortSignal;
  onProgress(copiedBytes: number): void;
  /** Called with a position such that every item before it is done. */
  onPosition(nextIndex: number): void;
}

export async function runCopyEngine(work: CopyWork, options: EngineOptions): Promise<void> {
  const inFlight = new Set<Promise<void>>();
  const batchStarts: number[] = [];
  let failure: unknown;
  let index = options.startIndex;
  while (index < work.count) {
    if (options.signal.aborted) throw options.signal.reason ?? new ThinError('CONFLICT', 'copy stopped');
    if (failure !== undefined) break;
    if (work.isDone(index)) {
      index++;
      continue;
    }
    let length = 1;
    while (length < options.batchItemsMax && index + length < work.count && !work.isDone(index + length) && work.joins(index + length)) length++;
    const first = index;
    batchStarts.push(first);
    const batch: Promise<void> = work.copyBatch(first, length).then(
      (bytes) => {
        options.onProgress(bytes);
        batchStarts.splice(batchStarts.indexOf(first), 1);
        options.onPosition(batchStarts.length === 0 ? first + length : Math.min(...batchStarts));
      },
      (error: unknown) => {
        failure ??= error;
      },
    );
    const tracked = batch.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
    index += length;
    if (inFlight.size >= options.batchesInFlightMax) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  if (failure !== undefined) throw failure;
  options.onPosition(work.count);
}
