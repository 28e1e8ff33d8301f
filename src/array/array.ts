/**
 * The array: owns the metadata store, the pool, the volumes and the group committer, and is the
 * one object the daemon's front ends (HTTP API, NBD server) are handed. Every public method
 * validates its input and either applies a change whole or throws without changing anything.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { ThinError } from '../lib/errors.js';
import { LIMITS } from '../lib/limits.js';
import { isPowerOfTwo, formatBytes } from '../lib/sizes.js';
import type { Logger } from '../lib/log.js';
import { MetaStore, type VolumeRow } from '../meta/store.js';
import { Pool } from '../pool/pool.js';
import { AllocationMap } from '../volume/allocation-map.js';
import { Volume, type VolumeContext } from '../volume/volume.js';
import type { BlockDevice } from '../volume/block-device.js';
import { JobManager } from '../jobs/job-manager.js';
import { CopyManager, type CopyHost, type CopyInfo } from '../copy/copies.js';
import type { CopyMode } from '../copy/copy-store.js';
import { ReadOnlyDevice } from '../volume/read-only-device.js';
import { BackupManager, type BackupHost } from '../backup/backups.js';
import { ChangeTracker } from '../volume/change-tracker.js';
import { Committer } from './committer.js';
import { checkArray } from './check.js';
import type { CheckReport, DiskInfo, MapRun, PoolInfo, StorageArrayApi, VolumeAttr, VolumeCreateRequest, VolumeInfo, VolumeUpdateRequest } from './types.js';

export interface OpenOptions {
  home: string;
  /** Directories backups may be written to and read from (`serve --media-root`); default <home>/media. */
  mediaRoots?: string[];
  logger: Logger;
  /** Size of the sparse pool file created on first start when the pool has no disk. */
  poolFileBytes?: number;
  /** Extent size of a new pool; ignored (and checked) for an existing one. */
  extentBytes?: number;
  /** Jobs run at once (default LIMITS.jobsRunningMax); tests lower it to make a job wait queued. */
  jobsRunningMax?: number;
  /** Background commit interval (default LIMITS.commitIntervalMs); tests that count commits raise it. */
  commitIntervalMs?: number;
}

const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function validateVolumeName(name: unknown, field = 'name'): string {
  if (typeof name !== 'string' || !VOLUME_NAME.test(name)) {
    throw new ThinError('INVALID_ARGUMENT', `${field}: a volume name is 1–128 characters of letters, digits, '.', '_' and '-', starting with a letter or digit`, { field });
  }
  return name;
}

function validateCapacity(sizeBytes: unknown, field = 'sizeBytes'): number {
  if (typeof sizeBytes !== 'number' || !Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw new ThinError('INVALID_ARGUMENT', `${field}: the size must be a positive whole number of bytes`, { field });
  }
  if (sizeBytes % 512 !== 0) throw new ThinError('INVALID_ARGUMENT', `${field}: the size must be a multiple of 512 bytes`, { field });
  if (sizeBytes > LIMITS.volumeBytesMax) {
    throw new ThinError('INVALID_ARGUMENT', `${field}: the size may be at most ${formatBytes(LIMITS.volumeBytesMax)}`, { field });
  }
  return sizeBytes;
}

export class StorageArray implements StorageArrayApi, CopyHost, BackupHost {
  readonly home: string;
  readonly store: MetaStore;
  readonly pool: Pool;
  readonly committer: Committer;
  /** Long operations; kinds are registered by their owners, then startJobs() resumes old ones. */
  readonly jobs: JobManager;
  /** Point-in-time copies; constructed once the volumes are loaded. */
  copies!: CopyManager;
  /** Backups, the catalog and restores; constructed after the copies. */
  backups!: BackupManager;
  readonly #logger: Logger;
  readonly #volumes = new Map<string, Volume>();
  /** Volumes whose rows are gone but whose extents are still being returned (check counts them as owners). */
  readonly #deleting = new Set<Volume>();
  readonly #context: VolumeContext;
  readonly #commitTimer: NodeJS.Timeout;
  #closed = false;

  private constructor(home: string, store: MetaStore, pool: Pool, logger: Logger, jobsRunningMax: number | undefined, commitIntervalMs: number) {
    this.home = home;
    this.store = store;
    this.pool = pool;
    this.#logger = logger;
    this.jobs = new JobManager(store, logger.child({ component: 'jobs' }), jobsRunningMax === undefined ? {} : { runningMax: jobsRunningMax });
    this.committer = new Committer(store, pool, logger, () => this.#volumes.values());
    this.#context = {
      pool,
      sync: () => this.committer.sync(),
      syncChangeMarks: () => this.committer.syncChangeMarks(),
      trackWrite: (write) => this.committer.trackWrite(write),
    };
    // Bounds the work lost to a crash when clients never flush; FLUSH/FUA commit at once.
    this.#commitTimer = setInterval(() => this.#backgroundCommit(), commitIntervalMs);
    this.#commitTimer.unref();
  }

