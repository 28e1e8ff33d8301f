/**
 * Group commit. A commit makes everything written before it durable in the one order that keeps
 * metadata honest after power loss: (1) capture, synchronously, the dirty map and bitmap pages and
 * the pending frees; (2) wait for the writes already in flight; (3) fdatasync the pool disks;
 * (4) commit the captured metadata in one SQLite transaction; (5) let committed frees be reused.
 * A map entry is therefore never durable before the data it points to, and a freed extent is never
 * reused before its free is durable. FLUSH and FUA requests that arrive while a commit runs share
 * the next one.
 *
 * A lighter commit makes only change-tracking marks durable (`syncChangeMarks`): a mark must reach
 * the disk before the change it records can, but it does not depend on any data being durable, so
 * it needs no fdatasync of the pool. A host's first write to an extent after a backup waits for
 * one: with the full commit it waited for every dirty page of the pool to be written back, and
 * 4 KiB writes at queue depth 1 fell from 10,000 to 1,800 a second after each backup (3,700
 * with this commit). Its cost is one SQLite transaction with its fsync (synchronous: the event
 * loop waits for it, as for any durable commit), shared by every first write waiting at the time.
 * Both kinds run one at a time, in one queue: a tracker's capture must not overlap another. So a
 * first write that arrives while a full commit runs waits for that one to end, pool fdatasync
 * included, before its mark is committed.
 */
import type { Logger } from '../lib/log.js';
import type { MetaStore } from '../meta/store.js';
import type { Pool } from '../pool/pool.js';
import type { Volume } from '../volume/volume.js';
import type { MapPageSnapshot } from '../volume/allocation-map.js';
import type { ChangeTracker } from '../volume/change-tracker.js';

/** A metadata change that must become durable in the same transaction as the next commit's pages. */
export type MetaOperation = (store: MetaStore) => void;

export class Committer {
  readonly #store: MetaStore;
  readonly #pool: Pool;
  readonly #logger: Logger;
  readonly #volumes: () => Iterable<Volume>;
  readonly #inflightWrites = new Set<Promise<unknown>>();
  #pendingOperations: MetaOperation[] = [];
  #running: Promise<void> | undefined;
  #queued: Promise<void> | undefined;
  /** What the queued commit will be: a full one as soon as any of its waiters asked for one. */
  #queuedKind: CommitKind | undefined;
  /** Commits completed since start; tests and metrics read it. */
  commitCount = 0;
  /** Marks-only commits completed since start. */
  changeMarkCommitCount = 0;

  constructor(store: MetaStore, pool: Pool, logger: Logger, volumes: () => Iterable<Volume>) {
    this.#store = store;
    this.#pool = pool;
    this.#logger = logger;
    this.#volumes = volumes;
  }

  trackWrite(write: Promise<unknown>): void {
    this.#inflightWrites.add(write);
    const forget = (): void => void this.#inflightWrites.delete(write);
    write.then(forget, forget);
  }

  /** Queues a metadata change for the next commit's transaction. */
  enqueue(operation: MetaOperation): void {
    this.#pendingOperations.push(operation);
  }

