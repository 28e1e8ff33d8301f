/**
 * Point-in-time copies (`copy create SOURCE TARGET --mode instant|compact`): setting one up,
 * running its background copy as a job, resuming it after a restart, and listing copies.
 *
 * Setup is the only moment the source waits: after a group commit (so the point in time is
 * durable), the list of the source's mapped extents is taken and the target created in one
 * synchronous step; from then on the copy is logically complete (see session.ts).
 */
import type { Logger } from '../lib/log.js';
import { ThinError } from '../lib/errors.js';
import { assert } from '../lib/assert.js';
import type { MetaStore, VolumeRow } from '../meta/store.js';
import type { Pool } from '../pool/pool.js';
import type { Volume } from '../volume/volume.js';
import { JobAbortError, type JobContext, type JobManager } from '../jobs/job-manager.js';
import { LIMITS } from '../lib/limits.js';
import { CopyStore, EXTENT_LIST_PAGE_ENTRIES, type CopyMode, type CopyRow } from './copy-store.js';
import { CopySession } from './session.js';
import { metadataExtentsFor, renderCompactHeaderExtent, COMPACT_HEADER_VERSION } from './compact-header.js';
import { runCopyEngine } from './engine.js';

/** What the copy manager needs from the array that owns it. */
export interface CopyHost {
  readonly store: MetaStore;
  readonly pool: Pool;
  readonly jobs: JobManager;
  volume(name: string): Volume;
  hasVolume(name: string): boolean;
  volumeById(id: number): Volume | undefined;
  /** Inserts a target volume row inside the caller's transaction (attached only once it commits). */
  insertVolumeRow(name: string, capacityBytes: number, state: string, attr: 'user' | 'work'): VolumeRow;
  attachVolume(row: VolumeRow): Volume;
  deleteVolume(name: string): Promise<void>;
  setVolumeState(volume: Volume, state: string): void;
  sync(): Promise<void>;
  trackWrite(write: Promise<unknown>): void;
}

export interface CopyInfo {
  id: number;
  source: string;
  target: string;
  mode: CopyMode;
  state: CopyRow['state'];
  pointInTime: string;
  finishedAt: string | null;
  jobId: string | null;
  extentBytes: number;
  sourceCapacityBytes: number;
  /** Source extents mapped at the point in time: what the copy holds. */
  extentCount: number;
  metadataExtents: number;
  targetCapacityBytes: number;
  /** Compact copies: X_i (1-based, as in the seed) → source extent A_j; with --table only. */
  correspondence?: Array<{ x: number; sourceExtent: number; sourceOffsetBytes: number }>;
}

const COPY_JOB = 'copy';

export class CopyManager {
  readonly #host: CopyHost;
  readonly #logger: Logger;
  readonly #copies: CopyStore;
  readonly #sessions = new Map<number, CopySession>();

