/** `thinarray restore SOURCE --to VOLUME [--method remap|writeback] [--create]`: a restore job in the daemon. */
import { Option, type Command } from 'commander';
import type { JobInfo, VolumeInfo } from '../../array/types.js';
import { CliContext, type CliIo } from '../context.js';
import { readAll } from '../client.js';
import { CliError, EXIT_CODES } from '../errors.js';
import { formatBytes } from '../format.js';
import { finishStartedJob } from '../progress.js';
import { resolveMediumArgument } from './backup.js';

const jobPath = (id: string): string => `/jobs/${encodeURIComponent(id)}`;

interface RestoreResult {
  volume?: string;
  method?: string;
  /** The backups applied, oldest first (an incremental brings its chain). */
  backups?: string[];
  records?: number;
  dataBytes?: number;
}

export function registerRestoreCommand(program: Command, io: CliIo): void {
  program
    .command('restore')
    .description('restore a backup (catalog id) or a medium into a volume; follows the job unless --no-wait')
    .argument('<source>', 'backup id (bk-…), medium (file:PATH, dir:PATH, volume:NAME), or - for a stream on stdin (through the API)')
    .requiredOption('--to <volume>', 'the volume to restore into')
    .addOption(
      new Option('--method <method>', 'remap: written once to new extents, map installed when the stream checked out; writeback: to the original addresses of an existing volume')
        .choices(['remap', 'writeback'])
        .default('remap'),
    )
    .option('--create', 'create the volume (with the backed-up capacity); it must not exist')
    .option('--force', 'restore even though hosts have the volume open read-write')
    .option('--no-wait', 'print the job id instead of following it')
    .action(async (source: string, options: { to: string; method: 'remap' | 'writeback'; create?: boolean; force?: boolean; wait: boolean }, command: Command) => {
      const context = CliContext.of(command, io);
      const body = { source: resolveMediumArgument(source), to: options.to, method: options.method, create: options.create === true, force: options.force === true };
      let info: JobInfo;
      if (source === '-') {
        info = await restoreFromStdin(context, body, options.wait);
        if (context.json) context.io.stdout(JSON.stringify(info, null, 2));
      } else {
        const { jobId } = await context.api().post<{ jobId: string }>('/restores', body);
        info = await finishStartedJob(context, await context.api().get<JobInfo>(jobPath(jobId)), { noWait: !options.wait });
      }
      if (!options.wait || context.json) return;
      const volume = await context.api().get<VolumeInfo>(`/volumes/${encodeURIComponent(options.to)}`);
      context.io.stdout(describeRestored(info.result as RestoreResult | undefined, volume));
    });
}

function describeRestored(result: RestoreResult | undefined, volume: VolumeInfo): string {
  const extents = result?.records === undefined ? '' : `${result.records} extents, ${formatBytes(result.dataBytes ?? 0)}; `;
  const chain = result?.backups === undefined || result.backups.length === 0 ? '' : ` from ${result.backups.join(' + ')}`;
  return `restored into ${volume.name}${chain} by ${result?.method ?? '?'}: ${extents}${formatBytes(volume.capacityBytes)} capacity, ${formatBytes(volume.allocatedBytes)} allocated, state ${volume.state}`;
}

/**
 * `restore - --to VOLUME`: this command sends its stdin (a backup stream from a pipe) as the
 * request body; the daemon restores it as a job and answers when the job has ended.
 */
async function restoreFromStdin(context: CliContext, body: { to: string; method: string; create: boolean; force: boolean }, wait: boolean): Promise<JobInfo> {
  if (!wait) throw new CliError('--no-wait cannot be used with restore -: the stream comes through this command', EXIT_CODES.usage);
  if (process.stdin.isTTY) throw new CliError('restore -: stdin is a terminal; pipe a backup stream into it (e.g. `cat b.tbk | thinarray restore - --to VOLUME`)', EXIT_CODES.usage);
  const query = new URLSearchParams({ to: body.to, method: body.method, create: String(body.create), force: String(body.force) });
  const response = await context.api().stream('POST', `/restores/stream?${query}`, { bytes: process.stdin, contentType: 'application/octet-stream' });
  return JSON.parse(await readAll(response.body)) as JobInfo;
}
