/**
 * The pool: physical disks and the extent allocator.
 *
 * Physical extents are numbered across all disks (disk.firstExtent + local index) so one uint32
 * names any extent. Each disk has an allocation bitmap, persisted as pages in the metadata store.
 *
 * An extent's life: free → allocated (bit set at allocation, persisted at the next commit
 * together with the map that points to it) → freeing (unmapped by a trim or delete; bit still set,
 * so it cannot be handed out) → at the next commit its bit is cleared and persisted together with
 * the unmapping → allocatable again once no I/O issued before the free still touches it ("pins").
 * So a freed extent is never reused before its free is durable, and a late write can never land
 * in an extent that already belongs to someone else.
 */
import fs from 'node:fs';
import { Bitmap } from '../lib/bitmap.js';
import { ThinError, messageOf } from '../lib/errors.js';
import { assert } from '../lib/assert.js';
import { LIMITS } from '../lib/limits.js';
import type { Logger } from '../lib/log.js';
import type { MetaStore, DiskRow } from '../meta/store.js';
import type { DiskInfo } from '../array/types.js';
import { openDisk, readLabel, writeLabel, dataExtentCount, dataExtentOffsetBytes, fdatasync } from './disk.js';

const BITMAP_WORDS_PER_PAGE = LIMITS.bitmapBitsPerPage / 32;

export class PoolDisk {
  readonly row: DiskRow;
  readonly fd: number;
  readonly bitmap: Bitmap;
  readonly dirtyPages = new Set<number>();
  /** Written since the last fdatasync. */
  unsynced = false;
  /**
   * The first failed fdatasync of this disk, kept until the daemon restarts: Linux reports a
   * writeback error to a descriptor once, so a later fdatasync that succeeds does not mean the
   * pages that failed reached the disk. Every later sync fails with it: no FLUSH, FUA or commit
   * may claim durability after that (PostgreSQL's "fsyncgate" lesson).
   */
  syncFailure: unknown = null;
  /**
   * No extent below this one is allocatable (first fit). It moves up as extents are handed out
   * and down when one becomes allocatable again, so a search never rescans the full low end:
   * allocation stays O(1) amortised on a large, mostly full disk.
   *
   * First fit, not next fit: freed space is reused before space never written. A pool disk that
   * is a sparse file then only grows as far as the data it holds at its peak (next fit walked
   * through the whole file, allocating all of it even when little was in use), and a write to
   * reused space overwrites blocks the filesystem already has rather than allocating new ones.
   */
  lowestAllocatable = 0;

  constructor(row: DiskRow, fd: number, bitmap: Bitmap) {
    this.row = row;
    this.fd = fd;
    this.bitmap = bitmap;
  }

  /** Whether the global physical extent `extent` lies on this disk. */
  holds(extent: number): boolean {
    return extent >= this.row.firstExtent && extent < this.row.firstExtent + this.row.extentCount;
  }

  markDirty(localExtent: number): void {
    this.dirtyPages.add(Math.floor(localExtent / LIMITS.bitmapBitsPerPage));
  }

  /**
   * The page as a blob for the store, or null when all clear (the row is then deleted).
   * `reservedLocal` bits are written clear: extents allocated but not mapped yet must not become
   * durable as allocated, or a crash would leak them.
   */
  pageBlob(pageIndex: number, reservedLocal: Iterable<number>): Buffer | null {
    const start = pageIndex * BITMAP_WORDS_PER_PAGE;
    const words = this.bitmap.words.slice(start, Math.min(start + BITMAP_WORDS_PER_PAGE, this.bitmap.words.length));
    for (const local of reservedLocal) {
      const word = (local >>> 5) - start;
      if (word >= 0 && word < words.length) words[word]! &= ~(1 << (local & 31));
    }
    if (words.every((word) => word === 0)) return null;
    return Buffer.from(words.buffer);
  }
}

/** What one commit persists for the pool, captured synchronously when the commit starts. */
export interface PoolCommitSnapshot {
  bitmapPages: Array<{ diskId: number; pageIndex: number; blob: Buffer | null }>;
  /** Frees whose bits this commit clears durably. */
  frees: number[];
}

