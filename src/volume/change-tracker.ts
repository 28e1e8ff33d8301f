/**
 * Change tracking for incremental backups: which logical extents of a volume changed since its
 * last backup's point in time. Crash-safe in one direction: a change's bit is durable before the
 * change itself can reach the disk (writers wait for `needsDurable` to clear), so after any crash
 * the tracked set is a superset of the real changes, never a subset.
 *
 * Two sets per volume: `current` (changes since the last point in time) and `held` (the changes a
 * running incremental backup is streaming). A backup that fails gives `held` back (union).
 * Bits live in pages of LIMITS.bitmapBitsPerPage; only pages with a set bit exist.
 */
import { LIMITS } from '../lib/limits.js';

const BITS = LIMITS.bitmapBitsPerPage;
const WORDS = BITS / 32;

export type ChangeSlot = 'current' | 'held';

class PagedBits {
  readonly pages = new Map<number, Uint32Array>();

  has(extent: number): boolean {
    const page = this.pages.get(Math.floor(extent / BITS));
    if (!page) return false;
    const bit = extent % BITS;
    return ((page[bit >>> 5]! >>> (bit & 31)) & 1) === 1;
  }

  /** Sets the bit; returns the page index when it was clear. */
  set(extent: number): number | undefined {
    const pageIndex = Math.floor(extent / BITS);
    let page = this.pages.get(pageIndex);
    if (!page) this.pages.set(pageIndex, (page = new Uint32Array(WORDS)));
    const bit = extent % BITS;
    const mask = 1 << (bit & 31);
    if ((page[bit >>> 5]! & mask) !== 0) return undefined;
    page[bit >>> 5]! |= mask;
    return pageIndex;
  }

  *extents(fromExtent: number, toExtent: number): Generator<number> {
    const indices = [...this.pages.keys()].filter((index) => (index + 1) * BITS > fromExtent && index * BITS < toExtent).sort((a, b) => a - b);
    for (const pageIndex of indices) {
      const page = this.pages.get(pageIndex)!;
      for (let word = 0; word < WORDS; word++) {
        if (page[word] === 0) continue;
        for (let bit = 0; bit < 32; bit++) {
          const extent = pageIndex * BITS + word * 32 + bit;
          if (extent >= fromExtent && extent < toExtent && ((page[word]! >>> bit) & 1) === 1) yield extent;
        }
      }
    }
  }

  union(other: PagedBits): void {
    for (const [pageIndex, page] of other.pages) {
      const mine = this.pages.get(pageIndex);
      if (!mine) this.pages.set(pageIndex, page.slice());
      else for (let word = 0; word < WORDS; word++) mine[word]! |= page[word]!;
    }
  }

  blob(pageIndex: number): Buffer | null {
    const page = this.pages.get(pageIndex);
    if (!page || page.every((word) => word === 0)) return null;
    return Buffer.from(page.buffer.slice(0));
  }

  static load(rows: ReadonlyArray<{ pageIndex: number; blob: Buffer }>): PagedBits {
    const bits = new PagedBits();
    for (const { pageIndex, blob } of rows) bits.pages.set(pageIndex, new Uint32Array(blob.buffer.slice(blob.byteOffset, blob.byteOffset + blob.byteLength)));
    return bits;
  }
}

export interface ChangePageSnapshot {
  slot: ChangeSlot;
  pageIndex: number;
  blob: Buffer | null;
}

export class ChangeTracker {
  #current: PagedBits;
  #held: PagedBits | undefined;
  /** Pages changed since the last capture, per slot: what the next commit writes. */
  #dirty = new Set<string>();
  /** Bits set but not yet durable (since the last capture), and those in the commit under way. */
  #undurable = new Set<number>();
  #capturing = new Set<number>();

  constructor(current: PagedBits, held: PagedBits | undefined) {
    this.#current = current;
    this.#held = held;
  }

