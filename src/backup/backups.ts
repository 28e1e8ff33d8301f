/**
 * Server-free backup and restore (SPEC §2.C; seeds 000–003). Everything runs inside the daemon as
 * jobs: no data passes through the CLI.
 *
 * backup create: a compact point-in-time view of the volume (seed 001: only the used extents,
 * with the correspondence table) is streamed strictly sequentially to the medium, then dropped;
 * the catalog keeps the management information (seed 003). The volume stays online throughout:
 * extents it changes meanwhile are handed to the view (src/copy), so the stream is the point in time.
 *
 * restore, two methods (seed 001 FIG. 14B/14C):
 *  - remap: each record is written once to a new physical extent, and when the whole stream has
 *    checked out, the volume's capacity and allocation map are set from the header's tables in one
 *    step — no second data pass, and a damaged stream leaves the volume as it was;
 *  - writeback: each record is written to its original address in an existing volume, then the
 *    extents unmapped at backup time are trimmed; a failure marks the volume `incomplete`.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ThinError, isThinError, messageOf } from '../lib/errors.js';
import { LIMITS } from '../lib/limits.js';
import { WriteBehind } from '../lib/write-behind.js';
import { ChangeTracker } from '../volume/change-tracker.js';
import type { Logger } from '../lib/log.js';
import type { MetaStore } from '../meta/store.js';
import type { Pool } from '../pool/pool.js';
import type { Volume } from '../volume/volume.js';
import type { JobContext, JobManager } from '../jobs/job-manager.js';
import type { CopyManager } from '../copy/copies.js';
import { BackupCatalog, type BackupEntry } from './catalog.js';
import { BACKUP_LIMITS, BackupStreamReader, BackupStreamWriter, allocationRunsFromExtents, extentsOfRuns, type BackupHeader } from './format/index.js';
import { parseMedium, formatMedium, type Medium, type MediumReader, type MediumWriter } from './media/medium.js';
import { requireFreeEnd } from './media/file-medium.js';
import { openMediumReader, openMediumWriter } from './media/open.js';
import { REGION_LABEL_BYTES, RegionReader, RegionWriter, parseRegionLabel, regionCapacityBytes } from './media/volume-medium.js';
import { backupIdsInDir } from './media/dir-medium.js';
import { resolveUnderRoots } from './media/roots.js';
import { DataMoverPool } from './data-mover.js';
import { RECORD_FIELDS } from './data-mover-protocol.js';

export interface BackupHost {
  readonly store: MetaStore;
  readonly pool: Pool;
  readonly jobs: JobManager;
  readonly copies: CopyManager;
  volume(name: string): Volume;
  hasVolume(name: string): boolean;
  /** Every volume's name (backup regions are looked for among them). */
  volumeNames(): string[];
  createVolumeForRestore(name: string, capacityBytes: number): Promise<Volume>;
  setVolumeState(volume: Volume, state: string): void;
  setVolumeCapacity(volume: Volume, capacityBytes: number): void;
  isBusy(volume: Volume): boolean;
  /** NBD connections that have the volume open read-write now. */
  exportWriters(name: string): number;
  deleteVolume(name: string): Promise<void>;
  trackingBase(volume: Volume): string | undefined;
  setTrackingBase(volume: Volume, backupId: string): void;
  sync(): Promise<void>;
  trackWrite(write: Promise<unknown>): void;
}

export interface BackupCreateRequest {
  volume: string;
  to: string;
  /** Only the extents changed since the volume's previous backup (a full backup when there is none). */
  incremental?: boolean;
  /** How the point in time is taken (backupMethodOf): 'compact', the default, is the only one so far. */
  via?: string;
  mediaSizeBytes?: number;
  labels?: string[];
  description?: string;
}

export interface RestoreRequest {
  /** A catalog id (bk-…) or a medium (file:…, dir:…). */
  source: string;
  to: string;
  method: 'remap' | 'writeback';
  create: boolean;
  /** Restore even though hosts have the volume open read-write over NBD. */
  force?: boolean;
}

const BACKUP_JOB = 'backup';
const COPY_JOB = 'backup-copy';
const RESTORE_JOB = 'restore';
const VERIFY_JOB = 'verify';

export class BackupManager {
  readonly #host: BackupHost;
  readonly #logger: Logger;
  /** Worker threads that move backups' data (src/backup/data-mover.ts). */
  readonly #movers = new DataMoverPool();
  /** A mover is started a little after the array opens, so that the first backup finds one ready. */
  readonly #moverPrestart = setTimeout(() => this.#movers.prestart(), MOVER_PRESTART_DELAY_MS).unref();
  readonly #mediaRoots: string[];
  readonly catalog: BackupCatalog;
  /** `-` media the API attached, until their job opens them: backup id → the CLI's stdout; restore attachment → its stdin. */
  readonly #attachedWriters = new Map<string, MediumWriter>();
  readonly #attachedReaders = new Map<string, MediumReader>();
  /** Entries between a delete's checks and their removal (their media being purged). */
  readonly #deleting = new Set<string>();
  /**
   * Volumes named as restore targets, from the request to the job's end: the job marks a volume
   * 'restoring' only once its stream's header is read (a FIFO may keep it waiting), and meanwhile
   * no backup may take the volume as its region.
   */
  readonly #restoreTargets = new Set<string>();
  /** Entries that queued or running restore, verify and copy jobs read: id → how many such jobs. */
  readonly #reading = new Map<string, number>();

  constructor(host: BackupHost, logger: Logger, mediaRoots: readonly string[]) {
    this.#host = host;
    this.#logger = logger;
    this.#mediaRoots = mediaRoots.map((root) => path.resolve(root));
    this.catalog = new BackupCatalog(host.store);
    // Streams to a FIFO or a tape cannot resume: a backup cut by a restart ends failed, clearly.
    // A `-` medium the job never opened (it failed first) is cut here, so the CLI is not left waiting.
    host.jobs.register({
      name: BACKUP_JOB, resumable: false,
      run: (ctx, params) => this.#runBackup(ctx, params),
      finished: (params) => void this.#afterBackupJob((params as { backupId: string }).backupId),
    });
    host.jobs.register({
      name: RESTORE_JOB, resumable: false,
      run: (ctx, params) => this.#runRestore(ctx, params),
      finished: (params) => {
        this.#release((params as { readIds?: string[] }).readIds);
        this.#restoreTargets.delete((params as { to: string }).to);
        void this.#dropAttached(this.#attachedReaders, (params as { attachment: string | null }).attachment);
      },
    });
    host.jobs.register({
      name: VERIFY_JOB, resumable: false,
      run: (ctx, params) => this.#runVerify(ctx, params),
      finished: (params) => this.#release((params as { readIds?: string[] }).readIds),
    });
    host.jobs.register({
      name: COPY_JOB, resumable: false,
      run: (ctx, params) => this.#runCopy(ctx, params),
      // A copy cancelled while queued never ran: its entry ends failed, not "running" for ever.
      finished: (params) => {
        const { copyId, readIds } = params as { copyId: string; readIds?: string[] };
        this.#release(readIds);
        if (this.catalog.get(copyId)?.state === 'running') this.catalog.fail(copyId, 'the job ended before it ran');
      },
    });
  }