export interface PoolStats {
  extentsTotal: number;
  extentsUsed: number;
}

export class Pool {
  readonly extentBytes: number;
  readonly poolUuid: string;
  readonly #store: MetaStore;
  readonly #logger: Logger;
  readonly #disks: PoolDisk[] = [];

  /** Unmapped since the last commit started; bits still set. */
  #freeing: number[] = [];
  /** Frees of a failed commit: bits already clear in memory, persisted by the next commit. */
  #retryFrees: number[] = [];
  /** Bits cleared, but I/O issued before the free may still touch them: not allocatable yet. */
  readonly #quarantine = new Set<number>();
  /** Extents whose free was committed but which are still pinned. */
  readonly #releaseWhenUnpinned = new Set<number>();
  readonly #pinCounts = new Map<number, number>();
  /** Allocated for data being written before anything maps them (copies, restores): kept out of commits. */
  readonly #reserved = new Set<number>();
  #nextDisk = 0;
  #fullLogged = false;

  private constructor(store: MetaStore, logger: Logger, extentBytes: number, poolUuid: string) {
    this.#store = store;
    this.#logger = logger;
    this.extentBytes = extentBytes;
    this.poolUuid = poolUuid;
  }

  static open(store: MetaStore, logger: Logger, extentBytes: number, poolUuid: string): Pool {
    const pool = new Pool(store, logger, extentBytes, poolUuid);
    for (const row of store.listDisks()) pool.#attach(row);
    return pool;
  }

