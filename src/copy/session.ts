/**
 * One point-in-time copy in progress: the bridge between its source and target volumes.
 *
 * The copy is logically complete the moment it is created. Until an extent has been copied:
 * - a source write, trim or zero of it hands the source's physical extent to the target (the
 *   write itself goes to a new extent), so the point-in-time data is kept without copying it on
 *   the write path (CopySourceHook);
 * - a target read of it reads the source's physical extent, which nothing changes meanwhile
 *   (CopyTargetHook).
 * The background job (the copy engine) copies the remaining extents in order. Which extents are
 * done needs no record of its own: a target extent is done when it is mapped, so the maps that the
 * group commit persists are the copy's progress, and a crash resumes with the point in time kept.
 */
import fs from 'node:fs';
import { assert } from '../lib/assert.js';
import { fromSystemError } from '../lib/errors.js';
import type { Pool } from '../pool/pool.js';
import type { Volume, CopySourceHook, CopyTargetHook, PendingExtent } from '../volume/volume.js';
import type { CopyWork } from './engine.js';
import type { CopyRow } from './copy-store.js';

export interface SessionContext {
  pool: Pool;
  trackWrite(write: Promise<unknown>): void;
}

export class CopySession implements CopySourceHook, CopyTargetHook {
  // ---- Set at creation, never changed.
  readonly row: CopyRow;
  readonly source: Volume;
  readonly target: Volume;
  /** Source logical extents mapped at the point in time, ascending (the correspondence table). */
  readonly sourceExtents: Float64Array;
  /** Compact copies: renders one extent of the header area (never the whole table at once). */
  readonly #renderHeader: ((extentIndex: number) => Buffer) | undefined;
  readonly #context: SessionContext;

  // ---- Changes during the run.
  /** 1 when item i needs nothing more: copied, handed over, or absent from the source after a crash. */
  readonly #settled: Uint8Array;
  #settledCount = 0;
  /** Bytes the copy has placed in the target so far (copied or handed over). */
  placedBytes = 0;
  /**
   * Copy-on-read: a target read of an extent not copied yet also copies it (seed: the read
   * fetches the block from the source and copies it). Off for backup views, which are read once.
   */
  copyOnRead = false;
  /** Items a copy-on-read is copying now (so repeated reads do not start it twice). */
  readonly #copyingOnRead = new Set<number>();
  /** Set when the copy ends (done, cancelled, discarded): late batches put nothing in the target. */
  #detached = false;

  constructor(row: CopyRow, source: Volume, target: Volume, sourceExtents: Float64Array, renderHeader: ((extentIndex: number) => Buffer) | undefined, context: SessionContext, resuming: boolean) {
    assert(sourceExtents.length === row.extentCount, 'the extent list matches the copy row');
    this.row = row;
    this.source = source;
    this.target = target;
    this.sourceExtents = sourceExtents;
    this.#renderHeader = renderHeader;
    this.#context = context;
    this.#settled = new Uint8Array(row.extentCount);
    // Resuming: items whose target extent is mapped are done; items the source lost (unflushed
    // before a crash) read as zeros at the durable point in time and need nothing. A new copy's
    // target is empty and its source has every listed extent: nothing to look at (and this loop
    // would be the largest part of the setup stall).
    if (!resuming) return;
    for (let i = 0; i < row.extentCount; i++) {
      if (target.map.lookup(this.targetExtentOf(i)) >= 0 || source.map.lookup(sourceExtents[i]!) < 0) this.#settle(i);
    }
  }

  get extentBytes(): number {
    return this.row.extentBytes;
  }

  get remainingItems(): number {
    return this.row.extentCount - this.#settledCount;
  }

  attach(): void {
    assert(this.source.copySource === undefined && this.target.copyTarget === undefined, 'one copy per source and target at a time');
    this.source.copySource = this;
    this.target.copyTarget = this;
  }

  detach(): void {
    this.#detached = true;
    if (this.source.copySource === this) this.source.copySource = undefined;
    if (this.target.copyTarget === this) this.target.copyTarget = undefined;
  }

  targetExtentOf(index: number): number {
    return this.row.mode === 'compact' ? this.row.metadataExtents + index : this.sourceExtents[index]!;
  }

