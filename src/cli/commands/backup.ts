/**
 * `thinarray backup create|list|show|delete|verify|candidates|copy`: server-free backups. The
 * daemon does the work as jobs; the CLI only names the volume and the medium, then follows the job.
 */
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { CliError, EXIT_CODES } from '../errors.js';
import type { BackupCandidate, BackupEntry, JobInfo } from '../../array/types.js';
import { CliContext, parseSizeOption, type CliIo } from '../context.js';
import { formatBytes, formatFields, formatTable } from '../format.js';
import { finishStartedJob, followJob } from '../progress.js';

const backupPath = (id: string): string => `/backups/${encodeURIComponent(id)}`;
const jobPath = (id: string): string => `/jobs/${encodeURIComponent(id)}`;
const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/**
 * `file:PATH` / `dir:PATH` with PATH made absolute against the CLI's cwd: the daemon runs
 * elsewhere, so a relative path would mean something else there. Anything else (a catalog id,
 * `-`, `volume:NAME`) goes as it is and the daemon judges it.
 */
export function resolveMediumArgument(text: string, cwd: string = process.cwd()): string {
  const match = /^(file|dir):(.+)$/s.exec(text);
  if (!match) return text;
  return `${match[1]}:${path.resolve(cwd, match[2]!)}`;
}

export function registerBackupCommands(program: Command, io: CliIo): void {
  const backup = program.command('backup').description('server-free backups of volumes to media (file:PATH, dir:PATH, volume:NAME), and the catalog');

  backup
    .command('create')
    .description('back up VOLUME to MEDIUM as of now; returns once the point in time is taken with --no-wait, else follows the job')
    .argument('<volume>', 'the volume to back up')
    .requiredOption('--to <medium>', 'file:PATH (file, FIFO or tape device) or dir:PATH (cartridges, with --media-size), under the daemon\'s --media-root; volume:NAME (an empty volume of the array, a backup region); - for this command\'s stdout (through the API)')
    .option('--incremental', "only the extents changed since the volume's previous backup (full when there is none)")
    .option('--via <method>', 'how the point in time is taken: compact (the default: a compact point-in-time copy); pair:NAME and cow are not available yet')
    .option('--media-size <size>', 'dir: media: size of each cartridge file, e.g. 1G')
    .option('--label <text>', 'a label kept in the catalog (repeatable)', collect)
    .option('--description <text>', 'free text kept in the catalog')
    .option('--no-wait', 'return once the point in time is taken; print the job id instead of following it')
    .action(async (volume: string, options: { to: string; incremental?: boolean; via?: string; mediaSize?: string; label?: string[]; description?: string; wait: boolean }, command: Command) => {
      const context = CliContext.of(command, io);
      const body = {
        volume,
        to: resolveMediumArgument(options.to),
        ...(options.incremental ? { incremental: true } : {}),
        ...(options.via === undefined ? {} : { via: options.via }),
        ...(options.mediaSize === undefined ? {} : { mediaSizeBytes: parseSizeOption(options.mediaSize, '--media-size') }),
        ...(options.label === undefined ? {} : { labels: options.label }),
        ...(options.description === undefined ? {} : { description: options.description }),
      };
      if (options.to === '-') {
        await backupToStdout(context, body, options.wait);
        return;
      }
      await followEntry(context, await context.api().post<BackupEntry>('/backups', body), options.wait);
    });

  backup
    .command('list')
    .description('the backup catalog, oldest first')
    .argument('[volume]', 'only the backups of this volume')
    .action(async (volume: string | undefined, _options: object, command: Command) => {
      const context = CliContext.of(command, io);
      const query = volume === undefined ? '' : `?volume=${encodeURIComponent(volume)}`;
      const answer = await context.api().get<{ backups: BackupEntry[] }>(`/backups${query}`);
      context.output(answer, ({ backups }) => formatBackupTable(backups, volume));
    });

  backup
    .command('show')
    .description('one catalog entry')
    .argument('<id>', 'backup id, e.g. bk-000001')
    .action(async (id: string, _options: object, command: Command) => {
      const context = CliContext.of(command, io);
      context.output(await context.api().get<BackupEntry>(backupPath(id)), formatBackup);
    });

  backup
    .command('delete')
    .description('remove a catalog entry (refused while incrementals build on it, unless a copy of it remains); --purge-media also removes the backup file or its cartridges')
    .argument('<id>', 'backup id')
    .option('--purge-media', 'also remove the stream from the medium')
    .action(async (id: string, options: { purgeMedia?: boolean }, command: Command) => {
      const context = CliContext.of(command, io);
      const entry = await context.api().get<BackupEntry>(backupPath(id));
      const purgeMedia = options.purgeMedia === true;
      await context.api().delete(`${backupPath(id)}${purgeMedia ? '?purgeMedia=true' : ''}`);
      context.output({ id, deleted: true, purgedMedia: purgeMedia, medium: entry.medium }, () =>
        purgeMedia ? `deleted backup ${id} and its stream on ${entry.medium}` : `deleted backup ${id} (its stream stays on ${entry.medium})`,
      );
    });

  backup
    .command('verify')
    .description('read a backup (catalog id) or a medium to its end, checking every checksum and the digest; exits 1 naming the first damage')
    .argument('<source>', 'backup id (bk-…) or medium (file:PATH, dir:PATH, volume:NAME)')
    .option('--no-wait', 'print the job id instead of following it')
    .action(async (source: string, options: { wait: boolean }, command: Command) => {
      const context = CliContext.of(command, io);
      const { jobId } = await context.api().post<{ jobId: string }>('/backups/verify', { source: resolveMediumArgument(source) });
      const info = await finishStartedJob(context, await context.api().get<JobInfo>(jobPath(jobId)), { noWait: !options.wait });
      if (options.wait && !context.json) context.io.stdout(describeVerified(info));
    });

  backup
    .command('candidates')
    .description('where the next backup of VOLUME can go: each media root, its cartridge sets and the empty volumes that can be a backup region, with free space and what a full and an incremental backup would take now')
    .argument('<volume>', 'the volume to back up')
    .action(async (volume: string, _options: object, command: Command) => {
      const context = CliContext.of(command, io);
      const answer = await context.api().get<{ volume: string; candidates: BackupCandidate[] }>(`/volumes/${encodeURIComponent(volume)}/backup-candidates`);
      context.output(answer, formatCandidates);
    });

  backup
    .command('copy')
    .description('copy a complete backup to another medium with its management information; the copy is read back, checked against the digest, and catalogued as its own entry')
    .argument('<id>', 'backup id')
    .requiredOption('--to <medium>', "file:PATH or dir:PATH (cartridges, with --media-size), under the daemon's --media-root, or volume:NAME (an empty volume of the array)")
    .option('--media-size <size>', 'dir: media: size of each cartridge file, e.g. 1G')
    .option('--no-wait', 'print the entry and its job id instead of following the job')
    .action(async (id: string, options: { to: string; mediaSize?: string; wait: boolean }, command: Command) => {
      const context = CliContext.of(command, io);
      const body = {
        to: resolveMediumArgument(options.to),
        ...(options.mediaSize === undefined ? {} : { mediaSizeBytes: parseSizeOption(options.mediaSize, '--media-size') }),
      };
      await followEntry(context, await context.api().post<BackupEntry>(`${backupPath(id)}/copy`, body), options.wait);
    });
}