  static async open(options: OpenOptions): Promise<StorageArray> {
    fs.mkdirSync(options.home, { recursive: true });
    const store = new MetaStore(path.join(options.home, 'meta.db'));
    try {
      const { poolUuid, extentBytes } = initPoolSettings(store, options.extentBytes);
      const pool = Pool.open(store, options.logger, extentBytes, poolUuid);
      const array = new StorageArray(options.home, store, pool, options.logger, options.jobsRunningMax, options.commitIntervalMs ?? LIMITS.commitIntervalMs);
      if (pool.extentsTotal === 0 && store.listDisks().length === 0) {
        pool.addDisk(path.join(options.home, 'pool', 'disk0.img'), options.poolFileBytes ?? LIMITS.defaultPoolFileBytes);
      }
      for (const row of store.listVolumes()) array.#attachVolume(row);
      array.copies = new CopyManager(array, options.logger.child({ component: 'copy' }));
      await array.copies.reattach();
      array.backups = new BackupManager(array, options.logger.child({ component: 'backup' }), options.mediaRoots ?? [path.join(options.home, 'media')]);
      await array.backups.recover();
      options.logger.info({ home: options.home, volumes: array.#volumes.size, extentBytes, extentsUsed: pool.extentsUsed }, 'array opened');
      return array;
    } catch (error) {
      store.close();
      throw error;
    }
  }

  #attachVolume(row: VolumeRow): Volume {
    const volume = new Volume(row, AllocationMap.load(this.store.mapPages(row.id)), this.#context);
    if (this.store.getSetting(trackingKey(row.id)) !== undefined) {
      volume.changes = ChangeTracker.load(this.store.changePages(row.id, 'current'), this.store.changePages(row.id, 'held'));
    }
    this.#volumes.set(row.name, volume);
    return volume;
  }

  #backgroundCommit(): void {
    if (this.#closed || !this.committer.hasUncommittedMetadata) return;
    this.committer.backgroundCommit()?.catch(() => undefined); // the committer logs failures
  }

  // ---- pool ---------------------------------------------------------------------------------

  poolShow(): PoolInfo {
    const extentBytes = this.pool.extentBytes;
    const extentsTotal = this.pool.extentsTotal;
    const extentsUsed = this.pool.extentsUsed;
    const sizeBytes = extentsTotal * extentBytes;
    let provisionedBytes = 0;
    for (const volume of this.#volumes.values()) provisionedBytes += volume.sizeBytes;
    return {
      extentBytes,
      sizeBytes,
      usedBytes: extentsUsed * extentBytes,
      freeBytes: (extentsTotal - extentsUsed) * extentBytes,
      extentsTotal,
      extentsUsed,
      extentsFree: extentsTotal - extentsUsed,
      provisionedBytes,
      overcommitRatio: sizeBytes === 0 ? 0 : Math.round((provisionedBytes / sizeBytes) * 100) / 100,
      disks: this.pool.diskInfos(),
    };
  }

  async poolAdd(diskPath: string, sizeBytes?: number): Promise<DiskInfo> {
    if (typeof diskPath !== 'string' || !path.isAbsolute(diskPath)) {
      throw new ThinError('INVALID_ARGUMENT', 'path: give the absolute path of a file or block device', { field: 'path' });
    }
    if (sizeBytes !== undefined && (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0)) {
      throw new ThinError('INVALID_ARGUMENT', 'sizeBytes: must be a positive whole number of bytes', { field: 'sizeBytes' });
    }
    return this.pool.addDisk(path.normalize(diskPath), sizeBytes);
  }

  // ---- volumes ------------------------------------------------------------------------------

  async volumeCreate(request: VolumeCreateRequest): Promise<VolumeInfo> {
    const name = validateVolumeName(request.name);
    const capacityBytes = validateCapacity(request.sizeBytes);
    const attr = request.attr ?? 'user';
    if (attr !== 'user' && attr !== 'work') throw new ThinError('INVALID_ARGUMENT', "attr: must be 'user' or 'work'", { field: 'attr' });
    if (this.#volumes.has(name)) throw new ThinError('ALREADY_EXISTS', `volume ${name} already exists`, { field: 'name' });
    const row: Omit<VolumeRow, 'id'> = { name, uuid: randomUUID(), capacityBytes, attr, readOnly: request.readOnly === true, state: 'ready', createdAt: new Date().toISOString() };
    const id = this.store.transaction(() => this.store.insertVolume(row));
    const volume = this.#attachVolume({ ...row, id });
    this.#logger.info({ volume: name, capacityBytes }, 'volume created');
    return this.#volumeInfo(volume);
  }

  volumeList(): VolumeInfo[] {
    return [...this.#volumes.values()].sort((a, b) => a.name.localeCompare(b.name)).map((volume) => this.#volumeInfo(volume));
  }

  volumeShow(name: string): VolumeInfo {
    return this.#volumeInfo(this.#volume(name));
  }

  volumeMap(name: string): MapRun[] {
    const volume = this.#volume(name);
    return volume.blockStatus(0, volume.sizeBytes).reduce<MapRun[]>((runs, status) => {
      const offsetBytes = runs.length === 0 ? 0 : runs[runs.length - 1]!.offsetBytes + runs[runs.length - 1]!.lengthBytes;
      runs.push({ offsetBytes, lengthBytes: status.lengthBytes, mapped: !status.hole });
      return runs;
    }, []);
  }

  async volumeUpdate(name: string, changes: VolumeUpdateRequest): Promise<VolumeInfo> {
    const volume = this.#volume(name);
    if (changes.sizeBytes !== undefined || changes.attr !== undefined) this.#refuseIfCopying(volume, 'resized or given another attribute');
    const update: Partial<Pick<VolumeRow, 'capacityBytes' | 'attr' | 'readOnly'>> = {};
    if (changes.sizeBytes !== undefined) {
      const capacityBytes = validateCapacity(changes.sizeBytes);
      if (capacityBytes < volume.sizeBytes) {
        throw new ThinError('INVALID_ARGUMENT', `sizeBytes: volumes only grow; ${name} is ${volume.sizeBytes} bytes and shrinking would lose data`, { field: 'sizeBytes' });
      }
      update.capacityBytes = capacityBytes;
    }
    if (changes.attr !== undefined) {
      if (changes.attr !== 'user' && changes.attr !== 'work') throw new ThinError('INVALID_ARGUMENT', "attr: must be 'user' or 'work'", { field: 'attr' });
      update.attr = changes.attr;
    }
    if (changes.readOnly !== undefined) {
      if (typeof changes.readOnly !== 'boolean') throw new ThinError('INVALID_ARGUMENT', 'readOnly: must be true or false', { field: 'readOnly' });
      // The array empties a region when its backup is purged: it must stay writable by the array (hosts see it read-only anyway).
      const heldBackup = this.backups?.regionHolder(name);
      if (heldBackup) throw new ThinError('BUSY', `volume ${name} holds backup ${heldBackup} (a backup region): its access is the array's until that backup is deleted`, { field: 'readOnly' });
      update.readOnly = changes.readOnly;
    }
    this.#updateRow(volume, update);
    this.#logger.info({ volume: name, ...update }, 'volume updated');
    return this.#volumeInfo(volume);
  }

  volumeResize(name: string, sizeBytes: number): Promise<VolumeInfo> {
    return this.volumeUpdate(name, { sizeBytes });
  }

  volumeSetAttr(name: string, attr: VolumeAttr): Promise<VolumeInfo> {
    return this.volumeUpdate(name, { attr });
  }

  volumeSetReadOnly(name: string, readOnly: boolean): Promise<VolumeInfo> {
    return this.volumeUpdate(name, { readOnly });
  }

  /** Writes the row first; memory changes only once the row is durable. */
  #updateRow(volume: Volume, changes: Partial<Pick<VolumeRow, 'capacityBytes' | 'attr' | 'readOnly' | 'state'>>): void {
    const updated = { ...volume.row, ...changes };
    this.store.transaction(() => this.store.updateVolume(updated));
    Object.assign(volume.row, changes);
  }

  /**
   * Removes the volume, then returns its extents to the pool. The rows go first, in one commit:
   * a crash after it leaves at worst extents still marked used that no map names — leaks that
   * `check --repair` returns — never a map entry pointing at an extent someone else may get.
   * The extents are then freed in slices with other I/O served between them, so deleting a volume
   * of millions of extents does not pause the array.
   */
  async volumeDelete(name: string): Promise<void> {
    const volume = this.#volume(name);
    this.#refuseIfCopying(volume, 'deleted');
    volume.markDeleted();
    this.#volumes.delete(name);
    const volumeId = volume.row.id;
    this.committer.enqueue((store) => {
      this.copies.forgetVolume(volumeId);
      store.deleteVolume(volumeId);
    });
    this.#deleting.add(volume);
    try {
      await this.committer.sync();
      await this.#returnExtents(volume);
    } finally {
      this.#deleting.delete(volume);
    }
    await this.committer.sync();
    this.#logger.info({ volume: name }, 'volume deleted');
  }

  async #returnExtents(volume: Volume): Promise<void> {
    const extents = [...volume.map.mapped(0, Math.ceil(volume.sizeBytes / volume.extentBytes))].map((entry) => entry.extentIndex);
    for (let first = 0; first < extents.length; first += LIMITS.deleteExtentsPerSlice) {
      for (const extentIndex of extents.slice(first, first + LIMITS.deleteExtentsPerSlice)) this.pool.free(volume.map.unmap(extentIndex));
      if (first + LIMITS.deleteExtentsPerSlice < extents.length) await new Promise((resolve) => setImmediate(resolve));
    }
  }

  #refuseIfCopying(volume: Volume, what: string): void {
    const session = this.copies.busyWith(volume);
    if (session) {
      throw new ThinError('BUSY', `volume ${volume.name} cannot be ${what}: copy ${session.row.id} (job ${session.row.jobId ?? '?'}) depends on it; wait for it or cancel the job`);
    }
    const heldBackup = this.backups?.regionHolder(volume.name);
    if (heldBackup) {
      throw new ThinError('BUSY', `volume ${volume.name} cannot be ${what}: it holds backup ${heldBackup} (a backup region); delete that backup with --purge-media first`);
    }
  }

  #volume(name: string): Volume {
    const volume = typeof name === 'string' ? this.#volumes.get(name) : undefined;
    if (!volume) throw new ThinError('NOT_FOUND', `no volume named ${JSON.stringify(name)}`, { field: 'name' });
    return volume;
  }

  #volumeInfo(volume: Volume): VolumeInfo {
    const row = volume.row;
    const allocatedBytes = volume.allocatedBytes;
    return {
      name: row.name,
      uuid: row.uuid,
      capacityBytes: row.capacityBytes,
      allocatedBytes,
      allocatedPercent: Math.round((Math.min(allocatedBytes, row.capacityBytes) / row.capacityBytes) * 10000) / 100,
      mappedExtents: volume.map.mappedCount,
      attr: row.attr,
      readOnly: row.readOnly,
      createdAt: row.createdAt,
      state: row.state,
      holdsBackup: this.backups?.regionHolder(row.name) ?? null,
    };
  }

