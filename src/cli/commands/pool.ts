/** `thinarray pool add|show`. */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { DiskInfo, PoolInfo } from '../../array/types.js';
import { CliContext, parseSizeOption, type CliIo } from '../context.js';
import { formatBytes, formatFields, formatTable, percentOf } from '../format.js';

export function registerPoolCommands(program: Command, io: CliIo): void {
  const pool = program.command('pool').description('the physical disks volumes are carved from');

  pool
    .command('add')
    .description('add a file (created sparse when missing) or a block device to the pool')
    .argument('<path>', 'file or block device')
    .option('--size <size>', 'size of a new file, e.g. 64G')
    .action(async (path: string, options: { size?: string }, command: Command) => {
      const context = CliContext.of(command, io);
      const sizeBytes = options.size === undefined ? undefined : parseSizeOption(options.size, '--size');
      // The daemon may run in another directory: send an absolute path.
      const disk = await context.api().post<DiskInfo>('/pool/disks', { path: resolve(path), ...(sizeBytes === undefined ? {} : { sizeBytes }) });
      context.output(disk, (added) => `added ${added.path} to the pool (${formatBytes(added.sizeBytes)}, ${added.extents} extents)`);
    });

  pool
    .command('show')
    .description('pool size, usage, extent size, over-commit and disks')
    .action(async (_options: object, command: Command) => {
      const context = CliContext.of(command, io);
      context.output(await context.api().get<PoolInfo>('/pool'), formatPool);
    });
}

export function formatPool(pool: PoolInfo): string {
  const summary = formatFields([
    ['size', formatBytes(pool.sizeBytes)],
    ['used', `${formatBytes(pool.usedBytes)} (${percentOf(pool.usedBytes, pool.sizeBytes)})`],
    ['free', `${formatBytes(pool.freeBytes)} (${percentOf(pool.freeBytes, pool.sizeBytes)})`],
    ['extent size', formatBytes(pool.extentBytes)],
    ['extents', `${pool.extentsUsed} used of ${pool.extentsTotal}`],
    ['provisioned', `${formatBytes(pool.provisionedBytes)} (over-commit ${pool.overcommitRatio.toFixed(2)}x)`],
  ]);
  const disks = formatTable(
    [{ header: 'DISK', alignRight: true }, { header: 'PATH' }, { header: 'KIND' }, { header: 'SIZE', alignRight: true }, { header: 'USED', alignRight: true }],
    pool.disks.map((disk) => [String(disk.id), disk.path, disk.kind, formatBytes(disk.sizeBytes), percentOf(disk.usedExtents, disk.extents)]),
  );
  return `${summary}\n\n${disks}`;
}
