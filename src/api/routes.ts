/**
 * The one table of API routes. Each route: validate (schemas, done by the server) → call the
 * array → shape the answer. Paths are relative to /api/v1.
 */
import { PassThrough } from 'node:stream';
import { z } from 'zod';
import { ERROR_CODES, ThinError, type ErrorCode } from '../lib/errors.js';
import { LIMITS } from '../lib/limits.js';
import { ReadableMediumReader, WritableMediumWriter } from '../backup/media/index.js';
import type { JobInfo } from '../jobs/job-manager.js';
import { defineRoute, StreamResponse, TextResponse, type Route } from './router.js';
import {
  BackupCandidatesResponseSchema,
  BackupCopyRequestSchema,
  BackupCreateRequestSchema,
  BackupDeleteQuerySchema,
  BackupEntrySchema,
  BackupIdParamsSchema,
  BackupListQuerySchema,
  BackupListResponseSchema,
  BackupStreamRequestSchema,
  BackupVerifyRequestSchema,
  CheckReportSchema,
  CheckRequestSchema,
  CopyCreateRequestSchema,
  CopyIdParamsSchema,
  CopyInfoSchema,
  CopyListResponseSchema,
  CopyShowQuerySchema,
  DiskInfoResponseSchema,
  HealthResponseSchema,
  JobIdParamsSchema,
  JobInfoSchema,
  JobListResponseSchema,
  JobStartedSchema,
  JobWaitQuerySchema,
  PoolAddRequestSchema,
  RestoreRequestSchema,
  RestoreStreamQuerySchema,
  PoolInfoSchema,
  VolumeCreateRequestSchema,
  VolumeInfoSchema,
  VolumeListResponseSchema,
  VolumeMapResponseSchema,
  VolumeNameParamsSchema,
  VolumeUpdateRequestSchema,
} from './schemas.js';
import type { BackupCreateRequest, StorageArrayApi, VolumeAttr, VolumeInfo, VolumeUpdateRequest } from '../array/types.js';

export const API_PREFIX = '/api/v1';

/** The backup stream over HTTP (`-` media): its bytes exactly as on a file medium. */
const STREAM_CONTENT_TYPE = 'application/octet-stream';