  /** Map pages, bitmap pages, frees or queued operations not yet committed. */
  get hasUncommittedMetadata(): boolean {
    if (this.#pendingOperations.length > 0 || this.#pool.hasUncommittedMetadata) return true;
    for (const volume of this.#volumes()) if (volume.map.hasDirtyPages || volume.changes?.hasDirtyPages) return true;
    return false;
  }

  /** Resolves when everything written before the call is durable (data, maps, frees). */
  sync(): Promise<void> {
    return this.#request('full');
  }

  /** Resolves when every change-tracking mark set before the call is durable (data need not be). */
  syncChangeMarks(): Promise<void> {
    return this.#request('marks');
  }

  #request(kind: CommitKind): Promise<void> {
    if (!this.#running) {
      this.#running = (kind === 'full' ? this.#commit(true) : this.#commitChangeMarks()).finally(() => (this.#running = undefined));
      return this.#running;
    }
    // A commit is running and may have captured its state before our caller's writes: join the next.
    this.#queuedKind = kind === 'full' ? 'full' : (this.#queuedKind ?? 'marks');
    this.#queued ??= this.#running
      .catch(() => undefined)
      .then(() => {
        const queuedKind = this.#queuedKind!;
        this.#queued = undefined;
        this.#queuedKind = undefined;
        return this.#request(queuedKind);
      });
    return this.#queued;
  }

  /**
   * The background commit (nobody waits on it): the same order and atomicity, but its SQLite
   * transaction is not fsync'ed on its own — nothing was promised durable, and the fsync of a large
   * commit would stall the event loop (better-sqlite3 is synchronous). The next durable commit's
   * fsync makes it durable too (WAL is written in order). Skipped when any commit is under way.
   */
  backgroundCommit(): Promise<void> | undefined {
    if (this.#running || this.#queued) return undefined;
    this.#running = this.#commit(false).finally(() => (this.#running = undefined));
    return this.#running;
  }

  async #commit(durable: boolean): Promise<void> {
    const poolSnapshot = this.#pool.captureForCommit();
    const mapSnapshots: Array<{ volume: Volume; pages: MapPageSnapshot[] }> = [];
    for (const volume of this.#volumes()) {
      if (volume.map.hasDirtyPages) mapSnapshots.push({ volume, pages: volume.map.captureDirty() });
    }
    const changeSnapshots = this.#captureChanges();
    const operations = this.#pendingOperations;
    this.#pendingOperations = [];
    const writes = [...this.#inflightWrites];
    try {
      await Promise.allSettled(writes);
      await this.#pool.syncDisks();
      const transaction = durable ? this.#store.transaction.bind(this.#store) : this.#store.lazyTransaction.bind(this.#store);
      transaction(() => {
        for (const operation of operations) operation(this.#store);
        for (const { volume, pages } of mapSnapshots) {
          for (const page of pages) this.#store.putMapPage(volume.row.id, page.pageIndex, page.blob);
        }
        this.#pool.persist(poolSnapshot);
        for (const { volume, capture } of changeSnapshots) persistChanges(this.#store, volume.row.id, capture);
      });
    } catch (error) {
      this.#pool.commitFailed(poolSnapshot);
      for (const { volume, pages } of mapSnapshots) volume.map.markDirty(pages.map((page) => page.pageIndex));
      for (const { volume } of changeSnapshots) volume.changes?.commitFailed();
      this.#pendingOperations = operations.concat(this.#pendingOperations);
      this.#logger.error({ err: error }, 'commit failed; it will be retried');
      throw error;
    }
    this.#pool.afterCommit(poolSnapshot);
    for (const { volume } of changeSnapshots) volume.changes?.commitSucceeded();
    this.commitCount++;
  }

  /** Only the change-tracking pages, in a durable transaction; nothing else is captured or synced. */
  async #commitChangeMarks(): Promise<void> {
    const changeSnapshots = this.#captureChanges();
    try {
      this.#store.transaction(() => {
        for (const { volume, capture } of changeSnapshots) persistChanges(this.#store, volume.row.id, capture);
      });
    } catch (error) {
      for (const { volume } of changeSnapshots) volume.changes?.commitFailed();
      this.#logger.error({ err: error }, 'commit of change-tracking marks failed; it will be retried');
      throw error;
    }
    for (const { volume } of changeSnapshots) volume.changes?.commitSucceeded();
    this.changeMarkCommitCount++;
  }

  /** Every volume's change-tracking pages to write, for a commit of either kind. */
  #captureChanges(): Array<{ volume: Volume; capture: ChangeCapture }> {
    const snapshots: Array<{ volume: Volume; capture: ChangeCapture }> = [];
    for (const volume of this.#volumes()) {
      if (volume.changes) snapshots.push({ volume, capture: volume.changes.captureDirty() });
    }
    return snapshots;
  }
}

type CommitKind = 'full' | 'marks';

type ChangeCapture = ReturnType<ChangeTracker['captureDirty']>;

function persistChanges(store: MetaStore, volumeId: number, capture: ChangeCapture): void {
  if (capture.replaceCurrent) store.clearChangeSlot(volumeId, 'current');
  if (capture.replaceHeld) {
    store.clearChangeSlot(volumeId, 'held');
    for (const page of capture.replaceHeld) store.putChangePage(volumeId, 'held', page.pageIndex, page.blob);
  }
  for (const page of capture.pages) store.putChangePage(volumeId, page.slot, page.pageIndex, page.blob);
}
