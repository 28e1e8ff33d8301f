/** `thinarray volume create|list|show|resize|delete|set-attr`. */
import { Argument, type Command } from 'commander';
import type { MapRun, VolumeAttr, VolumeInfo } from '../../array/types.js';
import { CliContext, parseSizeOption, type CliIo } from '../context.js';
import { formatBytes, formatFields, formatPercent, formatTable } from '../format.js';

interface VolumeMap {
  name: string;
  extentBytes: number;
  runs: MapRun[];
}

const volumePath = (name: string): string => `/volumes/${encodeURIComponent(name)}`;

export function registerVolumeCommands(program: Command, io: CliIo): void {
  const volume = program.command('volume').description('thin volumes (each one is an NBD export of the same name)');

  volume
    .command('create')
    .description('create a thin volume; its capacity may exceed the pool')
    .argument('<name>', 'volume name (letters, digits, . _ -)')
    .requiredOption('--size <size>', 'capacity, e.g. 10G')
    .option('--read-only', 'export it read-only')
    .option('--attr <attr>', 'user (exported) or work (copy-before-write space, never exported)')
    .action(async (name: string, options: { size: string; readOnly?: boolean; attr?: VolumeAttr }, command: Command) => {
      const context = CliContext.of(command, io);
      const sizeBytes = parseSizeOption(options.size, '--size');
      const created = await context.api().post<VolumeInfo>('/volumes', {
        name,
        sizeBytes,
        ...(options.readOnly ? { readOnly: true } : {}),
        ...(options.attr === undefined ? {} : { attr: options.attr }),
      });
      context.output(created, (info) => `created volume ${info.name} (${formatBytes(info.capacityBytes)}, thin${info.readOnly ? ', read-only' : ''})`);
    });

  volume
    .command('list')
    .description('all volumes with capacity and allocation')
    .action(async (_options: object, command: Command) => {
      const context = CliContext.of(command, io);
      const answer = await context.api().get<{ volumes: VolumeInfo[] }>('/volumes');
      context.output(answer, ({ volumes }) => formatVolumeTable(volumes));
    });

  volume
    .command('show')
    .description('one volume; --map adds its allocation map')
    .argument('<name>')
    .option('--map', 'also print the allocation map (runs of mapped and unmapped bytes)')
    .action(async (name: string, options: { map?: boolean }, command: Command) => {
      const context = CliContext.of(command, io);
      const info = await context.api().get<VolumeInfo>(volumePath(name));
      if (!options.map) {
        context.output(info, formatVolume);
        return;
      }
      const map = await context.api().get<VolumeMap>(`${volumePath(name)}/map`);
      context.output({ ...info, map }, () => `${formatVolume(info)}\n\n${formatMap(map)}`);
    });

  volume
    .command('resize')
    .description('grow a volume (shrinking is refused)')
    .argument('<name>')
    .requiredOption('--size <size>', 'new capacity, e.g. 20G')
    .action(async (name: string, options: { size: string }, command: Command) => {
      const context = CliContext.of(command, io);
      const sizeBytes = parseSizeOption(options.size, '--size');
      const resized = await context.api().patch<VolumeInfo>(volumePath(name), { sizeBytes });
      context.output(resized, (info) => `resized volume ${info.name} to ${formatBytes(info.capacityBytes)}`);
    });

  volume
    .command('delete')
    .description('delete a volume and return its extents to the pool')
    .argument('<name>')
    .action(async (name: string, _options: object, command: Command) => {
      const context = CliContext.of(command, io);
      await context.api().delete(volumePath(name));
      context.output({ name, deleted: true }, () => `deleted volume ${name}`);
    });

  volume
    .command('set-attr')
    .description('mark a volume user (exported) or work (working space for copy-before-write backups)')
    .argument('<name>')
    .addArgument(new Argument('<attr>').choices(['user', 'work']))
    .action(async (name: string, attr: VolumeAttr, _options: object, command: Command) => {
      const context = CliContext.of(command, io);
      const updated = await context.api().patch<VolumeInfo>(volumePath(name), { attr });
      context.output(updated, (info) => `volume ${info.name} is now ${info.attr}`);
    });
}

function formatVolumeTable(volumes: VolumeInfo[]): string {
  if (volumes.length === 0) return 'no volumes (create one with: thinarray volume create NAME --size 10G)';
  return formatTable(
    [
      { header: 'NAME' },
      { header: 'CAPACITY', alignRight: true },
      { header: 'ALLOCATED', alignRight: true },
      { header: 'USED', alignRight: true },
      { header: 'ATTR' },
      { header: 'ACCESS' },
      { header: 'STATE' },
    ],
    volumes.map((volume) => [
      volume.name,
      formatBytes(volume.capacityBytes),
      formatBytes(volume.allocatedBytes),
      formatPercent(volume.allocatedPercent),
      volume.attr,
      volume.readOnly || volume.holdsBackup !== null ? 'ro' : 'rw',
      volume.holdsBackup === null ? volume.state : `${volume.state}, holds ${volume.holdsBackup}`,
    ]),
  );
}

function formatVolume(volume: VolumeInfo): string {
  return formatFields([
    ['name', volume.name],
    ['uuid', volume.uuid],
    ['capacity', `${formatBytes(volume.capacityBytes)} (${volume.capacityBytes} bytes)`],
    ['allocated', `${formatBytes(volume.allocatedBytes)} (${formatPercent(volume.allocatedPercent)}, ${volume.mappedExtents} extents)`],
    ['attr', volume.attr],
    ['access', volume.readOnly ? 'read-only' : volume.holdsBackup !== null ? 'read-only over NBD (a backup region)' : 'read-write'],
    ['state', volume.state],
    ...(volume.holdsBackup === null ? [] : [['holds backup', `${volume.holdsBackup} (volume:${volume.name}; backup delete ${volume.holdsBackup} --purge-media empties and frees the region)`] as [string, string]]),
    ['created', volume.createdAt],
  ]);
}

/** Offsets stay in exact bytes (a rounded "1.5 GiB" offset is useless for dd or qemu-io). */
function formatMap(map: VolumeMap): string {
  if (map.runs.length === 0) return 'allocation map: empty';
  const table = formatTable(
    [{ header: 'OFFSET', alignRight: true }, { header: 'LENGTH', alignRight: true }, { header: 'SIZE', alignRight: true }, { header: 'STATE' }],
    map.runs.map((run) => [String(run.offsetBytes), String(run.lengthBytes), formatBytes(run.lengthBytes), run.mapped ? 'mapped' : 'hole']),
  );
  return `allocation map (extent ${formatBytes(map.extentBytes)}):\n${table}`;
}
