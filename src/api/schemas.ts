/**
 * The zod schemas of the HTTP API: request bodies and path parameters are validated with them,
 * and the OpenAPI document is generated from them (with the route table in routes.ts).
 * Response schemas are typed against src/array/types.ts so a change there fails to compile here.
 */
import { z } from 'zod';
import { LIMITS } from '../lib/limits.js';
import { isThinError } from '../lib/errors.js';
import { parseSizeBytes } from '../lib/sizes.js';
import type { BackupCandidate, BackupEntry, CheckReport, CopyInfo, DiskInfo, JobInfo, MapRun, PoolInfo, VolumeInfo } from '../array/types.js';

/** Volume (= NBD export) names: no slashes, spaces or leading dots, so they are safe in URLs, paths and NBD URIs. */
export const VOLUME_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const SIZE_TEXT_PATTERN = /^\s*\d+(?:\.\d+)?\s*[A-Za-z]*\s*$/;

/** Missing fields say "is required" instead of zod's "expected string, received undefined". */
function requiredOr(message: string) {
  return (issue: { input?: unknown }): string => (issue.input === undefined ? 'is required' : message);
}

export const VolumeNameSchema = z
  .string({ error: requiredOr('expected a volume name (a string)') })
  .regex(VOLUME_NAME_PATTERN, {
    error: 'must be 1-128 characters: letters, digits, ".", "_" or "-", starting with a letter or digit',
  })
  .meta({ description: 'Volume name, also the NBD export name.', examples: ['vm1-disk0'] });

/**
 * A size: a whole number of bytes or a string with a binary suffix ("64K", "10G").
 * The field name is added by the issue path, so messages here do not repeat it.
 */
function sizeSchema(options: { minBytes: number; description: string }) {
  return z
    .union([z.number().int().min(0), z.string().regex(SIZE_TEXT_PATTERN)], {
      error: requiredOr('expected a whole number of bytes >= 0 or a size such as "64K", "10G", "2T"'),
    })
    .transform((value, context): number => {
      let bytes: number;
      try {
        bytes = parseSizeBytes(value);
      } catch (error) {
        context.addIssue({ code: 'custom', message: isThinError(error) ? stripFieldPrefix(error.message) : String(error) });
        return z.NEVER;
      }
      if (bytes < options.minBytes) {
        context.addIssue({ code: 'custom', message: `must be at least ${options.minBytes} bytes, got ${bytes}` });
        return z.NEVER;
      }
      if (bytes > LIMITS.volumeBytesMax) {
        context.addIssue({ code: 'custom', message: `must be at most ${LIMITS.volumeBytesMax} bytes, got ${bytes}` });
        return z.NEVER;
      }
      return bytes;
    })
    .meta({ description: options.description, examples: ['10G', 1073741824] });
}

/** parseSizeBytes prefixes its messages with "size: "; our issue path names the field instead. */
function stripFieldPrefix(message: string): string {
  return message.replace(/^size: /, '');
}

export const VolumeSizeSchema = sizeSchema({ minBytes: 1, description: 'Capacity in bytes, or a string such as "10G".' });
export const DiskSizeSchema = sizeSchema({ minBytes: 1, description: 'Size of a new pool file in bytes, or a string such as "64G".' });

export const VolumeAttrSchema = z.enum(['user', 'work']).meta({
  description: '"user" volumes are exported to hosts; "work" volumes are working space for copy-before-write backups and never exported.',
});

// ---- requests ----

export const VolumeNameParamsSchema = z.object({ name: VolumeNameSchema });

export const PoolAddRequestSchema = z.strictObject({
  path: z
    .string({ error: requiredOr('expected an absolute path (a string)') })
    .min(1)
    .refine((path) => path.startsWith('/'), { error: 'must be an absolute path' })
    .meta({ description: 'Absolute path of a file (created sparse when missing) or a block device.' }),
  sizeBytes: DiskSizeSchema.optional(),
});

export const VolumeCreateRequestSchema = z.strictObject({
  name: VolumeNameSchema,
  sizeBytes: VolumeSizeSchema,
  readOnly: z.boolean().optional().meta({ description: 'Export the volume read-only.' }),
  attr: VolumeAttrSchema.optional(),
});

export const VolumeUpdateRequestSchema = z
  .strictObject({
    sizeBytes: VolumeSizeSchema.optional().meta({ description: 'New capacity; volumes only grow.' }),
    attr: VolumeAttrSchema.optional(),
    readOnly: z.boolean().optional(),
  })
  .refine((body) => body.sizeBytes !== undefined || body.attr !== undefined || body.readOnly !== undefined, {
    error: 'give at least one of sizeBytes, attr, readOnly',
  });