  constructor(host: CopyHost, logger: Logger) {
    this.#host = host;
    this.#logger = logger;
    this.#copies = new CopyStore(host.store);
    host.jobs.register({ name: COPY_JOB, resumable: true, run: (ctx, params) => this.#runJob(ctx, params) });
  }

  /** At open: copies left running by a restart or crash get their hooks back before any I/O. */
  async reattach(): Promise<void> {
    for (const row of this.#copies.list().filter((copy) => copy.state === 'copying' && copy.listComplete === 0)) {
      // Cut before its list was written: nothing to resume from. The source is whole; the target goes.
      const target = this.#host.volumeById(row.targetVolumeId);
      this.#copies.finish(row.id, 'failed');
      if (target) await this.#host.deleteVolume(target.name);
    }
    for (const row of this.#copies.list().filter((copy) => copy.state === 'copying')) {
      const source = this.#host.volumeById(row.sourceVolumeId);
      const target = this.#host.volumeById(row.targetVolumeId);
      assert(source !== undefined && target !== undefined, `copy ${row.id} names volumes that exist`);
      const sourceExtents = this.#copies.sourceExtents(row.id, row.extentCount);
      const session = new CopySession(row, source, target, sourceExtents, this.#headerFor(row, sourceExtents), this.#host, true);
      session.copyOnRead = row.jobId !== null; // a copy, not a backup's view
      session.attach();
      this.#sessions.set(row.id, session);
    }
  }

  /** Whether a running copy depends on the volume (delete, shrink and attribute changes are refused). */
  busyWith(volume: Volume): CopySession | undefined {
    for (const session of this.#sessions.values()) if (session.source === volume || session.target === volume) return session;
    return undefined;
  }

  async create(sourceName: string, targetName: string, mode: CopyMode, validateTargetName: (name: string) => string): Promise<CopyInfo> {
    if (mode !== 'instant' && mode !== 'compact') throw new ThinError('INVALID_ARGUMENT', "mode: must be 'instant' or 'compact'", { field: 'mode' });
    validateTargetName(targetName);
    const session = await this.#setUp(sourceName, targetName, mode, 'user');
    session.copyOnRead = true;
    const row = session.row;
    const job = this.#host.jobs.start(COPY_JOB, { copyId: row.id }, `${mode} copy of ${sourceName} to ${targetName}`);
    this.#copies.setJob(row.id, job.id);
    row.jobId = job.id;
    this.#logger.info({ copy: row.id, source: sourceName, target: targetName, mode, extents: row.extentCount, job: job.id }, 'copy created');
    return this.#info(row, false);
  }

  /**
   * A compact point-in-time view of a volume for a backup to stream (seed 001: the compact copy
   * whose data is then backed up sequentially). Nothing is copied in the background: the backup
   * reads each extent once through the view, then discards it. The view is a working volume.
   */
  createView(sourceName: string, viewName: string, atPointInTime?: (session: CopySession) => void): Promise<CopySession> {
    return this.#setUp(sourceName, viewName, 'compact', 'work', atPointInTime);
  }

  /** Drops a view (or an unfinished copy): hooks off, target volume deleted, its copy row gone. */
  async discard(session: CopySession): Promise<void> {
    session.detach();
    this.#sessions.delete(session.row.id);
    await this.#host.deleteVolume(session.target.name);
  }

  /** The session whose target is `targetName`, if one runs (views left by a crash are found this way). */
  sessionOfTarget(targetName: string): CopySession | undefined {
    for (const session of this.#sessions.values()) if (session.target.name === targetName) return session;
    return undefined;
  }

  /** Validates, takes the point in time, creates the target and attaches the session (no job). */
  async #setUp(sourceName: string, targetName: string, mode: CopyMode, attr: 'user' | 'work', atPointInTime?: (session: CopySession) => void): Promise<CopySession> {
    const source = this.#host.volume(sourceName);
    this.#refuseBusySource(source);
    this.#refuseExistingTarget(targetName);
    // The point in time must be durable before it is taken: everything written so far is committed.
    await this.#host.sync();
    // ---- From here to the end of setup nothing awaits: this is the only stall the source sees.
    this.#refuseBusySource(source); // re-checked: the world may have changed during the sync
    this.#refuseExistingTarget(targetName);
    const sourceExtents = source.map.mappedExtentList();
    const extentBytes = source.extentBytes;
    const metadataExtents = mode === 'compact' ? metadataExtentsFor(sourceExtents.length, extentBytes) : 0;
    const targetCapacityBytes = mode === 'compact' ? (metadataExtents + sourceExtents.length) * extentBytes : source.sizeBytes;
    const neededExtents = sourceExtents.length + metadataExtents;
    const freeExtents = this.#host.pool.extentsTotal - this.#host.pool.extentsUsed;
    if (attr === 'user' && neededExtents > freeExtents) {
      // A view copies nothing, so only real copies need the room up front.
      throw new ThinError('NO_SPACE', `the pool cannot hold this copy: it needs ${neededExtents} extents, ${freeExtents} are free`);
    }
    const pointInTime = new Date().toISOString();
    let targetRow: VolumeRow | undefined;
    const row = this.#host.store.transaction(() => {
      targetRow = this.#host.insertVolumeRow(targetName, targetCapacityBytes, 'copying', attr);
      const fields = {
        sourceVolumeId: source.row.id, targetVolumeId: targetRow.id, mode, extentBytes, sourceCapacityBytes: source.sizeBytes,
        sourceName: source.name, sourceUuid: source.row.uuid, extentCount: sourceExtents.length, metadataExtents, pointInTime,
      };
      const id = this.#copies.insert(fields);
      return { ...fields, id, state: 'copying' as const, jobId: null as string | null, finishedAt: null as string | null, listComplete: 0 };
    });
    const target = this.#host.attachVolume(targetRow!);
    const session = new CopySession(row, source, target, sourceExtents, this.#headerFor(row, sourceExtents), this.#host, false);
    session.attach();
    this.#sessions.set(row.id, session);
    // Still inside the synchronous setup: whatever the caller does here shares the point in time.
    atPointInTime?.(session);
    // ---- Setup done. A copy's list (megabytes for millions of extents) is written after it, in
    // chunks between which the event loop serves I/O; a crash before it completes abandons the copy.
    // A backup's view never outlives a restart (Backups.recover drops it), so its list is not
    // written at all: reattach() drops a view without one the same way, and a backup of a volume
    // of a million extents does not write 8 MB of metadata it will never read.
    if (attr === 'user') await this.#persistList(row.id, sourceExtents);
    return session;
  }

  async #persistList(copyId: number, sourceExtents: Float64Array): Promise<void> {
    const pages = Math.ceil(sourceExtents.length / EXTENT_LIST_PAGE_ENTRIES);
    for (let first = 0; first < pages; first += LIMITS.copyListPagesPerTransaction) {
      this.#host.store.lazyTransaction(() => this.#copies.putListPages(copyId, sourceExtents, first, first + LIMITS.copyListPagesPerTransaction));
      await new Promise((resolve) => setImmediate(resolve));
    }
    this.#host.store.transaction(() => this.#copies.markListComplete(copyId)); // FULL: makes the chunks durable too
  }

  /** A volume is being deleted: copies that name it go with it (inside the delete's transaction). */
  forgetVolume(volumeId: number): void {
    this.#copies.forgetVolume(volumeId);
  }

  list(): CopyInfo[] {
    return this.#copies.list().map((row) => this.#info(row, false));
  }

  /** A copy by id or by target volume name. */
  show(idOrTarget: string, withTable: boolean): CopyInfo {
    const rows = this.#copies.list();
    const row = /^\d+$/.test(idOrTarget)
      ? rows.find((copy) => copy.id === Number(idOrTarget))
      : rows.filter((copy) => this.#host.volumeById(copy.targetVolumeId)?.name === idOrTarget).pop();
    if (!row) throw new ThinError('NOT_FOUND', `no copy ${JSON.stringify(idOrTarget)} (give a copy id or a target volume name)`, { field: 'id' });
    return this.#info(row, withTable);
  }

  #refuseBusySource(source: Volume): void {
    if (source.row.state !== 'ready') throw new ThinError('BUSY', `volume ${source.name} is ${source.row.state}; it can be copied once that is done`);
    const busy = this.busyWith(source);
    if (busy) throw new ThinError('BUSY', `volume ${source.name} is already part of copy ${busy.row.id} (job ${busy.row.jobId ?? '?'}); wait for it to finish`);
  }

  #refuseExistingTarget(targetName: string): void {
    if (this.#host.hasVolume(targetName)) throw new ThinError('ALREADY_EXISTS', `volume ${targetName} already exists; a copy makes a new volume`, { field: 'target' });
  }

  /** A compact copy's header, rendered extent by extent when needed (reads of it, or the job writing it). */
  #headerFor(row: CopyRow, sourceExtents: Float64Array): ((extentIndex: number) => Buffer) | undefined {
    if (row.mode !== 'compact') return undefined;
    return (extentIndex) => renderCompactHeaderExtent(
      {
        version: COMPACT_HEADER_VERSION, sourceName: row.sourceName, sourceUuid: row.sourceUuid, sourceCapacityBytes: row.sourceCapacityBytes,
        extentBytes: row.extentBytes, extentCount: row.extentCount, metadataExtents: row.metadataExtents, pointInTime: row.pointInTime,
      },
      sourceExtents,
      extentIndex,
    );
  }

  async #runJob(ctx: JobContext, params: unknown): Promise<unknown> {
    const copyId = (params as { copyId?: unknown } | undefined)?.copyId;
    const session = typeof copyId === 'number' ? this.#sessions.get(copyId) : undefined;
    if (!session) throw new ThinError('NOT_FOUND', `copy ${String(copyId)} is not in progress`);
    const extentBytes = session.extentBytes;
    ctx.setTotal(session.remainingItems * extentBytes);
    let reportedBytes = session.placedBytes;
    const report = (): void => {
      ctx.addDone(session.placedBytes - reportedBytes);
      reportedBytes = session.placedBytes;
    };
    try {
      await session.writeHeader();
      await runCopyEngine(session.work(), {
        startIndex: 0, // done items are skipped quickly: the target's map is the record of progress
        batchItemsMax: LIMITS.copyBatchExtentsMax,
        batchesInFlightMax: LIMITS.copyBatchesInFlightMax,
        signal: ctx.signal,
        onProgress: report,
        onPosition: () => undefined,
      });
      await this.#host.sync();
    } catch (error) {
      if (error instanceof JobAbortError && error.why === 'shutdown') throw error; // resumes at the next start
      await this.#abandon(session, error);
      throw error;
    }
    report();
    this.#finish(session);
    return { copyId: session.row.id, target: session.target.name, copiedBytes: session.placedBytes };
  }