/** A catalog entry whose job was just started: printed as started (--no-wait), or followed to its end and printed as it then is. */
async function followEntry(context: CliContext, created: BackupEntry, wait: boolean): Promise<void> {
  if (!wait) {
    context.output(created, describeStarted);
    return;
  }
  if (created.jobId !== null) {
    // With --json the job's own document is held back: the command prints one, the entry.
    const followIo: CliIo = context.json ? { ...context.io, stdout: () => undefined } : context.io;
    await followJob(context.api(), created.jobId, { json: context.json, io: followIo });
  }
  context.output(await context.api().get<BackupEntry>(backupPath(created.id)), formatBackup);
}

function formatCandidates({ volume, candidates }: { volume: string; candidates: BackupCandidate[] }): string {
  if (candidates.length === 0) return `no media roots to back up ${volume} to (start the daemon with --media-root DIR)`;
  const table = formatTable(
    [{ header: 'MEDIUM' }, { header: 'FREE', alignRight: true }, { header: 'FULL', alignRight: true }, { header: 'INCREMENTAL', alignRight: true }],
    candidates.map((candidate) => [
      candidate.medium,
      formatBytes(candidate.freeBytes),
      `${formatBytes(candidate.fullBytes)}${candidate.fitsFull ? '' : ' (no room)'}`,
      candidate.incrementalBytes === null ? '- (no base)' : `${formatBytes(candidate.incrementalBytes)}${candidate.fitsIncremental ? '' : ' (no room)'}`,
    ]),
  );
  return `${table}\nFULL and INCREMENTAL: what a backup of ${volume} would take now. For file: media, replace <id> with a name; dir: media are cartridge sets, which take it as new cartridges (give --media-size); volume: media are empty volumes of the array.`;
}

function describeStarted(entry: BackupEntry): string {
  const job = entry.jobId === null ? '' : `; streaming as job ${entry.jobId} (follow it with: thinarray job wait ${entry.jobId})`;
  if (entry.copiedFrom !== null) return `backup ${entry.id}, a copy of ${entry.copiedFrom}, to ${entry.medium}${job}`;
  return `backup ${entry.id} of ${entry.volumeName} taken at ${entry.pointInTime} to ${entry.medium}${job}`;
}

function describeVerified(info: JobInfo): string {
  const result = (info.result ?? {}) as { backupId?: string; records?: number; streamBytes?: number; digest?: string };
  return `verified ${result.backupId ?? '?'}: ${result.records ?? '?'} extents, ${formatBytes(result.streamBytes ?? 0)} stream, digest ${result.digest ?? '?'}`;
}

