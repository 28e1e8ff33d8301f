/**
 * What the array exposes to the daemon's front ends (HTTP API, NBD server, CLI through the API).
 * Every method validates its input and throws ThinError (src/lib/errors.ts) with a stable code;
 * nothing is half-applied when it throws.
 */
import type { BlockDevice } from '../volume/block-device.js';
import type { JobInfo } from '../jobs/job-manager.js';
import type { CopyInfo } from '../copy/copies.js';
import type { BackupEntry } from '../backup/catalog.js';
import type { BackupCandidate, BackupCreateRequest, RestoreRequest } from '../backup/backups.js';

export type { JobError, JobInfo, JobProgress, JobState } from '../jobs/job-manager.js';
export type { CopyInfo } from '../copy/copies.js';
export type { BackupEntry, BackupState } from '../backup/catalog.js';
export type { BackupCandidate } from '../backup/backups.js';
export type { BackupCreateRequest, RestoreRequest } from '../backup/backups.js';
import type { MediumReader, MediumWriter } from '../backup/media/medium.js';

/** instant: the source's capacity and addresses; compact: the used extents packed behind a header. */
export type CopyMode = CopyInfo['mode'];

export type DiskKind = 'file' | 'block';
export type VolumeAttr = 'user' | 'work';

export interface DiskInfo {
  id: number;
  path: string;
  kind: DiskKind;
  sizeBytes: number;
  extents: number;
  usedExtents: number;
}

export interface PoolInfo {
  extentBytes: number;
  sizeBytes: number;
  usedBytes: number;
  freeBytes: number;
  extentsTotal: number;
  extentsUsed: number;
  extentsFree: number;
  /** Sum of all volume capacities. */
  provisionedBytes: number;
  /** provisionedBytes / sizeBytes (0 when the pool is empty). */
  overcommitRatio: number;
  disks: DiskInfo[];
}

export interface VolumeInfo {
  name: string;
  uuid: string;
  capacityBytes: number;
  allocatedBytes: number;
  /** allocatedBytes / capacityBytes × 100, rounded to 0.01. */
  allocatedPercent: number;
  mappedExtents: number;
  attr: VolumeAttr;
  readOnly: boolean;
  createdAt: string;
  /** 'ready' in this release; later: 'incomplete' after a failed restore, 'copying' … */
  state: string;
  /** The backup this volume holds as a backup region (a backup to volume:NAME), or null. */
  holdsBackup: string | null;
}

/** One run of a volume's allocation map, as `volume show NAME --map` prints it. */
export interface MapRun {
  offsetBytes: number;
  lengthBytes: number;
  mapped: boolean;
}

export interface CheckProblem {
  kind: 'double-mapped' | 'out-of-range' | 'mapped-but-free' | 'leaked' | 'bad-page';
  detail: string;
}

export interface CheckReport {
  ok: boolean;
  volumesChecked: number;
  mappedExtents: number;
  problems: CheckProblem[];
  /** Problems fixed by --repair (leaks are returned to the pool). */
  repaired: number;
}

export interface VolumeCreateRequest {
  name: string;
  sizeBytes: number;
  readOnly?: boolean;
  attr?: VolumeAttr;
}

export interface VolumeUpdateRequest {
  sizeBytes?: number;
  attr?: VolumeAttr;
  readOnly?: boolean;
}

/** Jobs as the front ends see them (src/jobs/job-manager.ts; kinds start jobs inside the daemon). */
export interface JobsApi {
  /** Every job kept, newest first. */
  list(): JobInfo[];
  /** NOT_FOUND for an unknown id. */
  get(id: string): JobInfo;
  /** Queued or running → cancelled (a running one winds down first); finished → CONFLICT. */
  cancel(id: string): JobInfo;
  /** Resolves when the job finishes, at timeoutMs, or when `signal` aborts, with the info then. */
  wait(id: string, timeoutMs: number, signal?: AbortSignal): Promise<JobInfo>;
}

/** What a call that starts a job answers: the job to follow (GET /jobs/:id). */
export interface JobStarted {
  jobId: string;
}