export const JobIdParamsSchema = z.object({
  id: z
    .string({ error: requiredOr('expected a job id (a string)') })
    .min(1)
    .max(64)
    .meta({ description: 'Job id, as `job list` shows it.', examples: ['job-000042'] }),
});

export const JobWaitQuerySchema = z.strictObject({
  waitMs: z
    .string()
    .regex(/^\d{1,9}$/, { error: `must be a whole number of milliseconds from 0 to ${LIMITS.jobWaitMsMax}` })
    .transform(Number)
    .refine((waitMs) => waitMs <= LIMITS.jobWaitMsMax, { error: `must be at most ${LIMITS.jobWaitMsMax} (milliseconds)` })
    .optional()
    .meta({ description: `Long poll: answer when the job finishes or after this many milliseconds (at most ${LIMITS.jobWaitMsMax}), whichever is first.` }),
});

export const CopyModeSchema = z.enum(['instant', 'compact']).meta({
  description:
    '"instant" keeps the source\'s capacity and addresses; "compact" packs the source\'s mapped extents in logical order behind a self-describing header (docs/compact-copy.md).',
});

export const CopyCreateRequestSchema = z.strictObject({
  source: VolumeNameSchema.meta({ description: 'The volume to copy.', examples: ['vm1-disk0'] }),
  target: VolumeNameSchema.meta({ description: 'Name of the new volume that becomes the copy (must not exist).', examples: ['vm1-disk0-snap'] }),
  mode: CopyModeSchema.default('instant'),
});

export const CopyIdParamsSchema = z.object({
  id: z
    .string({ error: requiredOr('expected a copy id or a target volume name (a string)') })
    .regex(/^(\d{1,15}|[A-Za-z0-9][A-Za-z0-9._-]{0,127})$/, { error: 'must be a copy id (digits) or a target volume name' })
    .meta({ description: 'Copy id (digits, as `copy list` shows it) or the name of its target volume.', examples: ['1', 'vm1-disk0-snap'] }),
});

export const CopyShowQuerySchema = z.strictObject({
  table: z
    .enum(['true', 'false'], { error: 'must be true or false' })
    .transform((text) => text === 'true')
    .optional()
    .meta({ description: 'Add the correspondence table (X_i → source extent A_j).' }),
});

// ---- backups ----

/** Catalog ids as the daemon makes them: bk- and a number. */
const BACKUP_ID_PATTERN = /^bk-\d{1,15}$/;
/** file:/dir: media must be absolute: the daemon's cwd means nothing to the requester (the CLI resolves relative paths). */
const RELATIVE_MEDIUM_PATTERN = /^(file|dir):(?!\/)/;

function mediumSchema(description: string) {
  return z
    .string({ error: requiredOr('expected a medium such as "file:/path" or "dir:/path" (a string)') })
    .min(1, { error: 'must not be empty' })
    .max(4096, { error: 'must be at most 4096 characters' })
    .refine((text) => !RELATIVE_MEDIUM_PATTERN.test(text), { error: 'a file: or dir: medium needs an absolute path (file:/ABS/PATH)' })
    .meta({ description, examples: ['file:/srv/backups/vm1.tbk', 'dir:/srv/cartridges'] });
}

export const BackupIdSchema = z
  .string({ error: requiredOr('expected a backup id (a string)') })
  .regex(BACKUP_ID_PATTERN, { error: 'must be a backup id such as bk-000001' })
  .meta({ description: 'Catalog id of a backup, as `backup list` shows it.', examples: ['bk-000001'] });

export const BackupIdParamsSchema = z.object({ id: BackupIdSchema });

