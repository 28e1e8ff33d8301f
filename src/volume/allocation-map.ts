/**
 * A volume's allocation map: logical extent → physical extent, held in memory as pages of
 * LIMITS.mapEntriesPerPage uint32 entries (physical + 1; 0 = unmapped). Only pages with at least
 * one mapped entry exist, so memory and start-up time grow with mapped extents, not capacity:
 * an empty 64 TiB volume holds no pages at all.
 */
import { assert } from '../lib/assert.js';
import { LIMITS } from '../lib/limits.js';
import type { PageRow } from '../meta/store.js';

const ENTRIES_PER_PAGE = LIMITS.mapEntriesPerPage;

interface MapPage {
  entries: Uint32Array;
  mappedCount: number;
}

export interface MapPageSnapshot {
  pageIndex: number;
  /** Little-endian uint32 entries; null when the page is all unmapped (its row is deleted). */
  blob: Buffer | null;
}

export class AllocationMap {
  readonly #pages = new Map<number, MapPage>();
  /** Page indices in ascending order, for walking a range without visiting empty pages. */
  #sortedPageIndices: number[] = [];
  readonly #dirtyPages = new Set<number>();
  #mappedCount = 0;

  static load(rows: readonly PageRow[]): AllocationMap {
    const map = new AllocationMap();
    for (const row of rows) {
      assert(row.blob.byteLength === ENTRIES_PER_PAGE * 4, `map page ${row.pageIndex} has ${row.blob.byteLength} bytes`);
      const entries = new Uint32Array(ENTRIES_PER_PAGE);
      for (let i = 0; i < ENTRIES_PER_PAGE; i++) entries[i] = row.blob.readUInt32LE(i * 4);
      const mappedCount = entries.reduce((count, entry) => count + (entry === 0 ? 0 : 1), 0);
      if (mappedCount === 0) continue;
      map.#pages.set(row.pageIndex, { entries, mappedCount });
      map.#mappedCount += mappedCount;
    }
    map.#sortedPageIndices = [...map.#pages.keys()].sort((a, b) => a - b);
    return map;
  }

  get mappedCount(): number {
    return this.#mappedCount;
  }

  get hasDirtyPages(): boolean {
    return this.#dirtyPages.size > 0;
  }

  /** The physical extent behind a logical extent, or -1 when unmapped. */
  lookup(extentIndex: number): number {
    const page = this.#pages.get(Math.floor(extentIndex / ENTRIES_PER_PAGE));
    if (!page) return -1;
    return page.entries[extentIndex % ENTRIES_PER_PAGE]! - 1;
  }

  map(extentIndex: number, physicalExtent: number): void {
    assert(physicalExtent >= 0 && physicalExtent < LIMITS.poolExtentsMax, `physical extent ${physicalExtent} out of range`);
    const pageIndex = Math.floor(extentIndex / ENTRIES_PER_PAGE);
    let page = this.#pages.get(pageIndex);
    if (!page) {
      page = { entries: new Uint32Array(ENTRIES_PER_PAGE), mappedCount: 0 };
      this.#pages.set(pageIndex, page);
      this.#insertSorted(pageIndex);
    }
    const slot = extentIndex % ENTRIES_PER_PAGE;
    assert(page.entries[slot] === 0, `logical extent ${extentIndex} is already mapped`);
    page.entries[slot] = physicalExtent + 1;
    page.mappedCount++;
    this.#mappedCount++;
    this.#dirtyPages.add(pageIndex);
  }

  /** Unmaps a logical extent and returns the physical extent it had. */
  unmap(extentIndex: number): number {
    const pageIndex = Math.floor(extentIndex / ENTRIES_PER_PAGE);
    const page = this.#pages.get(pageIndex);
    const slot = extentIndex % ENTRIES_PER_PAGE;
    assert(page !== undefined && page.entries[slot] !== 0, `logical extent ${extentIndex} is not mapped`);
    const physicalExtent = page.entries[slot]! - 1;
    page.entries[slot] = 0;
    page.mappedCount--;
    this.#mappedCount--;
    this.#dirtyPages.add(pageIndex);
    if (page.mappedCount === 0) {
      this.#pages.delete(pageIndex);
      this.#sortedPageIndices.splice(this.#lowerBound(pageIndex), 1);
    }
    return physicalExtent;
  }

  /** Mapped extents with logical index in [fromExtent, toExtent), ascending; empty pages cost nothing. */
  *mapped(fromExtent: number, toExtent: number): Generator<{ extentIndex: number; physicalExtent: number }> {
    const firstPage = Math.floor(fromExtent / ENTRIES_PER_PAGE);
    for (let i = this.#lowerBound(firstPage); i < this.#sortedPageIndices.length; i++) {
      const pageIndex = this.#sortedPageIndices[i]!;
      const pageStart = pageIndex * ENTRIES_PER_PAGE;
      if (pageStart >= toExtent) return;
      const page = this.#pages.get(pageIndex);
      if (!page) continue; // unmapped while the caller was iterating
      const from = Math.max(fromExtent, pageStart) - pageStart;
      const to = Math.min(toExtent - pageStart, ENTRIES_PER_PAGE);
      for (let slot = from; slot < to; slot++) {
        const entry = page.entries[slot]!;
        if (entry !== 0) yield { extentIndex: pageStart + slot, physicalExtent: entry - 1 };
      }
    }
  }

  /** Every mapped logical extent, ascending, as a typed array: a tight loop over existing pages only. */
  mappedExtentList(): Float64Array {
    const list = new Float64Array(this.#mappedCount);
    let next = 0;
    for (const pageIndex of this.#sortedPageIndices) {
      const entries = this.#pages.get(pageIndex)!.entries;
      const base = pageIndex * ENTRIES_PER_PAGE;
      for (let slot = 0; slot < ENTRIES_PER_PAGE; slot++) if (entries[slot] !== 0) list[next++] = base + slot;
    }
    assert(next === list.length, 'mapped count matches the pages');
    return list;
  }

  /** Dirty pages as blobs for one commit; the dirty set is cleared (restore it if the commit fails). */
  captureDirty(): MapPageSnapshot[] {
    const snapshots: MapPageSnapshot[] = [];
    for (const pageIndex of this.#dirtyPages) {
      const page = this.#pages.get(pageIndex);
      if (!page) {
        snapshots.push({ pageIndex, blob: null });
        continue;
      }
      const blob = Buffer.allocUnsafe(ENTRIES_PER_PAGE * 4);
      for (let i = 0; i < ENTRIES_PER_PAGE; i++) blob.writeUInt32LE(page.entries[i]!, i * 4);
      snapshots.push({ pageIndex, blob });
    }
    this.#dirtyPages.clear();
    return snapshots;
  }

  markDirty(pageIndices: Iterable<number>): void {
    for (const pageIndex of pageIndices) this.#dirtyPages.add(pageIndex);
  }

  #insertSorted(pageIndex: number): void {
    this.#sortedPageIndices.splice(this.#lowerBound(pageIndex), 0, pageIndex);
  }

  /** First position in the sorted page list whose page index is ≥ pageIndex. */
  #lowerBound(pageIndex: number): number {
    let low = 0;
    let high = this.#sortedPageIndices.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.#sortedPageIndices[middle]! < pageIndex) low = middle + 1;
      else high = middle;
    }
    return low;
  }
}
