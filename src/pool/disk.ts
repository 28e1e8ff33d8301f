/**
 * One physical disk of the pool: a file (created sparse on demand) or a block device. The first
 * extent of every disk holds a label naming the pool it belongs to, so a disk is never opened by
 * the wrong pool or added twice; data extents follow it, each aligned to the extent size.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ThinError, fromSystemError } from '../lib/errors.js';
import { assert } from '../lib/assert.js';
import type { DiskKind } from '../array/types.js';

const LABEL_MAGIC = 'THINARRAY-DISK-LABEL\n';
const LABEL_BYTES = 4096;

export interface DiskLabel {
  poolUuid: string;
  extentBytes: number;
}

export interface OpenedDisk {
  fd: number;
  kind: DiskKind;
  sizeBytes: number;
}

/** Usable data extents on a disk of `sizeBytes`: everything after the label extent. */
export function dataExtentCount(sizeBytes: number, extentBytes: number): number {
  return Math.max(0, Math.floor(sizeBytes / extentBytes) - 1);
}

/** Byte offset of a disk-local data extent: the label occupies extent 0. */
export function dataExtentOffsetBytes(localExtent: number, extentBytes: number): number {
  return (localExtent + 1) * extentBytes;
}

/** Size of a block device from sysfs (Node has no BLKGETSIZE64 ioctl). */
function blockDeviceSizeBytes(stat: fs.Stats, devicePath: string): number {
  const major = Math.floor(stat.rdev / 256) & 0xfff;
  const minor = (stat.rdev & 0xff) | (Math.floor(stat.rdev / 4096) & 0xfff00);
  try {
    const sectors = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim());
    return sectors * 512;
  } catch (error) {
    throw new ThinError('IO_ERROR', `cannot read the size of block device ${devicePath}`, { cause: error });
  }
}

/** Opens an existing disk or creates a sparse file of `createSizeBytes` when none exists. */
export function openDisk(diskPath: string, createSizeBytes?: number): OpenedDisk {
  let stat: fs.Stats | undefined;
  try {
    stat = fs.statSync(diskPath);
  } catch {
    stat = undefined;
  }
  if (!stat) {
    if (createSizeBytes === undefined) {
      throw new ThinError('NOT_FOUND', `disk ${diskPath} does not exist (give a size to create it as a sparse file)`, { field: 'path' });
    }
    fs.mkdirSync(path.dirname(diskPath), { recursive: true });
    const fd = fs.openSync(diskPath, 'wx+', 0o600);
    fs.ftruncateSync(fd, createSizeBytes); // sparse: costs nothing until written
    return { fd, kind: 'file', sizeBytes: createSizeBytes };
  }
  if (stat.isBlockDevice()) {
    const fd = fs.openSync(diskPath, 'r+');
    return { fd, kind: 'block', sizeBytes: blockDeviceSizeBytes(stat, diskPath) };
  }
  if (!stat.isFile()) throw new ThinError('INVALID_ARGUMENT', `${diskPath} is neither a regular file nor a block device`, { field: 'path' });
  const fd = fs.openSync(diskPath, 'r+');
  return { fd, kind: 'file', sizeBytes: stat.size };
}

export function writeLabel(fd: number, label: DiskLabel): void {
  const text = LABEL_MAGIC + JSON.stringify(label) + '\n';
  const block = Buffer.alloc(LABEL_BYTES);
  block.write(text, 'utf8');
  assert(Buffer.byteLength(text) < LABEL_BYTES, 'disk label must fit its block');
  fs.writeSync(fd, block, 0, LABEL_BYTES, 0);
  fs.fdatasyncSync(fd);
}

/** The label on a disk, or undefined when the disk carries none (a fresh file or device). */
export function readLabel(fd: number): DiskLabel | undefined {
  const block = Buffer.alloc(LABEL_BYTES);
  const bytesRead = fs.readSync(fd, block, 0, LABEL_BYTES, 0);
  const text = block.subarray(0, bytesRead).toString('utf8');
  if (!text.startsWith(LABEL_MAGIC)) return undefined;
  const json = text.slice(LABEL_MAGIC.length, text.indexOf('\n', LABEL_MAGIC.length));
  try {
    return JSON.parse(json) as DiskLabel;
  } catch {
    return undefined;
  }
}

export function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.fdatasync(fd, (error) => (error ? reject(fromSystemError(error, 'fdatasync of a pool disk')) : resolve()));
  });
}