function formatBackupTable(backups: BackupEntry[], volume: string | undefined): string {
  if (backups.length === 0) return volume === undefined ? 'no backups (make one with: thinarray backup create VOLUME --to MEDIUM)' : `no backups of ${volume}`;
  return formatTable(
    [
      { header: 'ID' },
      { header: 'VOLUME' },
      { header: 'STATE' },
      { header: 'POINT IN TIME' },
      { header: 'EXTENTS', alignRight: true },
      { header: 'BYTES', alignRight: true },
      { header: 'MEDIUM' },
      { header: 'LABELS' },
    ],
    backups.map((entry) => [
      entry.id,
      entry.volumeName,
      entry.state,
      entry.pointInTime,
      String(entry.extents),
      formatBytes(entry.streamBytes),
      entry.medium,
      entry.labels.join(',') || '-',
    ]),
  );
}

function formatBackup(entry: BackupEntry): string {
  const fields: [string, string][] = [
    ['id', entry.id],
    ['volume', `${entry.volumeName} (${formatBytes(entry.capacityBytes)}, uuid ${entry.volumeUuid})`],
    ['state', entry.state],
    ['point in time', entry.pointInTime],
    ['method', `${entry.method}, ${entry.kind}${entry.parentId === null ? '' : ` on ${entry.parentId}`}, generation ${entry.generation}`],
    ['medium', entry.medium],
    ...(entry.copiedFrom === null ? [] : [['copied from', entry.copiedFrom] as [string, string]]),
    ['bytes', `${entry.streamBytes} (${formatBytes(entry.streamBytes)} stream, ${formatBytes(entry.dataBytes)} data)`],
    ['extents', `${entry.extents} of ${formatBytes(entry.extentBytes)}`],
    ['digest', entry.digest ?? '-'],
  ];
  if (entry.labels.length > 0) fields.push(['labels', entry.labels.join(', ')]);
  if (entry.description !== '') fields.push(['description', entry.description]);
  fields.push(['job', entry.jobId ?? '-']);
  if (entry.finishedAt !== null) fields.push(['finished', entry.finishedAt]);
  if (entry.error !== null) fields.push(['error', entry.error]);
  return formatFields(fields);
}

/**
 * `backup create VOLUME --to -`: the daemon streams the backup through the API and this command
 * copies it to its stdout, for a pipe (`| ssh host 'cat > b.tbk'`). Progress and the summary go to
 * stderr, since stdout carries the data. A stream cut short (the job failed) exits non-zero with
 * the job's error; what reached stdout is then a truncated stream, which any reader reports.
 */
async function backupToStdout(context: CliContext, body: { to: string } & Record<string, unknown>, wait: boolean): Promise<void> {
  if (!wait) throw new CliError('--no-wait cannot be used with --to -: the stream goes through this command', EXIT_CODES.usage);
  if (process.stdout.isTTY) throw new CliError('refusing to write a binary backup stream to a terminal: redirect stdout to a file or a pipe', EXIT_CODES.usage);
  const { to: _stdout, ...request } = body;
  // Aborted when stdout fails: the connection closes, the daemon's writes fail and its job ends
  // (a response left unread would hold the job on backpressure for ever).
  const connection = new AbortController();
  const response = await context.api().stream('POST', '/backups/stream', { json: request }, connection.signal);
  const backupId = response.header('x-thinarray-backup-id') ?? '';
  const jobId = response.header('x-thinarray-job-id') ?? '';
  const toStderr: CliIo = { ...context.io, stdout: context.io.stderr };
  // Progress on stderr alongside the data (with --json only the entry, at the end); the job's
  // outcome is the command's, since a cut stream says little.
  const followed = followJob(context.api(), jobId, { json: context.json, io: context.json ? { ...context.io, stdout: () => undefined } : toStderr });
  const copied = pipeline(response.body, process.stdout).then(
    () => undefined,
    (error: unknown) => {
      connection.abort();
      return error;
    },
  );
  const [copyError] = await Promise.all([copied, followed.catch(() => undefined)]);
  const info = await context.api().get<JobInfo>(jobPath(jobId));
  if (info.state !== 'succeeded') throw new CliError(`backup ${backupId} ${info.state}: ${info.error?.message ?? 'unknown error'}`, EXIT_CODES.failed, info.error?.code);
  if (copyError) {
    // The daemon finished, but the stream did not all reach stdout: an entry called complete
    // would be a backup nobody holds, and a base for incrementals that miss its changes. Removing
    // it makes the next incremental of the volume a full one.
    await context.api().delete(backupPath(backupId));
    throw new CliError(`backup ${backupId}: writing to stdout failed (${(copyError as Error).message}); the stream is incomplete, so the entry was removed from the catalog`, EXIT_CODES.failed);
  }
  const entry = await context.api().get<BackupEntry>(backupPath(backupId));
  toStderr.stdout(context.json ? JSON.stringify(entry, null, 2) : formatBackup(entry));
}
