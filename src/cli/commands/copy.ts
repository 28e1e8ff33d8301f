/** `thinarray copy create|list|show`: point-in-time copies (instant or compact) of a volume. */
import { Option, type Command } from 'commander';
import type { CopyInfo, CopyMode, JobInfo } from '../../array/types.js';
import { CliContext, type CliIo } from '../context.js';
import { formatBytes, formatFields, formatTable, percentOf } from '../format.js';
import { finishStartedJob, followJob } from '../progress.js';

type CorrespondenceRow = NonNullable<CopyInfo['correspondence']>[number];

const copyPath = (idOrTarget: string, withTable: boolean): string => `/copies/${encodeURIComponent(idOrTarget)}${withTable ? '?table=true' : ''}`;
const jobPath = (id: string): string => `/jobs/${encodeURIComponent(id)}`;

export function registerCopyCommands(program: Command, io: CliIo): void {
  const copy = program.command('copy').description('point-in-time copies of volumes: instant (same addresses) or compact (used extents packed)');

  copy
    .command('create')
    .description('copy SOURCE into a new volume TARGET as of now; the copy is complete at once, the physical copy runs as a job')
    .argument('<source>', 'the volume to copy')
    .argument('<target>', 'name of the new volume (must not exist)')
    .addOption(new Option('--mode <mode>', 'instant: same capacity and addresses; compact: used extents packed behind a header').choices(['instant', 'compact']).default('instant'))
    .option('--no-wait', 'return once the copy is taken; print the job id instead of following it')
    .action(async (source: string, target: string, options: { mode: CopyMode; wait: boolean }, command: Command) => {
      const context = CliContext.of(command, io);
      const created = await context.api().post<CopyInfo>('/copies', { source, target, mode: options.mode });
      if (!options.wait) {
        await reportStarted(context, created);
        return;
      }
      await followCopyJob(context, created);
      // The copy as it is now (complete): what the command ends with, human or --json.
      context.output(await context.api().get<CopyInfo>(copyPath(String(created.id), false)), formatCopy);
    });

  copy
    .command('list')
    .description('copies, oldest first: running, complete and failed')
    .action(async (_options: object, command: Command) => {
      const context = CliContext.of(command, io);
      const answer = await context.api().get<{ copies: CopyInfo[] }>('/copies');
      context.output(answer, ({ copies }) => formatCopyTable(copies));
    });

  copy
    .command('show')
    .description('one copy by id or target volume name; compact copies (and --table) show the correspondence table X_i → A_j')
    .argument('<id-or-target>', 'copy id (as `copy list` shows it) or the target volume name')
    .option('--table', 'include the correspondence table (in --json too)')
    .action(async (idOrTarget: string, options: { table?: boolean }, command: Command) => {
      const context = CliContext.of(command, io);
      const withTable = options.table === true;
      let info = await context.api().get<CopyInfo>(copyPath(idOrTarget, withTable));
      if (context.json) {
        context.io.stdout(JSON.stringify(info, null, 2));
        return;
      }
      // A compact copy is read through its table, so people see it without asking.
      if (!withTable && info.mode === 'compact') info = await context.api().get<CopyInfo>(copyPath(String(info.id), true));
      context.io.stdout(info.correspondence === undefined ? formatCopy(info) : `${formatCopy(info)}\n\n${formatCorrespondence(info)}`);
    });
}

/** --no-wait: the copy is taken; say which job copies it (with --json, the copy itself, which names the job). */
async function reportStarted(context: CliContext, created: CopyInfo): Promise<void> {
  if (context.json || created.jobId === null) {
    context.output(created, formatCopy);
    return;
  }
  await finishStartedJob(context, await context.api().get<JobInfo>(jobPath(created.jobId)), { noWait: true });
}

/**
 * Follows the copy's job with the progress bar (or plain lines); a failed or cancelled job ends
 * the command with its message. With --json the job's own JSON is held back so the command
 * prints exactly one document: the copy.
 */
async function followCopyJob(context: CliContext, created: CopyInfo): Promise<void> {
  if (created.jobId === null) return;
  const io: CliIo = context.json ? { ...context.io, stdout: () => undefined } : context.io;
  await followJob(context.api(), created.jobId, { json: context.json, io });
}

function formatCopyTable(copies: CopyInfo[]): string {
  if (copies.length === 0) return 'no copies (take one with: thinarray copy create SOURCE TARGET --mode instant|compact)';
  return formatTable(
    [
      { header: 'ID', alignRight: true },
      { header: 'SOURCE' },
      { header: 'TARGET' },
      { header: 'MODE' },
      { header: 'STATE' },
      { header: 'EXTENTS', alignRight: true },
      { header: 'CAPACITY', alignRight: true },
      { header: 'POINT IN TIME' },
      { header: 'JOB' },
    ],
    copies.map((copy) => [
      String(copy.id),
      copy.source,
      copy.target,
      copy.mode,
      copy.state,
      String(copy.extentCount),
      formatBytes(copy.targetCapacityBytes),
      copy.pointInTime,
      copy.jobId ?? '-',
    ]),
  );
}

function formatCopy(copy: CopyInfo): string {
  const usedBytes = copy.extentCount * copy.extentBytes;
  const fields: [string, string][] = [
    ['id', String(copy.id)],
    ['source', `${copy.source} (${formatBytes(copy.sourceCapacityBytes)}, ${copy.extentCount} extents used = ${formatBytes(usedBytes)}, ${percentOf(usedBytes, copy.sourceCapacityBytes)})`],
    ['target', copy.target],
    ['mode', copy.mode],
    ['state', describeState(copy)],
    ['point in time', copy.pointInTime],
    ['extent size', `${formatBytes(copy.extentBytes)} (${copy.extentBytes} bytes)`],
    ['target capacity', `${formatBytes(copy.targetCapacityBytes)} (${copy.targetCapacityBytes} bytes)`],
  ];
  if (copy.mode === 'compact') {
    const metadataBytes = copy.metadataExtents * copy.extentBytes;
    fields.push(['layout', `header and table ${copy.metadataExtents} extent(s) at 0..${metadataBytes}, then X_1..X_${copy.extentCount} from offset ${metadataBytes}`]);
  }
  fields.push(['job', copy.jobId ?? '-']);
  if (copy.finishedAt !== null) fields.push(['finished', copy.finishedAt]);
  return formatFields(fields);
}

function describeState(copy: CopyInfo): string {
  if (copy.state === 'copying') return 'copying (already the point in time; exported read-only until the job ends)';
  if (copy.state === 'complete') return 'complete (an ordinary, independent volume)';
  return copy.state;
}

/** X_i → A_j with the byte offsets on both sides (exact bytes: they are for dd and qemu-io). */
function formatCorrespondence(copy: CopyInfo): string {
  const rows = copy.correspondence ?? [];
  if (rows.length === 0) return 'correspondence table: empty (the source had no mapped extent)';
  const targetOffset = (row: CorrespondenceRow): number =>
    copy.mode === 'compact' ? (copy.metadataExtents + row.x - 1) * copy.extentBytes : row.sourceOffsetBytes;
  const table = formatTable(
    [
      { header: 'X', alignRight: true },
      { header: 'TARGET OFFSET', alignRight: true },
      { header: 'A (SOURCE EXTENT)', alignRight: true },
      { header: 'SOURCE OFFSET', alignRight: true },
    ],
    rows.map((row) => [`X_${row.x}`, String(targetOffset(row)), `A_${row.sourceExtent}`, String(row.sourceOffsetBytes)]),
  );
  return `correspondence table (${rows.length} extents of ${formatBytes(copy.extentBytes)}):\n${table}`;
}
