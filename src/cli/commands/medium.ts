/**
 * `thinarray medium inspect MEDIUM`: reads a backup medium WITHOUT the daemon (the format and
 * media library, run in the CLI's own process with the user's own permissions): the header, the
 * counts and the digest, every checksum checked. A damaged medium exits 1 naming the damage.
 */
import type { Command } from 'commander';
import { inspectMedium, type MediumSummary } from '../../backup/media/index.js';
import { CliContext, type CliIo } from '../context.js';
import { CliError, EXIT_CODES } from '../errors.js';
import { formatBytes, formatFields } from '../format.js';

export function registerMediumCommands(program: Command, io: CliIo): void {
  const medium = program.command('medium').description('backup media read directly, without the daemon');

  medium
    .command('inspect')
    .description('read a whole medium (file:PATH, dir:PATH), check every frame, checksum and the digest, and describe the backup')
    .argument('<medium>', 'file:PATH or dir:PATH (relative paths from the current directory), or - for stdin')
    .option('--backup-id <id>', 'dir: media holding several backups: the one to read')
    .action(async (text: string, options: { backupId?: string }, command: Command) => {
      const context = CliContext.of(command, io);
      // No media roots here: the CLI reads what its user may read; the guard protects the daemon's reach.
      if (text === '-' && process.stdin.isTTY) throw new CliError('medium inspect -: stdin is a terminal; pipe a backup stream into it', EXIT_CODES.usage);
      const summary = await inspectMedium(text, { stdin: process.stdin, ...(options.backupId === undefined ? {} : { backupId: options.backupId }) });
      context.output(summary, formatSummary);
    });
}

function formatSummary(summary: MediumSummary): string {
  const fields: [string, string][] = [
    ['medium', summary.medium],
    ['backup', `${summary.backupId} (${summary.kind}${summary.parentBackupId === null ? '' : `, parent ${summary.parentBackupId}`}), format version ${summary.formatVersion}`],
    ['source', `${summary.sourceName} (${formatBytes(summary.sourceCapacityBytes)}, uuid ${summary.sourceUuid})`],
    ['point in time', summary.createdAt],
    ['extents', `${summary.recordCount} of ${formatBytes(summary.extentBytes)} (${summary.mappedExtentCount} mapped in ${summary.allocationRunCount} runs)`],
    ['bytes', `${summary.streamBytes} (${formatBytes(summary.streamBytes)} stream: header ${formatBytes(summary.headerBytes)}, data ${formatBytes(summary.dataBytes)})`],
    ['digest', `${summary.digestHex} (checked)`],
  ];
  if (summary.cartridges !== undefined) fields.push(['cartridges', String(summary.cartridges)]);
  if (summary.labels.length > 0) fields.push(['labels', summary.labels.join(', ')]);
  if (summary.description !== '') fields.push(['description', summary.description]);
  fields.push(['state', 'intact: every frame, checksum and the stream digest checked']);
  return formatFields(fields);
}