export const BackupCreateRequestSchema = z.strictObject({
  volume: VolumeNameSchema.meta({ description: 'The volume to back up.', examples: ['vm1-disk0'] }),
  to: mediumSchema('Where the stream goes: file:/ABS/PATH (plain file, FIFO or tape device) or dir:/ABS/DIR (cartridges; needs mediaSizeBytes), under one of the daemon\'s --media-root directories; or volume:NAME, an empty volume of the array used as a backup region.'),
  incremental: z
    .boolean({ error: 'expected true or false' })
    .optional()
    .meta({ description: "Only the extents changed since the volume's previous complete backup (a full backup when there is none)." }),
  via: z
    .string({ error: 'expected a string' })
    .max(200, { error: 'must be at most 200 characters' })
    .optional()
    .meta({ description: 'How the point in time is taken: "compact" (the default: a compact point-in-time view; the catalog\'s `method`). "pair:NAME" (a split mirror pair) and "cow" (copy-before-write through working volumes) are refused with UNSUPPORTED until those features exist.', examples: ['compact'] }),
  mediaSizeBytes: sizeSchema({ minBytes: 1, description: 'dir: media: the size of each cartridge file, label included (bytes or "1G").' }).optional(),
  labels: z
    .array(z.string().max(200, { error: 'must be at most 200 characters' }), { error: 'expected a list of strings' })
    .max(32, { error: 'at most 32 labels' })
    .optional()
    .meta({ description: 'Free labels kept in the catalog and the stream header.', examples: [['nightly']] }),
  description: z.string({ error: 'expected a string' }).max(4000, { error: 'must be at most 4000 characters' }).optional().meta({ description: 'Free text kept in the catalog and the stream header.' }),
});

export const BackupListQuerySchema = z.strictObject({
  volume: VolumeNameSchema.optional().meta({ description: 'Only the backups of this volume.' }),
});

export const BackupDeleteQuerySchema = z.strictObject({
  purgeMedia: z
    .enum(['true', 'false'], { error: 'must be true or false' })
    .transform((text) => text === 'true')
    .optional()
    .meta({ description: 'Also remove the backup file or its cartridges from the medium.' }),
});

const BackupSourceSchema = z
  .union([BackupIdSchema, mediumSchema('')], { error: 'expected a backup id (bk-…) or a medium (file:/ABS/PATH, dir:/ABS/DIR)' })
  .meta({ description: 'A catalog id (bk-…), a medium (file:/ABS/PATH, dir:/ABS/DIR) under the media roots, or a backup region (volume:NAME).', examples: ['bk-000001', 'file:/srv/backups/vm1.tbk'] });

export const BackupVerifyRequestSchema = z.strictObject({ source: BackupSourceSchema });

export const RestoreMethodSchema = z.enum(['remap', 'writeback'], { error: 'must be "remap" or "writeback"' }).meta({
  description:
    '"remap": the image is written once, sequentially, to new extents and the allocation map is installed from the correspondence table when the whole stream has checked out (a damaged stream leaves the volume as it was); "writeback": every extent to its original address in an existing volume, extents unmapped at backup time trimmed (a failure marks the volume "incomplete").',
});

export const RestoreRequestSchema = z.strictObject({
  source: BackupSourceSchema,
  to: VolumeNameSchema.meta({ description: 'The volume to restore into.', examples: ['vm1-disk0-restored'] }),
  method: RestoreMethodSchema.default('remap'),
  create: z.boolean({ error: 'expected true or false' }).default(false).meta({ description: 'Create the volume `to` (with the backed-up capacity); it must not exist.' }),
  force: z.boolean({ error: 'expected true or false' }).default(false).meta({ description: 'Restore even though hosts have the volume open read-write over NBD.' }),
});

export const BackupStreamRequestSchema = BackupCreateRequestSchema.omit({ to: true, mediaSizeBytes: true });

export const BackupCopyRequestSchema = z.strictObject({
  to: mediumSchema('Where the copy goes: file:/ABS/PATH or dir:/ABS/DIR (cartridges; needs mediaSizeBytes), under a media root, and not the backup\'s own medium.'),
  mediaSizeBytes: sizeSchema({ minBytes: 1, description: 'dir: media: the size of each cartridge file, label included (bytes or "1G").' }).optional(),
});

const queryFlag = (description: string) =>
  z.enum(['true', 'false'], { error: 'must be true or false' }).default('false').transform((text) => text === 'true').meta({ description });

export const RestoreStreamQuerySchema = z.strictObject({
  to: VolumeNameSchema.meta({ description: 'The volume to restore into.', examples: ['vm1-disk0-restored'] }),
  method: RestoreMethodSchema.default('remap'),
  create: queryFlag('Create the volume `to` (with the backed-up capacity); it must not exist.'),
  force: queryFlag('Restore even though hosts have the volume open read-write over NBD.'),
});

export const JobStartedSchema = z.object({ jobId: z.string().meta({ description: 'The job doing the work (see /jobs/{id}).' }) });

export const CheckRequestSchema = z.strictObject({
  repair: z.boolean().default(false).meta({ description: 'Return leaked extents to the pool and fix what can be fixed.' }),
});

// ---- responses ----