  #finish(session: CopySession): void {
    session.detach();
    this.#sessions.delete(session.row.id);
    this.#host.store.transaction(() => {
      this.#copies.finish(session.row.id, 'complete');
      this.#host.setVolumeState(session.target, 'ready');
    });
    this.#logger.info({ copy: session.row.id, target: session.target.name }, 'copy complete');
  }

  /** A cancelled or failed copy leaves nothing half-made: the target goes, the source is untouched. */
  async #abandon(session: CopySession, error: unknown): Promise<void> {
    session.detach();
    this.#sessions.delete(session.row.id);
    this.#copies.finish(session.row.id, 'failed');
    this.#logger.warn({ copy: session.row.id, err: error }, 'copy abandoned; deleting its target');
    await this.#host.deleteVolume(session.target.name).catch((deleteError: unknown) => {
      this.#logger.error({ err: deleteError, target: session.target.name }, 'could not delete the target of an abandoned copy');
    });
  }

  #info(row: CopyRow, withTable: boolean): CopyInfo {
    const target = this.#host.volumeById(row.targetVolumeId);
    const info: CopyInfo = {
      id: row.id, source: row.sourceName, target: target?.name ?? '(deleted)', mode: row.mode, state: row.state, pointInTime: row.pointInTime,
      finishedAt: row.finishedAt, jobId: row.jobId, extentBytes: row.extentBytes, sourceCapacityBytes: row.sourceCapacityBytes,
      extentCount: row.extentCount, metadataExtents: row.metadataExtents, targetCapacityBytes: target?.sizeBytes ?? 0,
    };
    // A running copy (or a backup's view, whose list is never stored) has its list in memory; a
    // copy cut before its list was stored has none to show, rather than a table of zeros.
    const list = withTable ? (this.#sessions.get(row.id)?.sourceExtents ?? (row.listComplete ? this.#copies.sourceExtents(row.id, row.extentCount) : undefined)) : undefined;
    if (list) info.correspondence = Array.from(list, (sourceExtent, i) => ({ x: i + 1, sourceExtent, sourceOffsetBytes: sourceExtent * row.extentBytes }));
    return info;
  }
}