  static load(current: ReadonlyArray<{ pageIndex: number; blob: Buffer }>, held: ReadonlyArray<{ pageIndex: number; blob: Buffer }>): ChangeTracker {
    return new ChangeTracker(PagedBits.load(current), held.length > 0 ? PagedBits.load(held) : undefined);
  }

  static empty(): ChangeTracker {
    return new ChangeTracker(new PagedBits(), undefined);
  }

  /**
   * Marks extents [first, last] changed. True when a writer must wait for a commit before
   * changing them: a bit was set now, or is set but not durable yet.
   */
  needsDurable(firstExtent: number, lastExtent: number): boolean {
    let wait = false;
    for (let extent = firstExtent; extent <= lastExtent; extent++) {
      const pageIndex = this.#current.set(extent);
      if (pageIndex !== undefined) {
        this.#dirty.add(`current:${pageIndex}`);
        this.#undurable.add(extent);
        wait = true;
      } else if (this.#undurable.has(extent) || this.#capturing.has(extent)) {
        wait = true;
      }
    }
    return wait;
  }

  changed(extent: number): boolean {
    return this.#current.has(extent);
  }

  /** Changed extents in [from, to), ascending. */
  changedExtents(fromExtent: number, toExtent: number): Generator<number> {
    return this.#current.extents(fromExtent, toExtent);
  }

  /** At a backup's point in time: the changes so far are held for it; tracking starts afresh. */
  holdForBackup(): PagedBits {
    if (this.#held) this.#current.union(this.#held); // a held set left by a failed backup goes back first
    this.#held = this.#current;
    this.#current = new PagedBits();
    this.#markAllDirty();
    return this.#held;
  }

  /** The set held for a running backup, for membership tests. */
  heldSet(): { has(extent: number): boolean } | undefined {
    return this.#held;
  }

  /** The backup completed: its held changes are no longer needed. */
  releaseHeld(): void {
    this.#held = undefined;
    this.#markAllDirty();
  }

  /** The backup failed: its changes are still changes since the last complete backup. */
  returnHeld(): void {
    if (!this.#held) return;
    this.#current.union(this.#held);
    this.#held = undefined;
    this.#markAllDirty();
  }

  #markAllDirty(): void {
    for (const pageIndex of this.#current.pages.keys()) this.#dirty.add(`current:${pageIndex}`);
    this.#dirty.add('held:*');
  }

  get hasDirtyPages(): boolean {
    return this.#dirty.size > 0;
  }

  /** What the next commit writes; a 'held:*' marker means: replace the whole held slot. */
  captureDirty(): { pages: ChangePageSnapshot[]; replaceHeld: ChangePageSnapshot[] | undefined; replaceCurrent: boolean } {
    const pages: ChangePageSnapshot[] = [];
    let replaceHeld: ChangePageSnapshot[] | undefined;
    let replaceCurrent = false;
    for (const key of this.#dirty) {
      if (key === 'held:*') {
        replaceHeld = [...(this.#held?.pages.keys() ?? [])].map((pageIndex) => ({ slot: 'held' as const, pageIndex, blob: this.#held!.blob(pageIndex) }));
        replaceCurrent = true;
        continue;
      }
      const pageIndex = Number(key.slice('current:'.length));
      pages.push({ slot: 'current', pageIndex, blob: this.#current.blob(pageIndex) });
    }
    if (replaceCurrent) {
      // The slots were swapped or merged: write the whole current slot too.
      pages.length = 0;
      for (const pageIndex of this.#current.pages.keys()) pages.push({ slot: 'current', pageIndex, blob: this.#current.blob(pageIndex) });
    }
    this.#dirty.clear();
    for (const extent of this.#undurable) this.#capturing.add(extent);
    this.#undurable.clear();
    return { pages, replaceHeld, replaceCurrent };
  }

  commitSucceeded(): void {
    this.#capturing.clear();
  }

  commitFailed(): void {
    for (const extent of this.#capturing) this.#undurable.add(extent);
    this.#capturing.clear();
    this.#markAllDirty();
  }
}