export const ErrorResponseSchema = z
  .object({
    error: z.object({
      code: z.string().meta({ description: 'Stable error code (src/lib/errors.ts), e.g. INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS.' }),
      message: z.string(),
      field: z.string().optional().meta({ description: 'The input field the error is about.' }),
    }),
  })
  .meta({ id: 'Error' });

export const HealthResponseSchema = z.object({ status: z.literal('ok'), version: z.string() });

const DiskInfoSchema: z.ZodType<DiskInfo> = z.object({
  id: z.number().int(),
  path: z.string(),
  kind: z.enum(['file', 'block']),
  sizeBytes: z.number().int(),
  extents: z.number().int(),
  usedExtents: z.number().int(),
});
export const DiskInfoResponseSchema = DiskInfoSchema;

export const PoolInfoSchema: z.ZodType<PoolInfo> = z.object({
  extentBytes: z.number().int(),
  sizeBytes: z.number().int(),
  usedBytes: z.number().int(),
  freeBytes: z.number().int(),
  extentsTotal: z.number().int(),
  extentsUsed: z.number().int(),
  extentsFree: z.number().int(),
  provisionedBytes: z.number().int().meta({ description: 'Sum of all volume capacities.' }),
  overcommitRatio: z.number().meta({ description: 'provisionedBytes / sizeBytes (0 when the pool is empty).' }),
  disks: z.array(DiskInfoSchema),
});

export const VolumeInfoSchema: z.ZodType<VolumeInfo> = z.object({
  name: z.string(),
  uuid: z.string(),
  capacityBytes: z.number().int(),
  allocatedBytes: z.number().int(),
  allocatedPercent: z.number(),
  mappedExtents: z.number().int(),
  attr: VolumeAttrSchema,
  readOnly: z.boolean(),
  createdAt: z.string(),
  state: z.string(),
  holdsBackup: z.string().nullable().meta({ description: 'The backup this volume holds as a backup region (`backup create --to volume:NAME`): it is then exported read-only and cannot be deleted, resized, made read-only or restored into until that backup is deleted (with --purge-media the region is also emptied). Null otherwise.' }),
});

export const VolumeListResponseSchema = z.object({ volumes: z.array(VolumeInfoSchema) });

const MapRunSchema: z.ZodType<MapRun> = z.object({
  offsetBytes: z.number().int(),
  lengthBytes: z.number().int(),
  mapped: z.boolean(),
});
export const VolumeMapResponseSchema = z.object({ name: z.string(), extentBytes: z.number().int(), runs: z.array(MapRunSchema) });

export const CheckReportSchema: z.ZodType<CheckReport> = z.object({
  ok: z.boolean(),
  volumesChecked: z.number().int(),
  mappedExtents: z.number().int(),
  problems: z.array(
    z.object({
      kind: z.enum(['double-mapped', 'out-of-range', 'mapped-but-free', 'leaked', 'bad-page']),
      detail: z.string(),
    }),
  ),
  repaired: z.number().int(),
});

export const CopyInfoSchema: z.ZodType<CopyInfo> = z
  .object({
    id: z.number().int(),
    source: z.string().meta({ description: 'Source volume name at the point in time.' }),
    target: z.string().meta({ description: 'Target volume name ("(deleted)" once it is gone).' }),
    mode: CopyModeSchema,
    state: z.enum(['copying', 'complete', 'failed']).meta({
      description: '"copying": logically complete, physical copy running (target exported read-only); "complete": an ordinary, independent volume.',
    }),
    pointInTime: z.string(),
    finishedAt: z.string().nullable(),
    jobId: z.string().nullable().meta({ description: 'The background copy job (see /jobs/{id}).' }),
    extentBytes: z.number().int(),
    sourceCapacityBytes: z.number().int(),
    extentCount: z.number().int().meta({ description: 'Source extents mapped at the point in time: what the copy holds.' }),
    metadataExtents: z.number().int().meta({ description: 'Compact copies: extents taken by the header and table before X_1 (0 for instant copies).' }),
    targetCapacityBytes: z.number().int().meta({ description: 'instant: the source capacity; compact: (metadataExtents + extentCount) × extentBytes.' }),
    correspondence: z
      .array(
        z.object({
          x: z.number().int().meta({ description: 'X_i, 1-based: the i-th data extent of the copy.' }),
          sourceExtent: z.number().int().meta({ description: 'A_j: the source logical extent it holds.' }),
          sourceOffsetBytes: z.number().int(),
        }),
      )
      .optional()
      .meta({ description: 'With ?table=true only.' }),
  })
  .meta({ id: 'CopyInfo' });