export const ROUTES: readonly Route[] = [
  defineRoute({
    method: 'GET',
    path: '/health',
    operationId: 'getHealth',
    tag: 'daemon',
    summary: 'Liveness check (no token needed).',
    public: true,
    success: { status: 200, description: 'The daemon is up.', schema: HealthResponseSchema },
    errorStatuses: [],
    handle: (_input, context) => ({ status: 'ok', version: context.version }),
  }),
  defineRoute({
    method: 'GET',
    path: '/pool',
    operationId: 'getPool',
    tag: 'pool',
    summary: 'Pool size, usage, extent size, over-commit ratio and disks.',
    success: { status: 200, description: 'The pool.', schema: PoolInfoSchema },
    errorStatuses: [],
    handle: (_input, { array }) => array.poolShow(),
  }),
  defineRoute({
    method: 'POST',
    path: '/pool/disks',
    operationId: 'addPoolDisk',
    tag: 'pool',
    summary: 'Add a file (created sparse when missing) or a block device to the pool.',
    body: PoolAddRequestSchema,
    success: { status: 201, description: 'The disk added.', schema: DiskInfoResponseSchema },
    errorStatuses: [400, 409, 507],
    handle: ({ body }, { array }) => array.poolAdd(body.path, body.sizeBytes),
  }),
  defineRoute({
    method: 'GET',
    path: '/volumes',
    operationId: 'listVolumes',
    tag: 'volumes',
    summary: 'All volumes with capacity and allocation.',
    success: { status: 200, description: 'The volumes.', schema: VolumeListResponseSchema },
    errorStatuses: [],
    handle: (_input, { array }) => ({ volumes: array.volumeList() }),
  }),
  defineRoute({
    method: 'POST',
    path: '/volumes',
    operationId: 'createVolume',
    tag: 'volumes',
    summary: 'Create a thin volume (capacity may exceed the pool).',
    body: VolumeCreateRequestSchema,
    success: { status: 201, description: 'The volume created.', schema: VolumeInfoSchema },
    errorStatuses: [400, 409],
    handle: ({ body }, { array }) => array.volumeCreate(body),
  }),
  defineRoute({
    method: 'GET',
    path: '/volumes/:name',
    operationId: 'getVolume',
    tag: 'volumes',
    summary: 'One volume.',
    params: VolumeNameParamsSchema,
    success: { status: 200, description: 'The volume.', schema: VolumeInfoSchema },
    errorStatuses: [400, 404],
    handle: ({ params }, { array }) => array.volumeShow(params.name),
  }),
  defineRoute({
    method: 'GET',
    path: '/volumes/:name/map',
    operationId: 'getVolumeMap',
    tag: 'volumes',
    summary: "The volume's allocation map as runs of mapped and unmapped bytes.",
    params: VolumeNameParamsSchema,
    success: { status: 200, description: 'The allocation map.', schema: VolumeMapResponseSchema },
    errorStatuses: [400, 404],
    handle: ({ params }, { array }) => ({
      name: params.name,
      extentBytes: array.poolShow().extentBytes,
      runs: array.volumeMap(params.name),
    }),
  }),
  defineRoute({
    method: 'PATCH',
    path: '/volumes/:name',
    operationId: 'updateVolume',
    tag: 'volumes',
    summary: 'Grow a volume, change its attribute or its read-only flag.',
    params: VolumeNameParamsSchema,
    body: VolumeUpdateRequestSchema,
    success: { status: 200, description: 'The volume after the change.', schema: VolumeInfoSchema },
    errorStatuses: [400, 404, 409, 507],
    handle: ({ params, body }, { array }) => updateVolume(array, params.name, body),
  }),
  defineRoute({
    method: 'DELETE',
    path: '/volumes/:name',
    operationId: 'deleteVolume',
    tag: 'volumes',
    summary: 'Delete a volume and return its extents to the pool.',
    params: VolumeNameParamsSchema,
    success: { status: 204, description: 'Deleted.' },
    errorStatuses: [400, 404, 409],
    handle: ({ params }, { array }) => array.volumeDelete(params.name),
  }),
  defineRoute({
    method: 'GET',
    path: '/copies',
    operationId: 'listCopies',
    tag: 'copies',
    summary: 'Point-in-time copies (running, complete, failed), oldest first.',
    success: { status: 200, description: 'The copies.', schema: CopyListResponseSchema },
    errorStatuses: [],
    handle: (_input, { array }) => ({ copies: array.copyList() }),
  }),
  defineRoute({
    method: 'POST',
    path: '/copies',
    operationId: 'createCopy',
    tag: 'copies',
    summary:
      'Take a point-in-time copy of a volume into a new volume. The copy is logically complete when this answers; the physical copy runs as the job `jobId`.',
    body: CopyCreateRequestSchema,
    success: { status: 202, description: 'The copy, with the id of its background job.', schema: CopyInfoSchema },
    errorStatuses: [400, 404, 409, 507],
    handle: ({ body }, { array }) => array.copyCreate(body.source, body.target, body.mode),
  }),
  defineRoute({
    method: 'GET',
    path: '/copies/:id',
    operationId: 'getCopy',
    tag: 'copies',
    summary: 'One copy, by id or by target volume name; `?table=true` adds the correspondence table.',
    params: CopyIdParamsSchema,
    query: CopyShowQuerySchema,
    success: { status: 200, description: 'The copy.', schema: CopyInfoSchema },
    errorStatuses: [400, 404],
    handle: ({ params, query }, { array }) => array.copyShow(params.id, query.table === true),
  }),
  defineRoute({
    method: 'POST',
    path: '/backups',
    operationId: 'createBackup',
    tag: 'backups',
    summary:
      'Back up a volume to a medium, server-free. The point in time is taken before this answers; the stream is written by the job `jobId`, and the entry becomes "complete" (with bytes, extents and digest) when it ends.',
    body: BackupCreateRequestSchema,
    success: { status: 202, description: 'The catalog entry (state "running"), with the id of its job.', schema: BackupEntrySchema },
    errorStatuses: [400, 404, 409, 507],
    handle: ({ body }, { array }) => array.backups.create(backupCreateRequest(body)),
  }),
  defineRoute({
    method: 'POST',
    path: '/backups/stream',
    operationId: 'streamBackup',
    tag: 'backups',
    summary:
      'Back up a volume to the caller (the CLI\'s `--to -`): the answer\'s body is the backup stream (docs/format.md), produced by the job named in the `x-thinarray-job-id` header for the catalog entry in `x-thinarray-backup-id`. A failure cuts the stream short; the job and the entry then say why.',
    body: BackupStreamRequestSchema,
    success: { status: 200, description: 'The backup stream.', contentType: STREAM_CONTENT_TYPE },
    errorStatuses: [400, 404, 409, 507],
    handle: async ({ body }, { array }) => {
      const stream = new PassThrough({ highWaterMark: LIMITS.backup.writeChunkBytes });
      const entry = await array.backups.create(backupCreateRequest({ ...body, to: '-' }), new WritableMediumWriter(stream, "the CLI's stdout"));
      return new StreamResponse(STREAM_CONTENT_TYPE, { 'x-thinarray-backup-id': entry.id, 'x-thinarray-job-id': entry.jobId ?? '' }, stream);
    },
  }),
  defineRoute({
    method: 'GET',
    path: '/backups',
    operationId: 'listBackups',
    tag: 'backups',
    summary: 'The backup catalog, oldest first; `?volume=NAME` keeps one volume\'s backups.',
    query: BackupListQuerySchema,
    success: { status: 200, description: 'The catalog entries.', schema: BackupListResponseSchema },
    errorStatuses: [400],
    handle: ({ query }, { array }) => ({ backups: array.backups.list(query.volume) }),
  }),
  defineRoute({
    method: 'POST',
    path: '/backups/verify',
    operationId: 'verifyBackup',
    tag: 'backups',
    summary: 'Read a backup (catalog id) or a medium to its end and check every frame, checksum and the stream digest, as the job `jobId`; the job fails naming the first damage.',
    body: BackupVerifyRequestSchema,
    success: { status: 202, description: 'The verify job.', schema: JobStartedSchema },
    errorStatuses: [400, 404, 409],
    handle: ({ body }, { array }) => array.backups.verify(body.source),
  }),
  defineRoute({
    method: 'GET',
    path: '/backups/:id',
    operationId: 'getBackup',
    tag: 'backups',
    summary: 'One catalog entry.',
    params: BackupIdParamsSchema,
    success: { status: 200, description: 'The catalog entry.', schema: BackupEntrySchema },
    errorStatuses: [400, 404],
    handle: ({ params }, { array }) => array.backups.show(params.id),
  }),
  defineRoute({
    method: 'DELETE',
    path: '/backups/:id',
    operationId: 'deleteBackup',
    tag: 'backups',
    summary: 'Remove a catalog entry (not while its job runs or a restore, verify or copy job reads it, nor while incrementals build on it and no complete copy of it remains: their restores need it); `?purgeMedia=true` also removes the backup file or its cartridges, unless the medium also holds another entry\'s stream.',
    params: BackupIdParamsSchema,
    query: BackupDeleteQuerySchema,
    success: { status: 204, description: 'Deleted.' },
    errorStatuses: [400, 404, 409],
    handle: ({ params, query }, { array }) => array.backups.delete(params.id, query.purgeMedia === true),
  }),
  defineRoute({
    method: 'POST',
    path: '/backups/:id/copy',
    operationId: 'copyBackup',
    tag: 'backups',
    summary:
      'Copy a complete backup to another medium as it is (its stream, header and management information), as the job `jobId`; the copy is read back and checked against the original\'s digest, and becomes a catalog entry of its own with `copiedFrom` naming the original.',
    params: BackupIdParamsSchema,
    body: BackupCopyRequestSchema,
    success: { status: 202, description: 'The catalog entry of the copy (state "running"), with the id of its job.', schema: BackupEntrySchema },
    errorStatuses: [400, 404, 409],
    handle: ({ params, body }, { array }) => array.backups.copy(params.id, body.to, body.mediaSizeBytes),
  }),
  defineRoute({
    method: 'GET',
    path: '/volumes/:name/backup-candidates',
    operationId: 'backupCandidates',
    tag: 'backups',
    summary: 'Where the next backup of a volume can go: each media root, its cartridge sets, and the empty volumes that can be its backup region (volume:NAME), with free space and the size a full and an incremental backup would take now.',
    params: VolumeNameParamsSchema,
    success: { status: 200, description: 'The candidates.', schema: BackupCandidatesResponseSchema },
    errorStatuses: [400, 404],
    handle: async ({ params }, { array }) => ({ volume: params.name, candidates: await array.backups.candidates(params.name) }),
  }),
  defineRoute({
    method: 'POST',
    path: '/restores',
    operationId: 'restoreBackup',
    tag: 'backups',
    summary:
      'Restore a backup (catalog id) or a medium into a volume by remap (new or existing volume; the map is installed once the stream checked out) or writeback (existing volume; original addresses), as the job `jobId`.',
    body: RestoreRequestSchema,
    success: { status: 202, description: 'The restore job.', schema: JobStartedSchema },
    errorStatuses: [400, 404, 409],
    handle: ({ body }, { array }) => array.backups.restore(body),
  }),
  defineRoute({
    method: 'POST',
    path: '/restores/stream',
    operationId: 'restoreStream',
    tag: 'backups',
    summary:
      'Restore the backup stream sent as the request body (the CLI\'s `restore -`, from its stdin) into a volume; options in the query. Answers when the restore job has ended: the job, succeeded, or the error that failed it.',
    streamedBody: STREAM_CONTENT_TYPE,
    query: RestoreStreamQuerySchema,
    success: { status: 200, description: 'The restore job, succeeded.', schema: JobInfoSchema },
    errorStatuses: [400, 404, 409, 415],
    handle: async ({ query, stream }, { array }) => {
      const reader = new ReadableMediumReader(stream, "the CLI's stdin");
      const { jobId } = await array.backups.restore({ source: '-', ...query }, reader).catch(async (error: unknown) => {
        await reader.close();
        throw error;
      });
      return await jobOutcome(array, jobId);
    },
  }),
  defineRoute({
    method: 'GET',
    path: '/jobs',
    operationId: 'listJobs',
    tag: 'jobs',
    summary: 'Every job kept (running, queued and the most recent finished ones), newest first.',
    success: { status: 200, description: 'The jobs.', schema: JobListResponseSchema },
    errorStatuses: [],
    handle: (_input, { array }) => ({ jobs: array.jobs.list() }),
  }),
  defineRoute({
    method: 'GET',
    path: '/jobs/:id',
    operationId: 'getJob',
    tag: 'jobs',
    summary: `One job with its progress; with waitMs, answers when it finishes or after waitMs (at most ${LIMITS.jobWaitMsMax}).`,
    params: JobIdParamsSchema,
    query: JobWaitQuerySchema,
    success: { status: 200, description: 'The job.', schema: JobInfoSchema },
    errorStatuses: [400, 404],
    handle: ({ params, query }, { array, closing }) =>
      query.waitMs === undefined ? array.jobs.get(params.id) : array.jobs.wait(params.id, query.waitMs, closing),
  }),
  defineRoute({
    method: 'POST',
    path: '/jobs/:id/cancel',
    operationId: 'cancelJob',
    tag: 'jobs',
    summary: 'Cancel a queued or running job (a running one winds down: `cancelling` until it ends "cancelled").',
    params: JobIdParamsSchema,
    success: { status: 200, description: 'The job after the request.', schema: JobInfoSchema },
    errorStatuses: [400, 404, 409],
    handle: ({ params }, { array }) => array.jobs.cancel(params.id),
  }),
  defineRoute({
    method: 'POST',
    path: '/check',
    operationId: 'checkArray',
    tag: 'array',
    summary: 'Check metadata consistency (double-mapped or leaked extents); optionally repair.',
    body: CheckRequestSchema,
    success: { status: 200, description: 'The check report.', schema: CheckReportSchema },
    errorStatuses: [400],
    handle: ({ body }, { array }) => array.check({ repair: body.repair }),
  }),
  defineRoute({
    method: 'GET',
    path: '/openapi.json',
    operationId: 'getOpenApi',
    tag: 'daemon',
    summary: 'This document (OpenAPI 3.1).',
    success: { status: 200, description: 'The OpenAPI document.', schema: z.object({}).loose() },
    errorStatuses: [],
    handle: (_input, context) => context.openApiDocument(),
  }),
  defineRoute({
    method: 'GET',
    path: '/metrics',
    operationId: 'getMetrics',
    tag: 'daemon',
    summary: 'Prometheus metrics: NBD requests, bytes and latency; pool and volume usage; jobs and their progress.',
    success: { status: 200, description: 'Prometheus text exposition format.', contentType: 'text/plain; version=0.0.4' },
    errorStatuses: [],
    handle: async (_input, { metrics }) => {
      if (!metrics) throw new ThinError('UNSUPPORTED', 'metrics are not enabled in this server');
      return new TextResponse(metrics.contentType, await metrics.render());
    },
  }),
];

