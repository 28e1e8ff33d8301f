/** `thinarray job list|show|wait|cancel`: the long operations the daemon runs (copies, backups, restores…). */
import type { Command } from 'commander';
import type { JobInfo } from '../../array/types.js';
import { CliContext, type CliIo } from '../context.js';
import { usageError } from '../errors.js';
import { formatFields, formatTable } from '../format.js';
import { describeProgress, followJob, formatDuration } from '../progress.js';

/** `job cancel` waits this long for a running job to wind down before answering "cancelling". */
const CANCEL_WAIT_MS = 10_000;

const jobPath = (id: string): string => `/jobs/${encodeURIComponent(id)}`;

export function registerJobCommands(program: Command, io: CliIo): void {
  const job = program.command('job').description('long operations run by the daemon (copies, backups, restores, resyncs, verifies)');

  job
    .command('list')
    .description('jobs, newest first: running, queued and the most recent finished ones')
    .action(async (_options: object, command: Command) => {
      const context = CliContext.of(command, io);
      const answer = await context.api().get<{ jobs: JobInfo[] }>('/jobs');
      context.output(answer, ({ jobs }) => formatJobTable(jobs));
    });

  job
    .command('show')
    .description('one job: state, progress, result or error')
    .argument('<id>', 'job id, e.g. job-000042')
    .action(async (id: string, _options: object, command: Command) => {
      const context = CliContext.of(command, io);
      context.output(await context.api().get<JobInfo>(jobPath(id)), formatJob);
    });

  job
    .command('wait')
    .description('follow a job until it ends (progress bar on a terminal); exits 1 if it fails or is cancelled')
    .argument('<id>', 'job id')
    .option('--timeout <seconds>', 'give up after this many seconds (the job keeps running); exits 1')
    .action(async (id: string, options: { timeout?: string }, command: Command) => {
      const context = CliContext.of(command, io);
      const timeoutMs = options.timeout === undefined ? undefined : parseSeconds(options.timeout, '--timeout') * 1000;
      await followJob(context.api(), id, { json: context.json, io, ...(timeoutMs === undefined ? {} : { timeoutMs }) });
    });

  job
    .command('cancel')
    .description('cancel a queued or running job; a finished job cannot be cancelled')
    .argument('<id>', 'job id')
    .action(async (id: string, _options: object, command: Command) => {
      const context = CliContext.of(command, io);
      let info = await context.api().post<JobInfo>(`${jobPath(id)}/cancel`, {});
      // A running job ends 'cancelled' once its handler notices; usually within a moment.
      if (info.state === 'running') info = await context.api().get<JobInfo>(`${jobPath(id)}?waitMs=${CANCEL_WAIT_MS}`);
      context.output(info, (after) =>
        after.state === 'running' ? `job ${after.id} is cancelling (still winding down; see: thinarray job wait ${after.id})` : `job ${after.id} ${after.state}`,
      );
    });
}

function parseSeconds(text: string, optionName: string): number {
  if (!/^\d+(\.\d+)?$/.test(text)) throw usageError(`${optionName}: expected a number of seconds, got "${text}"`);
  return Number(text);
}

function formatJobTable(jobs: JobInfo[]): string {
  if (jobs.length === 0) return 'no jobs';
  return formatTable(
    [{ header: 'ID' }, { header: 'KIND' }, { header: 'STATE' }, { header: 'PROGRESS' }, { header: 'CREATED' }, { header: 'DESCRIPTION' }],
    jobs.map((job) => [job.id, job.kind, job.cancelling ? 'cancelling' : job.state, describeProgress(job), job.createdAt, job.description]),
  );
}

function formatJob(job: JobInfo): string {
  const fields: [string, string][] = [
    ['id', job.id],
    ['kind', job.kind],
    ['state', job.cancelling ? `${job.state} (cancelling)` : job.state],
    ['description', job.description],
    ['progress', describeProgress(job)],
    ['created', job.createdAt],
  ];
  if (job.startedAt) fields.push(['started', job.startedAt]);
  if (job.finishedAt) fields.push(['finished', job.finishedAt]);
  if (job.startedAt && job.finishedAt) fields.push(['took', formatDuration((Date.parse(job.finishedAt) - Date.parse(job.startedAt)) / 1000)]);
  if (job.error) fields.push(['error', `${job.error.code}: ${job.error.message}`]);
  if (job.result !== undefined) fields.push(['result', JSON.stringify(job.result)]);
  fields.push(['params', JSON.stringify(job.params)]);
  return formatFields(fields);
}