export const CopyListResponseSchema = z.object({ copies: z.array(CopyInfoSchema).meta({ description: 'Oldest first.' }) });

const JobStateSchema = z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled']);

export const JobInfoSchema: z.ZodType<JobInfo> = z.object({
  id: z.string(),
  kind: z.string().meta({ description: 'What the job does, e.g. "copy", "backup".' }),
  state: JobStateSchema,
  description: z.string(),
  params: z.unknown().meta({ description: 'The parameters the job was started with.' }),
  progress: z.object({
    doneBytes: z.number().int(),
    totalBytes: z.number().int().meta({ description: '0 while not yet known.' }),
    rateBytesPerSec: z.number().meta({ description: 'Over the last seconds (a moving window); 0 when not running.' }),
    etaSeconds: z.number().nullable().meta({ description: 'null while unknown.' }),
  }),
  result: z.unknown().optional().meta({ description: 'On success: what the job produced.' }),
  error: z
    .object({ code: z.string(), message: z.string() })
    .optional()
    .meta({ description: 'When failed or cancelled. Codes: those of errors, plus INTERRUPTED (the daemon stopped and the job cannot resume) and CANCELLED.' }),
  createdAt: z.string(),
  startedAt: z.string().optional(),
  finishedAt: z.string().optional(),
  cancelling: z.boolean().optional().meta({ description: 'Cancel was requested; the job is winding down.' }),
});

export const JobListResponseSchema = z.object({ jobs: z.array(JobInfoSchema).meta({ description: 'Newest first.' }) });

export const BackupEntrySchema: z.ZodType<BackupEntry> = z
  .object({
    id: z.string(),
    number: z.number().int(),
    volumeName: z.string().meta({ description: 'The source volume, by name at backup time.' }),
    volumeUuid: z.string(),
    pointInTime: z.string().meta({ description: 'When the point in time was taken (ISO 8601).' }),
    method: z.string().meta({ description: 'How the point in time was taken: "compact" (a compact point-in-time view).' }),
    kind: z.enum(['full', 'incremental']),
    parentId: z.string().nullable(),
    generation: z.number().int().meta({ description: 'Per source volume, counting complete backups.' }),
    medium: z.string().meta({ description: 'file:/ABS/PATH or dir:/ABS/DIR (cartridges <id>.0001, .0002, …).' }),
    state: z.enum(['running', 'complete', 'failed']),
    streamBytes: z.number().int().meta({ description: 'Bytes of the whole stream on the medium (cartridge labels not counted).' }),
    dataBytes: z.number().int(),
    extents: z.number().int().meta({ description: 'Data extents in the stream (the used extents at the point in time).' }),
    capacityBytes: z.number().int(),
    extentBytes: z.number().int(),
    digest: z.string().nullable().meta({ description: 'The stream digest (hex, SHA-256 of the header and every frame header; docs/format.md), once complete.' }),
    labels: z.array(z.string()),
    description: z.string(),
    jobId: z.string().nullable().meta({ description: 'The job writing the stream (see /jobs/{id}).' }),
    copiedFrom: z.string().nullable(),
    error: z.string().nullable(),
    createdAt: z.string(),
    finishedAt: z.string().nullable(),
  })
  .meta({ id: 'BackupEntry' });

export const BackupListResponseSchema = z.object({ backups: z.array(BackupEntrySchema).meta({ description: 'Oldest first.' }) });

export const BackupCandidateSchema: z.ZodType<BackupCandidate> = z
  .object({
    medium: z.string().meta({ description: 'A medium for `backup create --to`: a file in the root (replace <id> with a name of your choice), or a cartridge set (dir:) found in it.' }),
    root: z.string().meta({ description: 'The media root (serve --media-root).' }),
    freeBytes: z.number().int().meta({ description: 'Free space in the root for the daemon (statfs bavail × bsize); 0 when the root cannot be read.' }),
    fullBytes: z.number().int().meta({ description: 'What a full backup of the volume would take now: its used data plus the stream\'s framing.' }),
    incrementalBytes: z.number().int().nullable().meta({ description: 'What an incremental would take now; null when there is no complete backup to build on.' }),
    fitsFull: z.boolean(),
    fitsIncremental: z.boolean(),
  })
  .meta({ id: 'BackupCandidate' });

export const BackupCandidatesResponseSchema = z.object({
  volume: z.string(),
  candidates: z.array(BackupCandidateSchema).meta({ description: 'Per media root, in the order the daemon was given them: a file in the root, then the cartridge sets in it (the root itself, or a directory right under it, holding cartridges).' }),
});