  /** At array close, once no job runs: ends the data movers' threads. */
  async close(): Promise<void> {
    clearTimeout(this.#moverPrestart);
    await this.#movers.close();
  }

  /** At open: backups cut by a crash or restart end failed, and their views are dropped. */
  async recover(): Promise<void> {
    for (const entry of this.catalog.list().filter((backup) => backup.state === 'running')) {
      await this.#emptyFailedRegion(entry);
      this.catalog.fail(entry.id, 'interrupted by a restart of the daemon before it completed');
      if (this.#host.hasVolume(entry.volumeName)) this.#host.volume(entry.volumeName).changes?.returnHeld();
      const view = this.#host.copies.sessionOfTarget(viewName(entry.id));
      if (view) await this.#host.copies.discard(view);
    }
  }

  // ---- backup create ------------------------------------------------------------------------

  /**
   * Takes the point in time (the view) before it returns; the stream is then written by a job.
   * `attached` is the medium for `to: "-"`: the API's HTTP response, streamed to the CLI's stdout
   * (POST /backups/stream). Any other medium is opened by the job under the media roots.
   */
  async create(request: BackupCreateRequest, attached?: MediumWriter): Promise<BackupEntry> {
    const method = backupMethodOf(request.via);
    const volume = this.#host.volume(request.volume);
    const medium = request.to === '-' ? this.#attachedMedium(attached !== undefined, 'to', '/backups/stream', '--to -') : await this.#checkedMedium(request.to, 'to');
    const labels = request.labels ?? [];
    if (!Array.isArray(labels) || labels.some((label) => typeof label !== 'string' || label.length > 200)) {
      throw new ThinError('INVALID_ARGUMENT', 'labels: a list of strings of at most 200 characters', { field: 'labels' });
    }
    // The stream header bounds them in bytes (UTF-8): say so now, not when the job writes the header.
    if (labels.length > BACKUP_LIMITS.labelsMax || labels.some((label) => Buffer.byteLength(label) > BACKUP_LIMITS.labelBytesMax)) {
      throw new ThinError('INVALID_ARGUMENT', `labels: at most ${BACKUP_LIMITS.labelsMax} labels of at most ${BACKUP_LIMITS.labelBytesMax} bytes (UTF-8)`, { field: 'labels' });
    }
    if (Buffer.byteLength(request.description ?? '') > BACKUP_LIMITS.descriptionBytesMax) {
      throw new ThinError('INVALID_ARGUMENT', `description: at most ${BACKUP_LIMITS.descriptionBytesMax} bytes (UTF-8)`, { field: 'description' });
    }
    requireCartridgeSize(medium, request.mediaSizeBytes);
    await requireFreshDestination(medium);
    const parent = request.incremental ? this.#incrementalParent(volume) : undefined;
    if (request.incremental && !parent) this.#logger.info({ volume: volume.name }, 'no complete previous backup to build on: taking a full backup');
    // Synchronous from here to the insert: two requests cannot both take a region.
    if (medium.kind === 'volume') {
      const estimate = this.#streamEstimate(volume);
      this.#requireFreshRegion(medium, volume.name, parent ? (estimate.incrementalBytes ?? estimate.fullBytes) : estimate.fullBytes);
    }
    const number = this.catalog.nextNumber();
    const id = `bk-${String(number).padStart(6, '0')}`;
    const now = new Date().toISOString();
    this.catalog.insert({
      id, number, volumeName: volume.name, volumeUuid: volume.row.uuid, pointInTime: now, method,
      kind: parent ? 'incremental' : 'full', parentId: parent?.id ?? null,
      generation: this.catalog.nextGeneration(volume.row.uuid), medium: formatMedium(medium), capacityBytes: volume.sizeBytes,
      extentBytes: volume.extentBytes, labels, description: request.description ?? '', copiedFrom: null, createdAt: now,
    });
    try {
      // At the point in time: the changes so far are held for this backup; tracking starts afresh.
      await this.#host.copies.createView(volume.name, viewName(id), () => {
        volume.changes ??= ChangeTracker.empty();
        volume.changes.holdForBackup();
      });
    } catch (error) {
      this.catalog.remove(id);
      throw error;
    }
    if (attached) this.#attachedWriters.set(id, attached);
    let job: { id: string };
    try {
      job = this.#host.jobs.start(BACKUP_JOB, { backupId: id, mediaSizeBytes: request.mediaSizeBytes ?? null }, `backup of ${volume.name} to ${medium.kind === 'stdio' ? "the CLI's stdout" : formatMedium(medium)}`);
    } catch (error) {
      // No job (too many, or shutting down): nothing of this backup may stay behind.
      await this.#releaseUnrun(id);
      this.catalog.remove(id);
      throw error;
    }
    this.catalog.setJob(id, job.id);
    return this.catalog.get(id)!;
  }