/**
 * Server-free backups (src/backup/backups.ts): every data-moving call starts a job in the daemon
 * and answers at once; media are `file:/ABS/PATH` or `dir:/ABS/PATH` under the daemon's media roots.
 */
export interface BackupsApi {
  /**
   * Takes the point in time before it resolves; the stream is written by the job `jobId`.
   * `attached`: the medium when `to` is "-" (the API's answer to the CLI, streamed to its stdout).
   */
  create(request: BackupCreateRequest, attached?: MediumWriter): Promise<BackupEntry>;
  /** Catalog entries, oldest first; with `volume`, only that volume's. */
  list(volume?: string): BackupEntry[];
  /** NOT_FOUND for an unknown id. */
  show(id: string): BackupEntry;
  /** Removes the catalog entry; with purgeMedia also the file or cartridges it names. */
  delete(id: string, purgeMedia: boolean): Promise<void>;
  /** Media roots able to take the next backup of a volume, with free space and estimated sizes. */
  candidates(volume: string): Promise<BackupCandidate[]>;
  /** Copies a complete backup to another medium as a new catalog entry linked to it (a job). */
  copy(id: string, to: string, mediaSizeBytes?: number): Promise<BackupEntry>;
  /** Reads a catalog id's medium, or a medium, to its end, checking everything (a job). */
  verify(source: string): Promise<{ jobId: string }>;
  /** Restores a catalog id or a medium into a volume by remap or writeback (a job); `attached`: the medium when `source` is "-" (the CLI's stdin). */
  restore(request: RestoreRequest, attached?: MediumReader): Promise<{ jobId: string }>;
}

export interface StorageArrayApi {
  readonly jobs: JobsApi;
  readonly backups: BackupsApi;
  /** Set by the daemon once NBD serves: how many connections hold an export read-write. */
  exportWritersHook: ((name: string) => number) | undefined;
  /** At daemon start, after every job kind is registered: resumes (or fails) jobs a previous run left. */
  startJobs(): void;

  poolShow(): PoolInfo;
  /** Adds a file (created sparse with sizeBytes when missing) or block device to the pool. */
  poolAdd(path: string, sizeBytes?: number): Promise<DiskInfo>;

  volumeCreate(request: VolumeCreateRequest): Promise<VolumeInfo>;
  volumeList(): VolumeInfo[];
  volumeShow(name: string): VolumeInfo;
  volumeMap(name: string): MapRun[];
  /**
   * Changes several properties at once: all are validated first and written in one transaction,
   * so a refused change applies none of them. Growing only; shrinking is refused.
   */
  volumeUpdate(name: string, changes: VolumeUpdateRequest): Promise<VolumeInfo>;
  /** Grows a volume; shrinking is refused with INVALID_ARGUMENT. */
  volumeResize(name: string, sizeBytes: number): Promise<VolumeInfo>;
  volumeDelete(name: string): Promise<void>;
  volumeSetAttr(name: string, attr: VolumeAttr): Promise<VolumeInfo>;
  volumeSetReadOnly(name: string, readOnly: boolean): Promise<VolumeInfo>;

  /**
   * Point-in-time copy of `source` into a new volume `target`: logically complete when this
   * resolves (the target reads as the point in time at once); the physical copy runs as the job
   * `jobId`. Refused up front: an existing target (ALREADY_EXISTS), a busy source (BUSY), a pool
   * that cannot hold the copy (NO_SPACE).
   */
  copyCreate(source: string, target: string, mode: CopyMode): Promise<CopyInfo>;
  /** Every copy kept (running, complete, failed), oldest first. */
  copyList(): CopyInfo[];
  /** A copy by id (digits) or by target volume name; withTable adds the correspondence table. */
  copyShow(idOrTarget: string, withTable: boolean): CopyInfo;

  /** The device NBD serves for an export name (= volume name); undefined when there is none. */
  openExport(name: string): BlockDevice | undefined;
  /** Export names a client may list (user volumes only: working volumes are never exported). */
  exportNames(): string[];

  /** Commits everything: data fdatasync'ed, then metadata. */
  sync(): Promise<void>;
  check(options: { repair: boolean }): Promise<CheckReport>;
  close(): Promise<void>;
}