interface VolumeUpdate {
  sizeBytes?: number | undefined;
  attr?: VolumeAttr | undefined;
  readOnly?: boolean | undefined;
}

/**
 * Applies several changes without half-applying them: every precondition we can see is checked
 * before the first change (the volume exists, no shrink), and the change most likely to fail
 * (growing, which may hit limits) goes first. A failure of a later step after an earlier one
 * succeeded would need a transactional volumeUpdate in the array (not there yet).
 */
function updateVolume(array: StorageArrayApi, name: string, update: VolumeUpdate): Promise<VolumeInfo> {
  // One call, one transaction: a refused field leaves every other field as it was.
  const changes: VolumeUpdateRequest = {};
  if (update.sizeBytes !== undefined) changes.sizeBytes = update.sizeBytes;
  if (update.attr !== undefined) changes.attr = update.attr;
  if (update.readOnly !== undefined) changes.readOnly = update.readOnly;
  return array.volumeUpdate(name, changes);
}

/** Only the fields given: the manager tells "not given" from "given empty". */
function backupCreateRequest(body: { volume: string; to: string; incremental?: boolean | undefined; via?: string | undefined; mediaSizeBytes?: number | undefined; labels?: string[] | undefined; description?: string | undefined }): BackupCreateRequest {
  const request: BackupCreateRequest = { volume: body.volume, to: body.to };
  if (body.incremental !== undefined) request.incremental = body.incremental;
  if (body.via !== undefined) request.via = body.via;
  if (body.mediaSizeBytes !== undefined) request.mediaSizeBytes = body.mediaSizeBytes;
  if (body.labels !== undefined) request.labels = body.labels;
  if (body.description !== undefined) request.description = body.description;
  return request;
}

/** Waits for a job to end, without a deadline (the caller is streaming to it); its error becomes the answer. */
async function jobOutcome(array: StorageArrayApi, jobId: string): Promise<JobInfo> {
  for (;;) {
    const info = await array.jobs.wait(jobId, LIMITS.jobWaitMsMax);
    if (info.state === 'succeeded') return info;
    if (info.state === 'failed' || info.state === 'cancelled') {
      const code = info.error && info.error.code in ERROR_CODES ? (info.error.code as ErrorCode) : 'IO_ERROR';
      throw new ThinError(code, info.error?.message ?? `job ${jobId} ${info.state}`);
    }
  }
}