  /** The backup an incremental of `volume` builds on: its tracking base, if complete and of this volume. */
  #incrementalParent(volume: Volume): BackupEntry | undefined {
    const baseId = this.#host.trackingBase(volume);
    const parent = baseId ? this.#present(baseId) : undefined;
    if (!parent || parent.state !== 'complete' || parent.volumeUuid !== volume.row.uuid || !volume.changes) return undefined;
    return parent;
  }

  async #runBackup(ctx: JobContext, params: unknown): Promise<unknown> {
    const { backupId, mediaSizeBytes } = params as { backupId: string; mediaSizeBytes: number | null };
    const entry = this.#entry(backupId);
    let writer: BackupStreamWriter | undefined;
    let mediumWriter: MediumWriter | undefined;
    const view = this.#host.copies.sessionOfTarget(viewName(backupId));
    if (!view) throw new ThinError('NOT_FOUND', `the point-in-time view of backup ${backupId} is gone`);
    const volume = view.source;
    try {
      const list = view.sourceExtents;
      // A full backup streams every used extent; an incremental only those changed since its parent.
      const held = entry.kind === 'incremental' ? volume.changes?.heldSet() : undefined;
      const recordIndexes = recordIndexesOf(list, held);
      const correspondence = new Float64Array(recordIndexes.length);
      for (let r = 0; r < recordIndexes.length; r++) correspondence[r] = list[recordIndexes[r]!]!;
      const medium = parseMedium(entry.medium);
      mediumWriter = await this.#openWriter(medium, backupId, mediaSizeBytes ?? undefined, ctx.signal);
      writer = new BackupStreamWriter(mediumWriter, {
        backupId, kind: entry.kind, ...(entry.parentId ? { parentBackupId: entry.parentId } : {}), sourceName: view.row.sourceName, sourceUuid: view.row.sourceUuid, sourceCapacityBytes: view.row.sourceCapacityBytes,
        extentBytes: view.extentBytes, allocationRuns: allocationRunsFromExtents(list), correspondence,
        createdAtMs: Date.parse(view.row.pointInTime), labels: entry.labels, description: entry.description,
      });
      ctx.setTotal(recordIndexes.length * view.extentBytes);
      await writer.writeHeader();
      // The data section moves on a worker thread (src/backup/data-mover.ts), which reads the
      // point-in-time data where the view says it is now.
      const extentBytes = view.extentBytes;
      const describe = (first: number, count: number, into: Float64Array): void => {
        for (let k = 0; k < count; k++) {
          const listIndex = recordIndexes[first + k]!;
          const sourceExtent = list[listIndex]!;
          const location = view.target.diskLocation(view.row.metadataExtents + listIndex);
          const at = k * RECORD_FIELDS;
          into[at] = sourceExtent;
          into[at + 1] = location?.fd ?? -1;
          into[at + 2] = location?.positionBytes ?? 0;
          into[at + 3] = Math.min(extentBytes, view.row.sourceCapacityBytes - sourceExtent * extentBytes);
        }
      };
      let reported = 0;
      const total = recordIndexes.length * extentBytes;
      const streamWriter = writer;
      await this.#movers.withMover((mover) => mover.move({
        writer: streamWriter, extentBytes, recordCount: recordIndexes.length, describe, signal: ctx.signal,
        onProgress: (bytes) => {
          const add = Math.min(bytes, total - reported);
          reported += add;
          ctx.addDone(add);
        },
      }));
      ctx.addDone(total - reported);
      const summary = await writer.finish();
      this.catalog.complete(backupId, { streamBytes: summary.streamBytes, dataBytes: summary.dataBytes, extents: summary.recordCount, digest: summary.digestHex, pointInTime: view.row.pointInTime });
      volume.changes?.releaseHeld();
      this.#host.setTrackingBase(volume, backupId);
      this.#logger.info({ backup: backupId, volume: entry.volumeName, bytes: summary.streamBytes, extents: summary.recordCount }, 'backup complete');
      return { backupId, streamBytes: summary.streamBytes, extents: summary.recordCount, digest: summary.digestHex };
    } catch (error) {
      // The stream writer closes its medium; a medium opened before the writer could be made is closed here.
      await (writer ?? mediumWriter)?.abort().catch(() => undefined);
      volume.changes?.returnHeld(); // still changes since the last complete backup
      await this.#emptyFailedRegion(entry);
      this.catalog.fail(backupId, messageOf(error));
      throw error;
    } finally {
      await this.#host.copies.discard(view);
    }
  }

  // ---- catalog ------------------------------------------------------------------------------

  list(volume?: string): BackupEntry[] {
    return this.catalog.list().filter((entry) => volume === undefined || entry.volumeName === volume);
  }

  show(id: string): BackupEntry {
    return this.#entry(id);
  }

  /**
   * Removes the catalog entry; with purgeMedia also the stream it names (file or cartridges).
   * Refused, with nothing changed, while incrementals build on it and no copy of it stands in (their
   * restores would need it), and purging a stream another entry also names.
   */
  async delete(id: string, purgeMedia: boolean): Promise<void> {
    const entry = this.#entry(id);
    if (entry.state === 'running') throw new ThinError('BUSY', `backup ${id} is still running (job ${entry.jobId ?? '?'}); cancel it first`);
    if (this.#deleting.has(id)) throw new ThinError('BUSY', `backup ${id} is being deleted`);
    if (this.#reading.has(id)) throw new ThinError('BUSY', `backup ${id} is being read by a restore, verify or copy job (job list); delete it once that ends, or cancel the job`);
    // Incrementals name their parent by its stream's id; the original or any complete copy serves.
    // Entries being deleted (their media purged meanwhile) count as gone already.
    const streamId = this.#streamIdOf(entry);
    const dependents = this.#listed().filter((other) => other.parentId === streamId && other.state !== 'failed');
    if (entry.state === 'complete' && dependents.length > 0 && !this.#holders(streamId).some((other) => other.id !== id)) {
      throw new ThinError('CONFLICT', `backup ${id} is the base of ${dependents.map((other) => `${other.id} (${other.kind})`).join(', ')}: their restores need it; delete them first, or keep a copy of it (backup copy)`);
    }
    // From the check to the removal the entry counts as gone (#listed, #incrementalParent): a
    // second delete, a new incremental or a chain restore must not count on it meanwhile.
    this.#deleting.add(id);
    try {
      if (purgeMedia) await this.#purge(entry, streamId);
      const region = purgeMedia ? await this.#regionToPurge(entry, streamId) : undefined;
      this.catalog.remove(id, streamId);
      if (region) await this.#emptyRegion(region);
    } finally {
      this.#deleting.delete(id);
    }
  }

  /** Marks entries as read by a job, from its start to its end (its kind's finished hook), so no delete takes them meanwhile. */
  #hold(ids: readonly string[]): string[] {
    for (const id of ids) this.#reading.set(id, (this.#reading.get(id) ?? 0) + 1);
    return [...ids];
  }

  #release(ids: readonly string[] | undefined): void {
    for (const id of ids ?? []) {
      const left = (this.#reading.get(id) ?? 0) - 1;
      if (left > 0) this.#reading.set(id, left);
      else this.#reading.delete(id);
    }
  }

  /** The catalog without the entries being deleted. */
  #listed(): BackupEntry[] {
    return this.catalog.list().filter((entry) => !this.#deleting.has(entry.id));
  }

  /** The entry `id` unless it is being deleted. */
  #present(id: string): BackupEntry | undefined {
    return this.#deleting.has(id) ? undefined : this.catalog.get(id);
  }

  /** The complete entries, not being deleted, that hold backup `streamId`'s stream: it and its copies. */
  #holders(streamId: string): BackupEntry[] {
    return this.#listed().filter((other) => other.state === 'complete' && this.#streamIdOf(other) === streamId);
  }

  /** A complete copy of backup `id` (the same stream, byte for byte), which a chain can use when `id` itself is gone. */
  #standIn(id: string): BackupEntry | undefined {
    return this.#holders(id).find((other) => other.copiedFrom !== null);
  }

  /**
   * Removes the stream `entry` names, if it is there and no other live entry names it: a plain
   * file (FIFOs and devices hold nothing), or the cartridges of `streamId` in a cartridge set.
   */
  async #purge(entry: BackupEntry, streamId: string): Promise<void> {
    if (entry.medium === '-') return; // streamed to the CLI: nothing of it is held here
    const medium = await this.#checkedMedium(entry.medium, 'medium');
    if (medium.kind === 'file') {
      const stat = await fs.promises.lstat(medium.path).catch(() => undefined);
      if (!stat?.isFile()) return;
      this.#refuseSharedMedium(entry, (other) => other.medium === entry.medium, '');
      await fs.promises.rm(medium.path);
    } else if (medium.kind === 'volume') {
      // Emptied by delete() once the entry is gone (#regionToPurge, #emptyRegion): a crash in
      // between then leaves a region nobody holds, never an entry over an emptied region.
    } else if (medium.kind === 'dir') {
      this.#refuseSharedMedium(entry, (other) => other.medium === entry.medium && this.#streamIdOf(other) === streamId, ` (stream ${streamId})`);
      // Cartridges are named after the stream's backup id (a copy's after its original's), and
      // only those: other files that happen to start with the id stay.
      const cartridge = new RegExp(`^${streamId.replace(/[^A-Za-z0-9_-]/g, '\\$&')}\\.\\d{4,}$`);
      for (const found of await fs.promises.readdir(medium.path, { withFileTypes: true })) {
        if (found.isFile() && cartridge.test(found.name)) await fs.promises.rm(path.join(medium.path, found.name));
      }
    }
  }

  /**
   * A medium holding a stream that another entry, not failed, also names is not purged: a backup
   * that failed because its medium already held another's stream names that medium too, and an
   * entry whose file was moved away may name the file a later backup made there.
   */
  #refuseSharedMedium(entry: BackupEntry, sameStream: (other: BackupEntry) => boolean, what: string): void {
    const sharer = this.catalog.list().find((other) => other.id !== entry.id && other.state !== 'failed' && sameStream(other));
    if (sharer) throw new ThinError('CONFLICT', `${entry.medium}${what} is also named by backup ${sharer.id}: not purged (delete ${entry.id} without --purge-media)`);
  }

  #entry(id: string): BackupEntry {
    const entry = typeof id === 'string' ? this.catalog.get(id) : undefined;
    if (!entry) throw new ThinError('NOT_FOUND', `no backup ${JSON.stringify(id)} in the catalog`, { field: 'id' });
    return entry;
  }

  // ---- backup regions: volume:NAME (seed 003) --------------------------------------------------

  /**
   * The backup that volume `name` holds as a backup region: the entry, running or complete, whose
   * medium is volume:NAME. While there is one, the array exports the volume read-only and refuses
   * to delete, resize or restore into it. Derived from the catalog, so it cannot drift from it.
   */
  regionHolder(name: string): string | undefined {
    // One query for the region's entries, not the whole catalog: this runs at every export open
    // and for every volume a listing shows.
    return this.catalog.liveOnMedium(formatMedium({ kind: 'volume', name })).find((entry) => !this.#deleting.has(entry.id))?.id;
  }

  /** The region a backup entry's medium names, if it names one. */
  #regionNameOf(entry: BackupEntry): string | undefined {
    if (entry.medium === '-') return undefined;
    const medium = parseMedium(entry.medium);
    return medium.kind === 'volume' ? medium.name : undefined;
  }

  /**
   * A backup or a copy may go into volume:NAME only when it is an empty user volume, other than the
   * one backed up, that no backup holds and nobody writes to. Synchronous: called right before the
   * catalog insert, so two requests cannot both pass it.
   */
  #requireFreshRegion(medium: Medium, sourceVolume: string | undefined, needBytes: number): void {
    if (medium.kind !== 'volume') return;
    const name = medium.name;
    const what = `to: volume:${name}`;
    const region = this.#regionVolume(name, 'to');
    if (name === sourceVolume) throw new ThinError('INVALID_ARGUMENT', `${what} is the volume being backed up; a backup region is another volume`, { field: 'to' });
    if (region.row.attr !== 'user') throw new ThinError('INVALID_ARGUMENT', `${what} is a working volume; a backup region is a user volume`, { field: 'to' });
    if (region.readOnly) throw new ThinError('INVALID_ARGUMENT', `${what} is read-only; the array writes the backup into it`, { field: 'to' });
    if (region.sizeBytes % region.extentBytes !== 0) {
      throw new ThinError('INVALID_ARGUMENT', `${what} is ${region.sizeBytes} bytes: a backup region is a whole number of ${region.extentBytes}-byte extents (so that emptying it frees all of it)`, { field: 'to' });
    }
    if (this.#restoreTargets.has(name)) throw new ThinError('BUSY', `${what} is the target of a restore that has not ended`, { field: 'to' });
    const holder = this.regionHolder(name);
    if (holder) throw new ThinError('CONFLICT', `${what} already holds backup ${holder}; delete that backup with --purge-media to reuse the region`, { field: 'to' });
    if (this.#host.isBusy(region)) throw new ThinError('BUSY', `${what} is part of a running copy or restore`, { field: 'to' });
    const writers = this.#host.exportWriters(name);
    if (writers > 0) throw new ThinError('BUSY', `${what} is open read-write by ${writers} NBD client(s); disconnect them (a region holding a backup is exported read-only)`, { field: 'to' });
    if (region.allocatedBytes > 0) {
      throw new ThinError('CONFLICT', `${what} holds data (${region.allocatedBytes} bytes allocated); a backup region must be empty: create a new volume for it, or trim this one`, { field: 'to' });
    }
    // Regions are thin: the stream takes extents from the pool every volume shares.
    const regionBytes = regionCapacityBytes(region.sizeBytes);
    if (needBytes > regionBytes) throw new ThinError('NO_SPACE', `${what} holds a stream of at most ${regionBytes} bytes; this one needs about ${needBytes}: use a larger volume`, { field: 'to' });
    const poolFreeBytes = this.#poolFreeBytes();
    if (needBytes > poolFreeBytes) throw new ThinError('NO_SPACE', `${what}: the stream needs about ${needBytes} bytes and the pool has ${poolFreeBytes} free; add a disk to the pool (pool add) or back up to a file`, { field: 'to' });
  }

  #poolFreeBytes(): number {
    const pool = this.#host.pool;
    return (pool.extentsTotal - pool.extentsUsed) * pool.extentBytes;
  }

  #regionVolume(name: string, field: string): Volume {
    if (!this.#host.hasVolume(name)) throw new ThinError('NOT_FOUND', `${field}: volume:${name}: no volume named ${JSON.stringify(name)} (a backup region is an empty volume of the array)`, { field });
    return this.#host.volume(name);
  }

  /**
   * A backup or copy into a region is failing (or was cut by a restart): the region is emptied, as
   * it was before, and durably so, before the entry is marked failed — after a crash in between the
   * entry is still 'running', and the restart empties the region again (recover).
   */
  async #emptyFailedRegion(entry: BackupEntry): Promise<void> {
    const name = this.#regionNameOf(entry);
    if (name === undefined || !this.#host.hasVolume(name)) return;
    const holder = this.regionHolder(name);
    if (holder !== undefined && holder !== entry.id) return;
    await this.#emptyRegion(name).catch((error: unknown) => this.#logger.warn({ backup: entry.id, region: name, err: error }, 'could not empty the region of a failed backup'));
  }

  /**
   * The region to empty when `entry` is deleted with its media: only a complete entry's, and only
   * while the region's label still names the entry's stream (a failed backup's region was emptied
   * at the failure and may hold a volume's data since; a region may have been reused).
   */
  async #regionToPurge(entry: BackupEntry, streamId: string): Promise<string | undefined> {
    const name = this.#regionNameOf(entry);
    if (entry.state !== 'complete' || name === undefined || !this.#host.hasVolume(name)) return undefined;
    this.#refuseSharedMedium(entry, (other) => other.medium === entry.medium, '');
    const region = this.#host.volume(name);
    const label = parseRegionLabel(await region.read(0, REGION_LABEL_BYTES), region.sizeBytes);
    return typeof label !== 'string' && label.backupId === streamId ? name : undefined;
  }

  /** Unmaps every extent of the region (its size is whole extents) and makes that durable: it reads as zeros and takes no space. */
  async #emptyRegion(name: string): Promise<void> {
    const region = this.#host.volume(name);
    await region.trim(0, region.sizeBytes, { fua: true });
    if (region.allocatedBytes !== 0) throw new ThinError('IO_ERROR', `volume:${name}: ${region.allocatedBytes} bytes are still allocated after emptying the region`);
  }

  /** The entries a region named as a medium holds (held by a restore or verify reading it). */
  #regionEntries(medium: Medium): string[] {
    const holder = medium.kind === 'volume' ? this.regionHolder(medium.name) : undefined;
    return holder === undefined ? [] : [holder];
  }

  // ---- candidates and copies of backups (seed 003) ---------------------------------------------

  /**
   * Where the next backup of `volume` can go (seed 003's destination candidates): each media root
   * as a file, then the cartridge sets in it (the root itself or a directory right under it that
   * already holds cartridges), then the volumes of the array that can take it as a backup region,
   * each with its free space, the size a full and an incremental backup would need now, and
   * whether they fit.
   */
  async candidates(volumeName: string): Promise<BackupCandidate[]> {
    const volume = this.#host.volume(volumeName);
    const { fullBytes, incrementalBytes } = this.#streamEstimate(volume);
    const candidates: BackupCandidate[] = [];
    const candidate = (medium: string, root: string, freeBytes: number): BackupCandidate => ({
      medium, root, freeBytes, fullBytes, incrementalBytes, fitsFull: freeBytes >= fullBytes, fitsIncremental: incrementalBytes !== null && freeBytes >= incrementalBytes,
    });
    for (const root of this.#mediaRoots) {
      candidates.push(candidate(`file:${path.join(root, `${volume.name}-<id>.tbk`)}`, root, await freeBytesIn(root)));
      for (const directory of await cartridgeSetsIn(root)) candidates.push(candidate(`dir:${directory}`, root, await freeBytesIn(directory)));
    }
    // Backup regions inside the array: the volumes a backup of this one may go into now. Regions
    // are thin, so the room is also bounded by the pool's free extents.
    const poolFreeBytes = this.#poolFreeBytes();
    for (const name of this.#host.volumeNames()) {
      try {
        this.#requireFreshRegion({ kind: 'volume', name }, volume.name, 0);
      } catch {
        continue; // not a region for this backup now (the reason is what backup create would say)
      }
      candidates.push(candidate(formatMedium({ kind: 'volume', name }), 'array', Math.min(regionCapacityBytes(this.#host.volume(name).sizeBytes), poolFreeBytes)));
    }
    return candidates;
  }

  /**
   * What the next stream of `volume` takes, over-estimated (header and framing included): a full
   * backup, and an incremental when backup create --incremental would make one (null: it would
   * take a full backup, having no parent to build on).
   */
  #streamEstimate(volume: Volume): { fullBytes: number; incrementalBytes: number | null } {
    const fullBytes = volume.allocatedBytes + BACKUP_OVERHEAD_BYTES + volume.map.mappedCount * RECORD_OVERHEAD_BYTES;
    if (!this.#incrementalParent(volume)) return { fullBytes, incrementalBytes: null };
    let changedExtents = 0;
    for (const extent of volume.changes!.changedExtents(0, Math.ceil(volume.sizeBytes / volume.extentBytes))) if (volume.map.lookup(extent) >= 0) changedExtents++;
    return { fullBytes, incrementalBytes: changedExtents * (volume.extentBytes + RECORD_OVERHEAD_BYTES) + BACKUP_OVERHEAD_BYTES };
  }

  /** `backup copy ID --to MEDIUM`: the stream copied as it is, checked, and catalogued as a copy of ID. */
  async copy(id: string, to: string, mediaSizeBytes?: number): Promise<BackupEntry> {
    const original = this.#entry(id);
    if (original.state !== 'complete') throw new ThinError('CONFLICT', `backup ${id} is ${original.state}; only a complete backup can be copied`);
    const medium = await this.#checkedMedium(to, 'to');
    if (formatMedium(medium) === original.medium) throw new ThinError('INVALID_ARGUMENT', 'to: the copy must go to another medium', { field: 'to' });
    requireCartridgeSize(medium, mediaSizeBytes);
    await requireFreshDestination(medium);
    const streamId = this.#streamIdOf(original);
    if (medium.kind === 'dir' && (await backupIdsInDir(medium.path)).includes(streamId)) {
      throw new ThinError('ALREADY_EXISTS', `to: ${formatMedium(medium)} already holds cartridges of stream ${streamId} (a copy of it is there)`, { field: 'to' });
    }
    this.#requireFreshRegion(medium, undefined, original.streamBytes);
    const number = this.catalog.nextNumber();
    const copyId = `bk-${String(number).padStart(6, '0')}`;
    // copiedFrom names the backup whose stream this is: a copy of a copy is a copy of the original.
    this.catalog.insert({ ...original, id: copyId, number, medium: formatMedium(medium), copiedFrom: streamId, createdAt: new Date().toISOString() });
    let job: { id: string };
    const readIds = this.#hold([original.id]);
    try {
      // sourceId: the entry read, which is `id` (a copy of a copy reads the copy, even when the original is gone).
      job = this.#host.jobs.start(COPY_JOB, { copyId, sourceId: original.id, readIds, mediaSizeBytes: mediaSizeBytes ?? null }, `copy of backup ${id} to ${formatMedium(medium)}`);
    } catch (error) {
      this.#release(readIds);
      this.catalog.remove(copyId); // no job (too many, or shutting down): no entry left "running" for ever
      throw error;
    }
    this.catalog.setJob(copyId, job.id);
    return this.catalog.get(copyId)!;
  }

  async #runCopy(ctx: JobContext, params: unknown): Promise<unknown> {
    const { copyId, sourceId, mediaSizeBytes } = params as { copyId: string; sourceId: string; mediaSizeBytes: number | null };
    const entry = this.#entry(copyId);
    let writer: MediumWriter | undefined;
    try {
      const original = this.#present(sourceId);
      if (original?.state !== 'complete') throw new ThinError('NOT_FOUND', `backup ${sourceId}, the source of copy ${copyId}, is no longer in the catalog`);
      // The stream keeps its own backup id and header: the copy carries the management information.
      const reader = await this.#openReader(await this.#checkedMedium(original.medium, 'source'), this.#streamIdOf(original), ctx.signal);
      try {
        writer = await this.#openWriter(parseMedium(entry.medium), this.#streamIdOf(original), mediaSizeBytes ?? undefined, ctx.signal);
        ctx.setTotal(original.streamBytes);
        for (let chunk = await reader.read(); chunk; chunk = await reader.read()) {
          if (ctx.signal.aborted) throw ctx.signal.reason;
          await writer.write(chunk);
          ctx.addDone(chunk.length);
        }
        await writer.close();
      } finally {
        await reader.close().catch(() => undefined);
      }
      const check = await this.#readThrough(parseMedium(entry.medium), this.#streamIdOf(original), ctx.signal);
      if (check.digest !== original.digest) throw new ThinError('CORRUPT', `the copy on ${entry.medium} reads back with digest ${check.digest}, not ${original.digest}`);
      this.catalog.complete(copyId, { streamBytes: check.streamBytes, dataBytes: original.dataBytes, extents: original.extents, digest: check.digest, pointInTime: original.pointInTime });
      return { backupId: copyId, copiedFrom: entry.copiedFrom, readFrom: original.id, digest: check.digest };
    } catch (error) {
      await writer?.abort().catch(() => undefined);
      await this.#emptyFailedRegion(entry);
      this.catalog.fail(copyId, messageOf(error));
      throw error;
    }
  }

  /** The id the stream on an entry's medium carries: a copy's stream is its original's, byte for byte. */
  #streamIdOf(entry: BackupEntry): string {
    let current = entry;
    while (current.copiedFrom) {
      const original = this.catalog.get(current.copiedFrom);
      if (!original) break;
      current = original;
    }
    return current.copiedFrom ?? current.id;
  }

  /** One checking pass over a medium: the stream's digest and size. */
  async #readThrough(medium: Medium, backupId: string | undefined, signal: AbortSignal): Promise<{ digest: string; streamBytes: number }> {
    const reader = await this.#openReader(medium, backupId, signal);
    try {
      const stream = new BackupStreamReader(reader);
      await stream.readHeader();
      const trailer = await stream.verifyTrailer(); // reads and checks every record on the way
      return { digest: trailer.digestHex, streamBytes: trailer.streamBytes };
    } finally {
      await reader.close().catch(() => undefined);
    }
  }

  // ---- verify -------------------------------------------------------------------------------

  async verify(source: string): Promise<{ jobId: string }> {
    const { medium, backupId } = await this.#resolveSource(source);
    await requireReadable(medium);
    const readIds = this.#hold(backupId ? [backupId] : this.#regionEntries(medium));
    let job: { id: string };
    try {
      job = this.#host.jobs.start(VERIFY_JOB, { medium: formatMedium(medium), backupId, readIds }, `verify ${source}`);
    } catch (error) {
      this.#release(readIds);
      throw error;
    }
    return { jobId: job.id };
  }

  async #runVerify(ctx: JobContext, params: unknown): Promise<unknown> {
    const { medium, backupId } = params as { medium: string; backupId: string | null };
    const entryOfId = backupId ? this.catalog.get(backupId) : undefined;
    const reader = await this.#openReader(parseMedium(medium), entryOfId ? this.#streamIdOf(entryOfId) : undefined, ctx.signal);
    try {
      const stream = new BackupStreamReader(reader);
      const header = await stream.readHeader();
      ctx.setTotal(header.dataBytes);
      for await (const record of stream.records()) {
        if (ctx.signal.aborted) throw ctx.signal.reason;
        ctx.addDone(record.data.length);
      }
      const trailer = await stream.verifyTrailer();
      const entry = backupId ? this.catalog.get(backupId) : undefined;
      if (entry?.digest && entry.digest !== trailer.digestHex) {
        throw new ThinError('CORRUPT', `${medium} holds a stream whose digest ${trailer.digestHex} differs from the catalog's ${entry.digest} for ${entry.id}`);
      }
      return { ok: true, backupId: header.backupId, records: trailer.recordCount, dataBytes: trailer.dataBytes, streamBytes: trailer.streamBytes, digest: trailer.digestHex };
    } finally {
      await reader.close().catch(() => undefined);
    }
  }

  // ---- restore ------------------------------------------------------------------------------

  /** `attached` is the medium for `source: "-"`: the API's HTTP request body, the CLI's stdin (POST /restores/stream). */
  async restore(request: RestoreRequest, attached?: MediumReader): Promise<{ jobId: string }> {
    if (request.method !== 'remap' && request.method !== 'writeback') {
      throw new ThinError('INVALID_ARGUMENT', "method: must be 'remap' or 'writeback'", { field: 'method' });
    }
    const { medium, backupId } = request.source === '-'
      ? { medium: this.#attachedMedium(attached !== undefined, 'source', '/restores/stream', 'restore -'), backupId: null }
      : await this.#resolveSource(request.source);
    const exists = this.#host.hasVolume(request.to);
    if (!exists && !request.create) throw new ThinError('NOT_FOUND', `volume ${request.to} does not exist (add --create to make it)`, { field: 'to' });
    if (exists && request.create) throw new ThinError('ALREADY_EXISTS', `volume ${request.to} already exists (drop --create to restore into it)`, { field: 'to' });
    const heldBackup = exists ? this.regionHolder(request.to) : undefined;
    if (heldBackup) throw new ThinError('BUSY', `volume ${request.to} holds backup ${heldBackup} (a backup region); restore into another volume`, { field: 'to' });
    if (exists && this.#host.isBusy(this.#host.volume(request.to))) {
      throw new ThinError('BUSY', `volume ${request.to} is part of a running copy, backup or restore; restore into it once that is done`, { field: 'to' });
    }
    const writers = exists ? this.#host.exportWriters(request.to) : 0;
    if (writers > 0 && request.force !== true) {
      throw new ThinError('BUSY', `volume ${request.to} is open read-write by ${writers} NBD client(s); disconnect them or add --force`, { field: 'to' });
    }
    await requireReadable(medium);
    // Checked after the last await, right before the target is reserved (until the job's end).
    if (this.#restoreTargets.has(request.to)) throw new ThinError('BUSY', `volume ${request.to} is the target of another restore that has not ended`, { field: 'to' });
    // The chain is resolved now, so a broken one is said at once, and its entries are held for the job
    // (a region named as a medium: the backup it holds, which a purge would otherwise empty under the job).
    const readIds = this.#hold(backupId ? this.#chainOf(backupId).map((entry) => entry.id) : this.#regionEntries(medium));
    this.#restoreTargets.add(request.to);
    const attachment = attached ? randomUUID() : null;
    if (attachment !== null) this.#attachedReaders.set(attachment, attached!);
    const from = medium.kind === 'stdio' ? "the CLI's stdin" : request.source;
    try {
      const job = this.#host.jobs.start(RESTORE_JOB, { medium: formatMedium(medium), backupId, attachment, readIds, ...request }, `${request.method} restore of ${from} to ${request.to}`);
      return { jobId: job.id };
    } catch (error) {
      this.#release(readIds);
      this.#restoreTargets.delete(request.to);
      await this.#dropAttached(this.#attachedReaders, attachment);
      throw error;
    }
  }

  async #runRestore(ctx: JobContext, params: unknown): Promise<unknown> {
    const request = params as RestoreRequest & { medium: string; backupId: string | null; attachment: string | null };
    // An incremental restores as its chain: the full backup it builds on, then each incremental.
    const chain = request.backupId ? this.#chainOf(request.backupId) : [undefined];
    // Progress covers the whole chain (the catalog knows each link's data); a bare medium's, its header.
    if (request.backupId) ctx.setTotal(chain.reduce((sum, entry) => sum + entry!.dataBytes, 0));
    let volume: Volume | undefined;
    let previous: BackupHeader | undefined;
    for (const [link, entry] of chain.entries()) {
      const medium = entry ? await this.#checkedMedium(entry.medium, 'source') : parseMedium(request.medium);
      const reader = medium.kind === 'stdio' ? this.#takeAttached(this.#attachedReaders, request.attachment ?? '', "the CLI's stdin") : await this.#openReader(medium, entry ? this.#streamIdOf(entry) : undefined, ctx.signal);
      try {
        const stream = new BackupStreamReader(reader);
        const header = await stream.readHeader();
        this.#checkLink(header, previous, link, chain.length);
        if (!entry) ctx.setTotal(header.dataBytes);
        if (!volume) volume = request.create ? await this.#host.createVolumeForRestore(request.to, header.sourceCapacityBytes) : this.#host.volume(request.to);
        if (volume.extentBytes !== header.extentBytes) {
          throw new ThinError('UNSUPPORTED', `the backup has ${header.extentBytes}-byte extents, this pool ${volume.extentBytes}`);
        }
        if (link === 0 && request.method === 'remap') await this.#restoreRemap(ctx, stream, header, volume, request.create);
        else await this.#restoreWriteback(ctx, stream, header, volume);
        previous = header;
      } finally {
        await reader.close().catch(() => undefined);
      }
    }
    await this.#host.sync();
    return { volume: volume!.name, method: request.method, backups: chain.map((entry) => entry?.id ?? request.medium) };
  }

  /** The catalog entries to apply, oldest first: a full backup, then incrementals up to `backupId`. */
  #chainOf(backupId: string): BackupEntry[] {
    const chain: BackupEntry[] = [];
    for (let entry = this.#entry(backupId); ; ) {
      if (entry.state !== 'complete') throw new ThinError('CONFLICT', `backup ${entry.id} in the chain of ${backupId} is ${entry.state}`);
      chain.unshift(entry);
      if (entry.kind === 'full') return chain;
      if (!entry.parentId) throw new ThinError('CORRUPT', `the chain of ${backupId} does not end in a full backup`);
      const parent = this.#present(entry.parentId) ?? this.#standIn(entry.parentId);
      if (!parent) throw new ThinError('NOT_FOUND', `backup ${entry.id} builds on ${entry.parentId}, which is no longer in the catalog (nor a copy of it)`);
      entry = parent;
    }
  }

  /** Each link of a chain must be what the catalog says, on top of the link before it. */
  #checkLink(header: BackupHeader, previous: BackupHeader | undefined, link: number, links: number): void {
    if (link === 0 && header.kind === 'incremental' && links === 1) {
      throw new ThinError('INVALID_ARGUMENT', `this medium holds incremental backup ${header.backupId}; restore it by its catalog id so that its chain is applied`, { field: 'source' });
    }
    if (previous && (header.parentBackupId !== previous.backupId || header.sourceUuid !== previous.sourceUuid)) {
      throw new ThinError('CORRUPT', `backup ${header.backupId} builds on ${header.parentBackupId || '(nothing)'}, not on ${previous.backupId}: the chain is broken`);
    }
  }

  /** FIG. 14B: data written once, sequentially, to new extents; the map is installed only when the stream checked out. */
  async #restoreRemap(ctx: JobContext, stream: BackupStreamReader, header: BackupHeader, volume: Volume, created: boolean): Promise<void> {
    const pool = this.#host.pool;
    const extentBytes = volume.extentBytes;
    const placed: Array<{ sourceExtent: number; physicalExtent: number }> = [];
    const inFlight = new Set<Promise<void>>();
    let failure: unknown;
    let batch: { buffer: Buffer; sourceExtents: number[] } | undefined;
    const spareBuffers: Buffer[] = [];
    // Records are gathered into batches that go to new extents with one write per adjacent run,
    // several batches in flight: the data is written once, sequentially, as fast as the pool takes it.
    const flush = (): void => {
      if (!batch || batch.sourceExtents.length === 0) return;
      const { buffer, sourceExtents } = batch;
      batch = undefined;
      const targets = pool.reserve(sourceExtents.length);
      sourceExtents.forEach((sourceExtent, i) => placed.push({ sourceExtent, physicalExtent: targets[i]! }));
      const write = this.#writeRuns(targets, buffer, extentBytes).then(() => {
        // Reused by a later batch (fresh 2 MiB buffers kept the collector busy); the last, shorter one is not.
        if (buffer.length === LIMITS.restoreBatchExtentsMax * extentBytes) spareBuffers.push(buffer);
      }, (error: unknown) => {
        failure ??= error;
      });
      const tracked = write.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
    };
    const writeBehind = poolWriteBehind(pool);
    this.#host.setVolumeState(volume, 'restoring');
    try {
      for await (const record of stream.records()) {
        if (ctx.signal.aborted) throw ctx.signal.reason;
        if (failure) throw failure;
        batch ??= { buffer: spareBuffers.pop() ?? Buffer.allocUnsafeSlow(LIMITS.restoreBatchExtentsMax * extentBytes), sourceExtents: [] };
        const slot = batch.sourceExtents.length * extentBytes;
        record.data.copy(batch.buffer, slot);
        writeBehind.note(record.data.length);
        // The volume's last extent may be partial: the rest of its slot reads as zeros, as after any partial write.
        if (record.data.length < extentBytes) batch.buffer.fill(0, slot + record.data.length, slot + extentBytes);
        batch.sourceExtents.push(record.sourceExtent);
        ctx.addDone(record.data.length);
        if (batch.sourceExtents.length === LIMITS.restoreBatchExtentsMax) {
          flush();
          if (inFlight.size >= LIMITS.restoreBatchesInFlightMax) await Promise.race(inFlight);
        }
      }
      if (batch) batch.buffer = batch.buffer.subarray(0, batch.sourceExtents.length * extentBytes);
      flush();
      await Promise.all(inFlight);
      if (failure) throw failure;
      await stream.verifyTrailer();
    } catch (error) {
      await Promise.all(inFlight);
      for (const { physicalExtent } of placed) pool.free(physicalExtent); // never mapped: the volume is as it was
      // An existing volume is untouched; one made for this restore goes again: as it was, nothing.
      this.#host.setVolumeState(volume, 'ready');
      if (created) await this.#host.deleteVolume(volume.name);
      throw error;
    } finally {
      await writeBehind.settled();
    }
    // The remap itself: capacity back to the original's, every old extent out, the table in.
    this.#host.setVolumeCapacity(volume, Math.max(volume.sizeBytes, header.sourceCapacityBytes));
    for (const { extentIndex } of [...volume.map.mapped(0, Number.MAX_SAFE_INTEGER)]) pool.free(volume.map.unmap(extentIndex));
    for (const { sourceExtent, physicalExtent } of placed) {
      volume.map.map(sourceExtent, physicalExtent);
      pool.confirm(physicalExtent);
    }
    this.#host.setVolumeState(volume, 'ready');
  }

  /** Writes `buffer` (one extent per target) with one write per run of adjacent targets on one disk. */
  async #writeRuns(targets: readonly number[], buffer: Buffer, extentBytes: number): Promise<void> {
    const pool = this.#host.pool;
    const writes: Array<Promise<void>> = [];
    for (let first = 0; first < targets.length; ) {
      const { fd, offsetBytes } = pool.locate(targets[first]!);
      let count = 1;
      while (first + count < targets.length && targets[first + count] === targets[first]! + count && pool.locate(targets[first + count]!).fd === fd) count++;
      writes.push(this.#writePhysical(targets[first]!, buffer.subarray(first * extentBytes, (first + count) * extentBytes), fd, offsetBytes));
      first += count;
    }
    await Promise.all(writes);
  }

  /** FIG. 14C: every record to its original address, then the extents unmapped at backup time are trimmed. */
  async #restoreWriteback(ctx: JobContext, stream: BackupStreamReader, header: BackupHeader, volume: Volume): Promise<void> {
    if (volume.sizeBytes < header.sourceCapacityBytes) {
      throw new ThinError('INVALID_ARGUMENT', `volume ${volume.name} (${volume.sizeBytes} bytes) is smaller than the backed-up volume (${header.sourceCapacityBytes} bytes); grow it first`, { field: 'to' });
    }
    const writeBehind = poolWriteBehind(this.#host.pool);
    this.#host.setVolumeState(volume, 'restoring');
    try {
      // Mapped now and not at backup time: trimmed once the records are in. The records only write
      // extents mapped at backup time and the volume takes no host writes while restoring, so the
      // list still holds then.
      const mappedAtBackup = new Set(extentsOfRuns(header.allocationRuns));
      const toTrim = [...volume.map.mapped(0, Number.MAX_SAFE_INTEGER)].map(({ extentIndex }) => extentIndex).filter((extent) => !mappedAtBackup.has(extent));
      // One commit for every change-tracking mark the restore needs, not one per extent it writes or trims.
      await volume.markChanging([...header.correspondence, ...toTrim]);
      for await (const record of stream.records()) {
        if (ctx.signal.aborted) throw ctx.signal.reason;
        writeBehind.note(record.data.length);
        // No copy: the record's view stays valid until the next record is asked for, and the
        // write is awaited before that (a copy per record was 1 GiB of garbage per GiB restored).
        await volume.write(record.sourceExtent * volume.extentBytes, record.data, { fua: false });
        ctx.addDone(record.data.length);
      }
      await stream.verifyTrailer();
      for (const extentIndex of toTrim) {
        const offset = extentIndex * volume.extentBytes;
        await volume.trim(offset, Math.min(volume.extentBytes, volume.sizeBytes - offset), { fua: false });
      }
      this.#host.setVolumeState(volume, 'ready');
    } catch (error) {
      this.#host.setVolumeState(volume, 'incomplete'); // never looks good when it is not
      throw error;
    } finally {
      await writeBehind.settled();
    }
  }

  #writePhysical(physicalExtent: number, data: Buffer, fd: number, offsetBytes: number): Promise<void> {
    const { disk } = this.#host.pool.locate(physicalExtent);
    const write = new Promise<void>((resolve, reject) => {
      fs.write(fd, data, 0, data.length, offsetBytes, (error, written) => {
        if (error) reject(new ThinError('IO_ERROR', `restore: write to the pool failed: ${error.message}`, { cause: error }));
        else if (written !== data.length) reject(new ThinError('IO_ERROR', `restore: short write to the pool (${written} of ${data.length} bytes)`));
        else {
          this.#host.pool.markWritten(disk);
          resolve();
        }
      });
    });
    this.#host.trackWrite(write);
    return write;
  }

  // ---- media --------------------------------------------------------------------------------

  /** A catalog id or a medium, with the medium checked against the media roots. */
  async #resolveSource(source: string): Promise<{ medium: Medium; backupId: string | null }> {
    if (/^bk-\d+$/.test(source)) {
      const entry = this.#entry(source);
      if (entry.state !== 'complete') throw new ThinError('CONFLICT', `backup ${source} is ${entry.state}; only a complete backup can be read`);
      return { medium: await this.#checkedMedium(entry.medium, 'source'), backupId: entry.id };
    }
    return { medium: await this.#checkedMedium(source, 'source'), backupId: null };
  }

  /** Parses a medium and refuses anything outside the daemon's media roots (symlinks resolved). */
  async #checkedMedium(text: string, field: string): Promise<Medium> {
    const medium = parseMedium(text, { field });
    if (medium.kind === 'stdio') {
      throw new ThinError('UNSUPPORTED', `${field}: "-" was the CLI's stdout/stdin: the array does not hold that stream (pipe a saved copy into \`thinarray restore - --to VOLUME\`)`, { field });
    }
    if (medium.kind === 'volume') return medium; // a volume of the array: no path to guard
    try {
      return { kind: medium.kind, path: await resolveUnderRoots(medium.path, this.#mediaRoots) };
    } catch (error) {
      // Name the request's field, as every validation error does.
      if (isThinError(error)) throw new ThinError(error.code, `${field}: ${error.message}`, { field, cause: error });
      throw error;
    }
  }

  /** `-` is only a medium when the API attached the CLI's stream to the request; say where to send it otherwise. */
  #attachedMedium(isAttached: boolean, field: string, route: string, cliForm: string): Medium {
    if (!isAttached) {
      throw new ThinError('UNSUPPORTED', `${field}: "-" is the CLI's stdout/stdin, streamed through the API: use POST /api/v1${route} (the CLI does for \`${cliForm}\`)`, { field });
    }
    return { kind: 'stdio' };
  }

  /** The stream the API attached for a job; gone after a daemon restart (the CLI's connection is gone with it). */
  #takeAttached<T>(attached: Map<string, T>, key: string, what: string): T {
    const medium = attached.get(key);
    if (!medium) throw new ThinError('IO_ERROR', `${what} is no longer connected (the daemon restarted, or the CLI went away)`);
    attached.delete(key);
    return medium;
  }

  /**
   * Whatever a backup job leaves, in any state: a `-` medium it never opened is cut (so the CLI
   * is not left waiting), and a job that never ran (cancelled while queued) has its entry failed,
   * its held changes returned and its view dropped, as a failed run would.
   */
  async #afterBackupJob(backupId: string): Promise<void> {
    if (this.catalog.get(backupId)?.state === 'running') {
      this.catalog.fail(backupId, 'the job ended before it ran');
      await this.#releaseUnrun(backupId).catch((error: unknown) => this.#logger.error({ err: error, backup: backupId }, 'cannot release a backup that never ran'));
    }
    await this.#dropAttached(this.#attachedWriters, backupId);
  }

  /** What create() set aside for a backup whose job will never run: the `-` medium, the held changes, the view. */
  async #releaseUnrun(backupId: string): Promise<void> {
    await this.#dropAttached(this.#attachedWriters, backupId);
    const view = this.#host.copies.sessionOfTarget(viewName(backupId));
    if (!view) return;
    view.source.changes?.returnHeld();
    await this.#host.copies.discard(view);
  }

  async #dropAttached(attached: Map<string, MediumWriter | MediumReader>, key: string | null): Promise<void> {
    const medium = key === null ? undefined : attached.get(key);
    if (!medium) return;
    attached.delete(key!);
    await ('abort' in medium ? medium.abort() : medium.close()).catch(() => undefined);
  }

  /** `signal`: the job's; a cancel or a shutdown then ends a wait for a FIFO's reader. */
  #openWriter(medium: Medium, backupId: string, mediaSizeBytes: number | undefined, signal: AbortSignal): Promise<MediumWriter> {
    if (medium.kind === 'stdio') return Promise.resolve(this.#takeAttached(this.#attachedWriters, backupId, "the CLI's stdout"));
    if (medium.kind === 'volume') return Promise.resolve(new RegionWriter(this.#regionVolume(medium.name, 'to'), backupId));
    return openMediumWriter(medium, { roots: this.#mediaRoots, backupId, signal, ...(mediaSizeBytes === undefined ? {} : { mediaSizeBytes }) });
  }

  /** `signal`: as for #openWriter, a wait for a FIFO's writer. */
  #openReader(medium: Medium, backupId: string | undefined, signal: AbortSignal): Promise<MediumReader> {
    if (medium.kind === 'volume') return RegionReader.open(this.#regionVolume(medium.name, 'source'), backupId);
    return openMediumReader(medium, { roots: this.#mediaRoots, signal, ...(backupId === undefined ? {} : { backupId }) });
  }
}

/** After the array opens; an array open for less (most tests) never starts a mover it does not use. */
const MOVER_PRESTART_DELAY_MS = 2000;

/** Estimates for candidates: the stream's header and per-record framing (docs/format.md). */
const BACKUP_OVERHEAD_BYTES = 64 * 1024;
const RECORD_OVERHEAD_BYTES = 48;

export interface BackupCandidate {
  /** A medium to pass to `backup create --to` (replace <id>). */
  medium: string;
  root: string;
  freeBytes: number;
  fullBytes: number;
  /** Null when no incremental is possible (no complete backup to build on). */
  incrementalBytes: number | null;
  fitsFull: boolean;
  fitsIncremental: boolean;
}

/**
 * Indexes into `list` (the view's used extents) of the extents to stream: all of them, or those in
 * `held`. Plain loops: this runs on every backup over every used extent, before the first byte.
 */
function recordIndexesOf(list: Float64Array, held: { has(extent: number): boolean } | undefined): number[] {
  const indexes: number[] = [];
  for (let i = 0; i < list.length; i++) if (!held || held.has(list[i]!)) indexes.push(i);
  return indexes;
}

/**
 * `root` and the directories right under it (not symbolic links: they may lead out of the root)
 * that hold cartridges, by name; at most LIMITS.backupCandidateSetsMax of them.
 */
async function cartridgeSetsIn(root: string): Promise<string[]> {
  const entries = await fs.promises.readdir(root, { withFileTypes: true }).catch(() => []);
  const directories = [root, ...entries.filter((entry) => entry.isDirectory()).map((entry) => path.join(root, entry.name)).sort()];
  const sets: string[] = [];
  for (const directory of directories) {
    if (sets.length >= LIMITS.backupCandidateSetsMax) break;
    if ((await backupIdsInDir(directory).catch(() => [])).length > 0) sets.push(directory);
  }
  return sets;
}

/** What the filesystem holding `directory` has free for us (0 when it cannot be asked). */
async function freeBytesIn(directory: string): Promise<number> {
  const stats = await fs.promises.statfs(directory).catch(() => undefined);
  return stats ? stats.bavail * stats.bsize : 0;
}

/** dir: media are written in cartridges of a given size: say so before a job is started without one. */
function requireCartridgeSize(medium: Medium, mediaSizeBytes: number | undefined): void {
  if (medium.kind === 'dir' && (mediaSizeBytes === undefined || mediaSizeBytes < 64 * 1024)) {
    throw new ThinError('INVALID_ARGUMENT', 'mediaSizeBytes: dir: media need a cartridge size of at least 64K (--media-size)', { field: 'mediaSizeBytes' });
  }
}

/**
 * Said before a catalog entry and a job are made, rather than as a failed backup: the directory a
 * medium is written into (file:'s parent, dir: itself) must exist, and a file: medium must not be
 * an existing plain file (it may be another backup; FIFOs and devices are media). The job's open
 * checks again (O_EXCL), for whatever appears meanwhile. A missing directory is not created: a
 * mistyped path would otherwise become a new directory nobody looks in.
 */
async function requireFreshDestination(medium: Medium): Promise<void> {
  if (medium.kind !== 'file' && medium.kind !== 'dir') return;
  const directory = medium.kind === 'file' ? path.dirname(medium.path) : medium.path;
  const stats = await fs.promises.stat(directory).catch(() => undefined);
  if (!stats?.isDirectory()) {
    throw new ThinError('NOT_FOUND', `to: ${formatMedium(medium)}: ${directory} ${stats ? 'is not a directory' : 'does not exist'}${medium.kind === 'dir' ? ' (a dir: medium is an existing directory for the cartridges)' : ''}`, { field: 'to' });
  }
  // One look at the path (its real path: no symbolic link is left in it) for both refusals.
  if (medium.kind === 'file' && (await requireFreeEnd(medium.path, 'write', `to: ${formatMedium(medium)}`, 'to')) === 'file') {
    throw new ThinError('ALREADY_EXISTS', `to: ${formatMedium(medium)} already exists (refusing to overwrite what may be another backup)`, { field: 'to' });
  }
}

/**
 * How a backup's point in time is taken (`--via`). Only 'compact' so far: a compact point-in-time
 * view. The spec's other two, through a split mirror pair (pair:NAME) and copy-before-write through
 * working volumes (cow), come with those features; until then they are refused by name rather than
 * quietly taken as compact, so a script that asks for one learns it did not get it.
 */
function backupMethodOf(via: string | undefined): 'compact' {
  if (via === undefined || via === 'compact') return 'compact';
  if (via === 'cow' || /^pair:./.test(via)) {
    const what = via === 'cow' ? 'copy-before-write backups through working volumes' : 'backups of a split mirror pair';
    throw new ThinError('UNSUPPORTED', `via: ${via}: ${what} are not available in this daemon yet; use compact (the default)`, { field: 'via' });
  }
  throw new ThinError('INVALID_ARGUMENT', `via: must be compact, pair:NAME or cow (got ${JSON.stringify(via)})`, { field: 'via' });
}

/** A medium to read must exist, and a FIFO or tape be free of other jobs' reads: say so before a job is started for it. */
async function requireReadable(medium: Medium): Promise<void> {
  if (medium.kind === 'stdio' || medium.kind === 'volume') return;
  const exists = medium.kind === 'file' ? (await requireFreeEnd(medium.path, 'read', `source: ${formatMedium(medium)}`, 'source')) !== null : fs.existsSync(medium.path);
  if (!exists) throw new ThinError('NOT_FOUND', `source: ${formatMedium(medium)} does not exist`, { field: 'source' });
}

function viewName(backupId: string): string {
  return `${backupId}-view`;
}

/**
 * A restore's write-behind: background fdatasyncs of the pool as the restore goes on (WriteBehind), so
 * the durable commit at the end finds little left. A failure here is not the restore's: that
 * commit syncs again and reports it.
 */
function poolWriteBehind(pool: Pool): WriteBehind {
  return new WriteBehind(() => pool.syncBehind(), LIMITS.backup.syncBehindBytes, LIMITS.backup.syncBehindFirstBytes);
}