  #attach(row: DiskRow): void {
    const opened = openDisk(row.path);
    const label = readLabel(opened.fd);
    if (!label || label.poolUuid !== this.poolUuid) {
      fs.closeSync(opened.fd);
      throw new ThinError('CORRUPT', `disk ${row.path} does not carry this pool's label; refusing to use it`);
    }
    const words = new Uint32Array(Math.ceil(row.extentCount / 32));
    for (const page of this.#store.bitmapPages(row.id)) {
      words.set(new Uint32Array(page.blob.buffer, page.blob.byteOffset, page.blob.byteLength / 4), page.pageIndex * BITMAP_WORDS_PER_PAGE);
    }
    this.#disks.push(new PoolDisk(row, opened.fd, new Bitmap(row.extentCount, words)));
  }

  /** Adds a disk: labels it, records it and its (empty) bitmap in one transaction. */
  addDisk(diskPath: string, createSizeBytes?: number): DiskInfo {
    if (this.#disks.some((disk) => disk.row.path === diskPath)) {
      throw new ThinError('ALREADY_EXISTS', `disk ${diskPath} is already in the pool`, { field: 'path' });
    }
    const opened = openDisk(diskPath, createSizeBytes);
    try {
      const existing = readLabel(opened.fd);
      if (existing) {
        throw new ThinError('CONFLICT', `disk ${diskPath} already carries a thinarray label (pool ${existing.poolUuid}); refusing to overwrite it`, { field: 'path' });
      }
      const extentCount = dataExtentCount(opened.sizeBytes, this.extentBytes);
      if (extentCount < 1) {
        throw new ThinError('INVALID_ARGUMENT', `disk ${diskPath} is too small: it needs at least two extents of ${this.extentBytes} bytes`, { field: 'sizeBytes' });
      }
      const firstExtent = this.extentsTotal;
      if (firstExtent + extentCount > LIMITS.poolExtentsMax) {
        throw new ThinError('INVALID_ARGUMENT', `the pool would exceed ${LIMITS.poolExtentsMax} extents`, { field: 'sizeBytes' });
      }
      writeLabel(opened.fd, { poolUuid: this.poolUuid, extentBytes: this.extentBytes });
      const row: Omit<DiskRow, 'id'> = { path: diskPath, kind: opened.kind, sizeBytes: opened.sizeBytes, firstExtent, extentCount, addedAt: new Date().toISOString() };
      const id = this.#store.transaction(() => this.#store.insertDisk(row));
      const disk = new PoolDisk({ ...row, id }, opened.fd, new Bitmap(extentCount));
      this.#disks.push(disk);
      this.#fullLogged = false;
      this.#logger.info({ disk: diskPath, sizeBytes: opened.sizeBytes, extents: extentCount }, 'disk added to pool');
      return this.#diskInfo(disk);
    } catch (error) {
      fs.closeSync(opened.fd);
      throw error;
    }
  }

  get extentsTotal(): number {
    return this.#disks.reduce((sum, disk) => sum + disk.row.extentCount, 0);
  }

  /** Extents holding data or waiting for their free to commit. */
  get extentsUsed(): number {
    return this.#disks.reduce((sum, disk) => sum + disk.bitmap.setCount, 0) + this.#quarantine.size;
  }

  diskInfos(): DiskInfo[] {
    return this.#disks.map((disk) => this.#diskInfo(disk));
  }

  #diskInfo(disk: PoolDisk): DiskInfo {
    return { id: disk.row.id, path: disk.row.path, kind: disk.row.kind, sizeBytes: disk.row.sizeBytes, extents: disk.row.extentCount, usedExtents: disk.bitmap.setCount };
  }

  #diskOf(extent: number): PoolDisk {
    const disk = this.#findDisk(extent);
    if (!disk) throw new ThinError('CORRUPT', `physical extent ${extent} lies on no disk of the pool`);
    return disk;
  }

  /** Pools have a handful of disks: a linear scan is cheaper than anything cleverer. */
  #findDisk(extent: number): PoolDisk | undefined {
    return this.#disks.find((disk) => disk.holds(extent));
  }

  /** Where a physical extent lives: the disk's fd and the byte offset of the extent on it. */
  locate(extent: number): { fd: number; offsetBytes: number; disk: PoolDisk } {
    const disk = this.#diskOf(extent);
    return { fd: disk.fd, offsetBytes: dataExtentOffsetBytes(extent - disk.row.firstExtent, this.extentBytes), disk };
  }

  /**
   * Allocates `count` extents, all or none: a write never half-allocates before running out.
   * Disks take turns so that writes spread over devices.
   */
  /**
   * Like allocate, for extents that will be mapped only after their data is written: until
   * `confirm`, they are not persisted as allocated, so a crash in between leaks nothing.
   */
  reserve(count: number): number[] {
    const extents = this.allocate(count);
    for (const extent of extents) this.#reserved.add(extent);
    return extents;
  }

  /** A reserved extent is now mapped: the next commit persists it as allocated. */
  confirm(extent: number): void {
    assert(this.#reserved.delete(extent), `confirming extent ${extent} that is not reserved`);
    const disk = this.#diskOf(extent);
    disk.markDirty(extent - disk.row.firstExtent);
  }

  allocate(count: number): number[] {
    const available = this.extentsTotal - this.extentsUsed;
    if (count > available) {
      if (!this.#fullLogged) {
        this.#logger.error({ extentsTotal: this.extentsTotal, extentsUsed: this.extentsUsed, requested: count }, 'pool is full: writes that need new extents fail with ENOSPC');
        this.#fullLogged = true;
      }
      throw new ThinError('NO_SPACE', `the pool is full: ${count} extent(s) needed, ${available} free`);
    }
    const extents: number[] = [];
    while (extents.length < count) {
      const [disk, local] = this.#nextAllocatable();
      disk.bitmap.set(local);
      disk.markDirty(local);
      extents.push(disk.row.firstExtent + local);
    }
    return extents;
  }

  /** The next allocatable extent, disks taking turns. The caller checked that one exists. */
  #nextAllocatable(): [PoolDisk, number] {
    for (let tries = 0; tries < this.#disks.length; tries++) {
      const disk = this.#disks[this.#nextDisk % this.#disks.length]!;
      this.#nextDisk++;
      const local = this.#findAllocatable(disk);
      if (local >= 0) return [disk, local];
    }
    throw new ThinError('NO_SPACE', 'the pool is full');
  }

  /**
   * The lowest clear bit at or above the disk's lowestAllocatable that is not quarantined, or -1.
   * Never wraps below the hint: nothing there is allocatable. Quarantined extents passed over
   * stay below the hint until their release lowers it again (#becameAllocatable), so each is
   * passed over once, not once per allocation.
   */
  #findAllocatable(disk: PoolDisk): number {
    for (let from = disk.lowestAllocatable; from < disk.row.extentCount; ) {
      const local = disk.bitmap.findClear(from);
      if (local < from) break; // none at or above `from` (-1, or it wrapped around below)
      if (!this.#quarantine.has(disk.row.firstExtent + local)) {
        disk.lowestAllocatable = local + 1;
        return local;
      }
      from = local + 1;
    }
    disk.lowestAllocatable = disk.row.extentCount; // nothing allocatable until a release lowers it
    return -1;
  }

  /** `extent` left quarantine: the next allocation on its disk may take it. */
  #becameAllocatable(extent: number): void {
    this.#quarantine.delete(extent);
    // Not #diskOf: a pin released after close() finds no disk, and has nothing to update.
    const disk = this.#findDisk(extent);
    if (disk) disk.lowestAllocatable = Math.min(disk.lowestAllocatable, extent - disk.row.firstExtent);
  }

  /** An extent no longer mapped by anyone; it becomes allocatable only after a commit. */
  free(extent: number): void {
    this.#reserved.delete(extent);
    const disk = this.#diskOf(extent);
    assert(disk.bitmap.get(extent - disk.row.firstExtent), `freeing extent ${extent} that is not allocated`);
    this.#freeing.push(extent);
  }

  /** I/O on `extent` is starting: it must not be handed out again until unpinned. */
  pin(extent: number): void {
    this.#pinCounts.set(extent, (this.#pinCounts.get(extent) ?? 0) + 1);
  }

  unpin(extent: number): void {
    const count = this.#pinCounts.get(extent);
    assert(count !== undefined && count > 0, `unpin of extent ${extent} that is not pinned`);
    if (count > 1) {
      this.#pinCounts.set(extent, count - 1);
      return;
    }
    this.#pinCounts.delete(extent);
    if (this.#releaseWhenUnpinned.delete(extent)) this.#becameAllocatable(extent);
  }

  /** Captures the bitmap pages and frees one commit will persist. Synchronous by design. */
  captureForCommit(): PoolCommitSnapshot {
    const newFrees = this.#freeing;
    this.#freeing = [];
    for (const extent of newFrees) {
      const disk = this.#diskOf(extent);
      const local = extent - disk.row.firstExtent;
      disk.bitmap.clear(local); // persisted as clear with the unmapping, in the same transaction
      disk.markDirty(local);
      this.#quarantine.add(extent); // ...but not allocatable until the commit is done
    }
    const bitmapPages: PoolCommitSnapshot['bitmapPages'] = [];
    for (const disk of this.#disks) {
      const reservedLocal = [...this.#reserved].filter((extent) => disk.holds(extent)).map((extent) => extent - disk.row.firstExtent);
      for (const pageIndex of disk.dirtyPages) bitmapPages.push({ diskId: disk.row.id, pageIndex, blob: disk.pageBlob(pageIndex, reservedLocal) });
      disk.dirtyPages.clear();
    }
    // Frees of a failed earlier commit: bits already clear in memory, their pages dirty again.
    const frees = this.#retryFrees.concat(newFrees);
    this.#retryFrees = [];
    return { bitmapPages, frees };
  }

  persist(snapshot: PoolCommitSnapshot): void {
    for (const page of snapshot.bitmapPages) this.#store.putBitmapPage(page.diskId, page.pageIndex, page.blob);
  }

  /** After the commit: committed frees become allocatable once nothing still pins them. */
  afterCommit(snapshot: PoolCommitSnapshot): void {
    for (const extent of snapshot.frees) {
      if (this.#pinCounts.has(extent)) this.#releaseWhenUnpinned.add(extent);
      else this.#becameAllocatable(extent);
    }
  }

  /** The commit failed: its pages are written again next time; its frees stay quarantined until then. */
  commitFailed(snapshot: PoolCommitSnapshot): void {
    for (const page of snapshot.bitmapPages) {
      const disk = this.#disks.find((candidate) => candidate.row.id === page.diskId);
      disk?.dirtyPages.add(page.pageIndex);
    }
    this.#retryFrees.push(...snapshot.frees);
  }

  /**
   * Metadata a commit would persist: frees or bitmap pages. Unsynced data alone does not count:
   * without FLUSH nothing is promised, and a periodic fdatasync would force writeback of every
   * dirty page each second, which overwriting clients would then wait on.
   */
  get hasUncommittedMetadata(): boolean {
    return this.#freeing.length > 0 || this.#retryFrees.length > 0 || this.#disks.some((disk) => disk.dirtyPages.size > 0);
  }

  markWritten(disk: PoolDisk): void {
    disk.unsynced = true;
  }

  /**
   * Write-behind for long sequential writers (a restore): an fdatasync of every disk written
   * since its last sync that leaves them marked, so the next commit still syncs them; it only
   * gives the disk a head start, and the commit's own sync then finds little left.
   */
  async syncBehind(): Promise<void> {
    // A failure is not thrown here (nobody waits on this sync) but kept: the next syncDisks throws it.
    await Promise.all(this.#disks.filter((disk) => disk.unsynced).map((disk) => this.#fdatasync(disk).catch(() => undefined)));
  }

  /** fdatasync every disk written since its last sync; fails for good once any sync of a disk failed. */
  async syncDisks(): Promise<void> {
    this.#throwSyncFailure();
    const pending = this.#disks.filter((disk) => disk.unsynced);
    for (const disk of pending) disk.unsynced = false;
    try {
      await Promise.all(pending.map((disk) => this.#fdatasync(disk)));
    } catch (error) {
      for (const disk of pending) disk.unsynced = true;
      throw error;
    }
    this.#throwSyncFailure(); // a write-behind sync that failed while these ran
  }

  async #fdatasync(disk: PoolDisk): Promise<void> {
    try {
      await fdatasync(disk.fd);
    } catch (error) {
      if (disk.syncFailure === null) {
        disk.syncFailure = error;
        this.#logger.error({ err: error, disk: disk.row.path }, 'fdatasync of a pool disk failed: every later sync fails until the daemon restarts');
      }
      throw error;
    }
  }

  #throwSyncFailure(): void {
    const failed = this.#disks.find((disk) => disk.syncFailure !== null);
    if (failed) {
      throw new ThinError('IO_ERROR', `an earlier fdatasync of pool disk ${failed.row.path} failed (${messageOf(failed.syncFailure)}); data written before it may not be on stable storage, so nothing is called durable until the daemon restarts and the disk is checked`);
    }
  }

  /** Every (global) physical extent the bitmaps say is in use — for `check`. */
  *allocatedExtents(): Generator<number> {
    for (const disk of this.#disks) {
      for (let local = 0; local < disk.row.extentCount; local++) {
        if (disk.bitmap.get(local)) yield disk.row.firstExtent + local;
      }
    }
  }

  /** Extents allocated but legitimately mapped by nobody right now: frees not yet committed, reservations. */
  freeingExtents(): ReadonlySet<number> {
    return new Set([...this.#freeing, ...this.#reserved]);
  }

  isAllocated(extent: number): boolean {
    const disk = this.#diskOf(extent);
    return disk.bitmap.get(extent - disk.row.firstExtent);
  }

  isValidExtent(extent: number): boolean {
    return this.#findDisk(extent) !== undefined;
  }

  /** check --repair: marks an extent allocated (it is mapped but its bit was clear). */
  repairMarkAllocated(extent: number): void {
    const disk = this.#diskOf(extent);
    disk.bitmap.set(extent - disk.row.firstExtent);
    disk.markDirty(extent - disk.row.firstExtent);
  }

  /** check --repair: returns a leaked extent (bit set, mapped by nobody) to the pool via the normal free path. */
  repairLeak(extent: number): void {
    this.free(extent);
  }

  close(): void {
    for (const disk of this.#disks) fs.closeSync(disk.fd);
    this.#disks.length = 0;
  }
}