  /** Index of a source logical extent in the list, or -1 (binary search). */
  indexOfSource(sourceExtent: number): number {
    const index = this.#lowerBound(sourceExtent);
    return index < this.sourceExtents.length && this.sourceExtents[index] === sourceExtent ? index : -1;
  }

  #indexOfTarget(targetExtent: number): number {
    if (this.row.mode === 'instant') return this.indexOfSource(targetExtent);
    const index = targetExtent - this.row.metadataExtents;
    return index >= 0 && index < this.row.extentCount ? index : -1;
  }

  #settle(index: number): void {
    if (this.#settled[index] === 1) return;
    this.#settled[index] = 1;
    this.#settledCount++;
  }

  // ---- CopySourceHook -------------------------------------------------------------------------

  needs(sourceExtent: number): boolean {
    const index = this.indexOfSource(sourceExtent);
    return index >= 0 && this.#settled[index] === 0;
  }

  takeOver(sourceExtent: number, physicalExtent: number): void {
    const index = this.indexOfSource(sourceExtent);
    assert(index >= 0 && this.#settled[index] === 0, `copy ${this.row.id} does not need source extent ${sourceExtent}`);
    this.target.map.map(this.targetExtentOf(index), physicalExtent);
    this.#settle(index);
    this.placedBytes += this.extentBytes;
  }

  // ---- CopyTargetHook -------------------------------------------------------------------------

  resolve(targetExtent: number): PendingExtent {
    if (this.#renderHeader && targetExtent < this.row.metadataExtents) {
      return { kind: 'data', data: this.#renderHeader(targetExtent) };
    }
    const index = this.#indexOfTarget(targetExtent);
    if (index < 0 || this.#settled[index] === 1) return { kind: 'zero' };
    const physicalExtent = this.source.map.lookup(this.sourceExtents[index]!);
    if (physicalExtent < 0) return { kind: 'zero' };
    if (this.copyOnRead) this.#copyOnRead(index);
    return { kind: 'physical', physicalExtent };
  }

  /** Starts copying one item in the background; the background job skips it once settled. */
  #copyOnRead(index: number): void {
    if (this.#copyingOnRead.has(index)) return;
    this.#copyingOnRead.add(index);
    this.#copyBatch(index, 1)
      .catch(() => undefined) // the background job copies it (and reports failures) if this does not
      .finally(() => this.#copyingOnRead.delete(index));
  }

  *pendingWithData(fromExtent: number, toExtent: number): Generator<number> {
    if (this.row.mode === 'compact') {
      for (let extent = fromExtent; extent < Math.min(toExtent, this.row.metadataExtents); extent++) {
        if (this.target.map.lookup(extent) < 0) yield extent;
      }
      const first = Math.max(0, fromExtent - this.row.metadataExtents);
      const end = Math.min(this.row.extentCount, toExtent - this.row.metadataExtents);
      for (let i = first; i < end; i++) if (this.#settled[i] === 0) yield this.row.metadataExtents + i;
      return;
    }
    let i = this.#lowerBound(fromExtent);
    for (; i < this.sourceExtents.length && this.sourceExtents[i]! < toExtent; i++) {
      if (this.#settled[i] === 0) yield this.sourceExtents[i]!;
    }
  }

  #lowerBound(sourceExtent: number): number {
    let low = 0;
    let high = this.sourceExtents.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.sourceExtents[middle]! < sourceExtent) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  // ---- The background copy --------------------------------------------------------------------

  /** Writes the compact header into the target's first extents (once; skipped when mapped). */
  async writeHeader(): Promise<void> {
    const renderHeader = this.#renderHeader;
    if (!renderHeader) return;
    for (let extent = 0; extent < this.row.metadataExtents; extent++) {
      if (this.target.map.lookup(extent) >= 0) continue;
      const [physical] = this.#context.pool.reserve(1);
      const data = renderHeader(extent);
      try {
        await this.#writePhysical(physical!, [data]);
      } catch (error) {
        this.#context.pool.free(physical!);
        throw error;
      }
      this.target.map.map(extent, physical!);
      this.#context.pool.confirm(physical!);
    }
  }

  /** The list as the engine sees it. */
  work(): CopyWork {
    return {
      count: this.row.extentCount,
      isDone: (index) => this.#settled[index] === 1,
      joins: (index) => this.sourceExtents[index] === this.sourceExtents[index - 1]! + 1,
      copyBatch: (first, count) => this.#copyBatch(first, count),
    };
  }

  /**
   * Copies items [first, first+count): reads the source's physical extents (pinned, so nothing can
   * reuse them), writes new extents, and maps them in the target — unless a source write handed
   * the extent over meanwhile, in which case the new extent goes back to the pool.
   */
  async #copyBatch(first: number, count: number): Promise<number> {
    const pool = this.#context.pool;
    const items: Array<{ index: number; sourcePhysical: number; buffer: Buffer }> = [];
    for (let index = first; index < first + count; index++) {
      if (this.#settled[index] === 1) continue;
      const sourcePhysical = this.source.map.lookup(this.sourceExtents[index]!);
      if (sourcePhysical < 0) {
        this.#settle(index); // lost by a crash before the point in time was durable: zeros
        continue;
      }
      items.push({ index, sourcePhysical, buffer: Buffer.allocUnsafe(this.extentBytes) });
    }
    if (items.length === 0) return 0;
    const sameDisk = (a: number, b: number): boolean => pool.locate(a).fd === pool.locate(b).fd;
    for (const item of items) pool.pin(item.sourcePhysical);
    try {
      // Physically adjacent extents move in one readv / writev each (next-fit allocation keeps
      // a batch's new extents adjacent too).
      await Promise.all(adjacentRuns(items.map((item) => item.sourcePhysical), sameDisk).map(([first, count]) =>
        this.#readPhysical(items[first]!.sourcePhysical, items.slice(first, first + count).map((item) => item.buffer))));
      const targets = pool.reserve(items.length); // persisted as allocated only once mapped
      try {
        await Promise.all(adjacentRuns(targets, sameDisk).map(([first, count]) =>
          this.#writePhysical(targets[first]!, items.slice(first, first + count).map((item) => item.buffer))));
      } catch (error) {
        for (const target of targets) pool.free(target); // never mapped: straight back to the pool
        throw error;
      }
      let copiedBytes = 0;
      items.forEach((item, i) => {
        if (this.#settled[item.index] === 1 || this.#detached) {
          pool.free(targets[i]!); // handed over while we copied (the target has it), or the copy ended
          return;
        }
        this.target.map.map(this.targetExtentOf(item.index), targets[i]!);
        pool.confirm(targets[i]!);
        this.#settle(item.index);
        copiedBytes += this.extentBytes;
      });
      this.placedBytes += copiedBytes;
      return copiedBytes;
    } finally {
      for (const item of items) pool.unpin(item.sourcePhysical);
    }
  }

  /** Reads adjacent physical extents starting at `physicalExtent` into `buffers` (one per extent). */
  #readPhysical(physicalExtent: number, buffers: Buffer[]): Promise<void> {
    const { fd, offsetBytes } = this.#context.pool.locate(physicalExtent);
    const expectedBytes = buffers.length * this.extentBytes;
    return new Promise((resolve, reject) => {
      fs.readv(fd, buffers, offsetBytes, (error, bytesRead) => {
        if (error || bytesRead !== expectedBytes) reject(fromSystemError(error ?? new Error('short read'), `copy ${this.row.id}: read of the source`));
        else resolve();
      });
    });
  }

  /** Writes a new (not yet mapped) extent; the commit waits for it before persisting the map. */
  #writePhysical(physicalExtent: number, buffers: Buffer[]): Promise<void> {
    const { fd, offsetBytes, disk } = this.#context.pool.locate(physicalExtent);
    const write = new Promise<void>((resolve, reject) => {
      fs.writev(fd, buffers, offsetBytes, (error) => {
        if (error) reject(fromSystemError(error, `copy ${this.row.id}: write of the target`));
        else {
          this.#context.pool.markWritten(disk);
          resolve();
        }
      });
    });
    this.#context.trackWrite(write);
    return write;
  }
}

/**
 * Runs of physically adjacent extents, as [first index, count] pairs. Physical extents are
 * numbered across disks, so consecutive numbers may sit on two disks: runs are cut there too.
 */
function adjacentRuns(extents: readonly number[], sameDisk: (a: number, b: number) => boolean): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (let i = 0; i < extents.length; i++) {
    const last = runs[runs.length - 1];
    const previous = last ? extents[last[0] + last[1] - 1]! : -2;
    if (last && extents[i] === previous + 1 && sameDisk(previous, extents[i]!)) last[1]++;
    else runs.push([i, 1]);
  }
  return runs;
}