  // ---- exports, sync, check -----------------------------------------------------------------

  openExport(name: string): BlockDevice | undefined {
    const volume = this.#volumes.get(name);
    if (!volume || volume.row.attr === 'work') return undefined; // working volumes are never exported
    if (volume.row.state === 'copying') return new ReadOnlyDevice(volume, 'a copy into it is in progress');
    if (volume.row.state === 'restoring') return new ReadOnlyDevice(volume, 'a restore into it is in progress');
    const heldBackup = this.backups?.regionHolder(name);
    if (heldBackup) return new ReadOnlyDevice(volume, `it holds backup ${heldBackup} (a backup region)`);
    return volume;
  }

  exportNames(): string[] {
    return [...this.#volumes.values()].filter((volume) => volume.row.attr === 'user').map((volume) => volume.name).sort();
  }

  /** The volume object itself, for layers inside the daemon (copies, backups). */
  volume(name: string): Volume {
    return this.#volume(name);
  }

  sync(): Promise<void> {
    return this.committer.sync();
  }

  // ---- copies (src/copy) ----------------------------------------------------------------------

  copyCreate(source: string, target: string, mode: CopyMode): Promise<CopyInfo> {
    return this.copies.create(source, target, mode, (name) => validateVolumeName(name, 'target'));
  }

  copyList(): CopyInfo[] {
    return this.copies.list();
  }

  copyShow(idOrTarget: string, withTable: boolean): CopyInfo {
    return this.copies.show(idOrTarget, withTable);
  }

  volumeById(id: number): Volume | undefined {
    for (const volume of this.#volumes.values()) if (volume.row.id === id) return volume;
    return undefined;
  }

  /** CopyHost: inserts a volume row; the caller holds the transaction and attaches it after. */
  insertVolumeRow(name: string, capacityBytes: number, state: string, attr: 'user' | 'work'): VolumeRow {
    const row: Omit<VolumeRow, 'id'> = { name, uuid: randomUUID(), capacityBytes, attr, readOnly: false, state, createdAt: new Date().toISOString() };
    return { ...row, id: this.store.insertVolume(row) };
  }

  attachVolume(row: VolumeRow): Volume {
    return this.#attachVolume(row);
  }

  deleteVolume(name: string): Promise<void> {
    return this.volumeDelete(name);
  }

  setVolumeState(volume: Volume, state: string): void {
    this.store.updateVolume({ ...volume.row, state });
    volume.row.state = state;
  }

  trackWrite(write: Promise<unknown>): void {
    this.committer.trackWrite(write);
  }

  // ---- backups (src/backup) -------------------------------------------------------------------

  hasVolume(name: string): boolean {
    return this.#volumes.has(name);
  }

  volumeNames(): string[] {
    return [...this.#volumes.keys()].sort();
  }

  async createVolumeForRestore(name: string, capacityBytes: number): Promise<Volume> {
    await this.volumeCreate({ name, sizeBytes: capacityBytes });
    return this.#volume(name);
  }

  setVolumeCapacity(volume: Volume, capacityBytes: number): void {
    this.#updateRow(volume, { capacityBytes });
  }

  /** The backup a volume's change tracking starts from (its last point in time), if any. */
  trackingBase(volume: Volume): string | undefined {
    return this.store.getSetting(trackingKey(volume.row.id));
  }

  setTrackingBase(volume: Volume, backupId: string): void {
    this.store.transaction(() => this.store.putSetting(trackingKey(volume.row.id), backupId));
  }

  isBusy(volume: Volume): boolean {
    return this.copies.busyWith(volume) !== undefined || volume.row.state === 'restoring';
  }

  /** Set by the daemon: NBD connections holding an export read-write. */
  exportWritersHook: ((name: string) => number) | undefined;

  exportWriters(name: string): number {
    return this.exportWritersHook?.(name) ?? 0;
  }

  startJobs(): void {
    this.jobs.resumeAll();
  }

  async check(options: { repair: boolean }): Promise<CheckReport> {
    await this.committer.sync();
    const report = checkArray(this.pool, [...this.#volumes.values(), ...this.#deleting], options.repair);
    if (report.repaired > 0) {
      await this.committer.sync();
      this.#logger.warn({ repaired: report.repaired, problems: report.problems.length }, 'check repaired the pool');
    }
    return report;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    clearInterval(this.#commitTimer);
    try {
      // Jobs stop first (their rows stay resumable), so their last writes are in the final commit.
      await this.jobs.close();
      await this.backups?.close();
      await this.committer.sync();
    } finally {
      this.#closed = true;
      this.pool.close();
      this.store.close();
    }
  }
}

/** Settings key naming the backup whose point in time a volume's change tracking starts from. */
export function trackingKey(volumeId: number): string {
  return `tracking.${volumeId}`;
}

export function openStorageArray(options: OpenOptions): Promise<StorageArray> {
  return StorageArray.open(options);
}

/** The pool's identity and extent size: chosen on first start, fixed afterwards. */
function initPoolSettings(store: MetaStore, requestedExtentBytes: number | undefined): { poolUuid: string; extentBytes: number } {
  const existingUuid = store.getSetting('pool.uuid');
  if (existingUuid) {
    const extentBytes = Number(store.getSetting('pool.extentBytes'));
    if (requestedExtentBytes !== undefined && requestedExtentBytes !== extentBytes) {
      throw new ThinError('INVALID_ARGUMENT', `extent size: this pool was created with ${extentBytes}-byte extents; it cannot change`, { field: 'extentBytes' });
    }
    return { poolUuid: existingUuid, extentBytes };
  }
  const extentBytes = requestedExtentBytes ?? LIMITS.extentBytesDefault;
  if (!isPowerOfTwo(extentBytes) || extentBytes < LIMITS.extentBytesMin || extentBytes > LIMITS.extentBytesMax) {
    throw new ThinError('INVALID_ARGUMENT', `extent size: must be a power of two from ${formatBytes(LIMITS.extentBytesMin)} to ${formatBytes(LIMITS.extentBytesMax)}`, { field: 'extentBytes' });
  }
  const poolUuid = randomUUID();
  store.transaction(() => {
    store.putSetting('pool.uuid', poolUuid);
    store.putSetting('pool.extentBytes', String(extentBytes));
    store.putSetting('pool.createdAt', new Date().toISOString());
  });
  return { poolUuid, extentBytes };
}
