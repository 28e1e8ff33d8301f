/**
 * Backup media: round trips through a plain file, a FIFO (writer and reader at once) and a set of
 * cartridges; a missing, swapped, foreign or truncated cartridge named; medium syntax; the
 * media-root guard (outside, `..`, symlinks escaping, dangling symlinks; symlinks inside are fine).
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseMedium } from '../../src/backup/media/medium.js';
import { openMediumReader, openMediumWriter, inspectMedium } from '../../src/backup/media/open.js';
import { resolveUnderRoots } from '../../src/backup/media/roots.js';
import { LABEL_BYTES, cartridgeFileName } from '../../src/backup/media/dir-medium.js';
import { BackupCorruptError } from '../../src/backup/format/corrupt.js';
import { ThinError } from '../../src/lib/errors.js';
import { readAndCheck, streamBytesOf, testVolume, writeStream } from './helpers.js';

let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-media-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function thinErrorOf(work: () => Promise<unknown>): Promise<ThinError> {
  try {
    await work();
  } catch (error) {
    assert.ok(error instanceof ThinError, `expected a ThinError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected an error');
}

describe('file: media', () => {
  test('round trip through a plain file; an existing file is not overwritten unless asked', async () => {
    const volume = testVolume({ extentCount: 3000, mappedFraction: 0.5, seed: 11 });
    const medium = parseMedium(`file:${path.join(tmp, 'b1.tbk')}`);
    await writeStream(await openMediumWriter(medium), volume);
    assert.deepEqual(fs.readFileSync(path.join(tmp, 'b1.tbk')), await streamBytesOf(volume));
    const reader = await openMediumReader(medium);
    assert.equal(await readAndCheck(reader, volume), (volume.fields.correspondence as Float64Array).length);
    await reader.close();
    const summary = await inspectMedium(`file:${path.join(tmp, 'b1.tbk')}`);
    assert.equal(summary.backupId, 'bk-11');
    assert.equal(summary.streamBytes, fs.statSync(path.join(tmp, 'b1.tbk')).size);
    assert.equal((await thinErrorOf(() => openMediumWriter(medium))).code, 'ALREADY_EXISTS');
    await writeStream(await openMediumWriter(medium, { overwrite: true }), volume);
    assert.equal((await thinErrorOf(() => openMediumReader(parseMedium(`file:${path.join(tmp, 'nope')}`)))).code, 'NOT_FOUND');
    assert.equal((await thinErrorOf(() => openMediumWriter(parseMedium(`file:${tmp}`)))).code, 'INVALID_ARGUMENT');
  });

  test('round trip through a FIFO, writer and reader at once', async () => {
    const fifo = path.join(tmp, 'pipe');
    execFileSync('mkfifo', [fifo]);
    const volume = testVolume({ extentCount: 5000, mappedFraction: 0.6, extentBytes: 65536, seed: 12 });
    const medium = parseMedium(`file:${fifo}`);
    const [, count] = await Promise.all([
      openMediumWriter(medium).then((writer) => writeStream(writer, volume)),
      openMediumReader(medium).then(async (reader) => {
        try {
          return await readAndCheck(reader, volume);
        } finally {
          await reader.close();
        }
      }),
    ]);
    assert.equal(count, (volume.fields.correspondence as Float64Array).length);
    assert.ok(fs.statSync(fifo).isFIFO());
  });

  test('a damaged file is reported CORRUPT with its offset', async () => {
    const volume = testVolume({ extentCount: 200, mappedFraction: 0.5, seed: 13 });
    const filePath = path.join(tmp, 'damaged.tbk');
    const bytes = await streamBytesOf(volume);
    bytes[bytes.length - 500]! ^= 0xff;
    fs.writeFileSync(filePath, bytes);
    const error = await thinErrorOf(() => inspectMedium(`file:${filePath}`));
    assert.ok(error instanceof BackupCorruptError);
    assert.match(error.message, new RegExp(`file:${filePath}`));
    assert.ok(error.offsetBytes <= bytes.length - 500 && error.offsetBytes > bytes.length - 500 - 4096 - 32);
  });
});

describe('dir: cartridges', () => {
  const volume = testVolume({ extentCount: 400, mappedFraction: 0.5, seed: 14 });
  const cartridgeBytes = 64 * 1024;
  const write = async (dir: string, options: { backupId?: string; mediaSizeBytes?: number } = {}): Promise<string[]> => {
    fs.mkdirSync(dir, { recursive: true });
    const writer = await openMediumWriter(parseMedium(`dir:${dir}`), { backupId: volume.fields.backupId, mediaSizeBytes: cartridgeBytes, ...options });
    await writeStream(writer, volume);
    return fs.readdirSync(dir).sort();
  };
  const readDir = async (dir: string, backupId?: string): Promise<number> => {
    const reader = await openMediumReader(parseMedium(`dir:${dir}`), backupId === undefined ? {} : { backupId });
    try {
      return await readAndCheck(reader, volume);
    } finally {
      await reader.close();
    }
  };

  test('round trip across several cartridges of the given size, labels first', async () => {
    const dir = path.join(tmp, 'carts');
    const names = await write(dir);
    const streamBytes = (await streamBytesOf(volume)).length;
    const payload = cartridgeBytes - LABEL_BYTES;
    assert.equal(names.length, Math.ceil(streamBytes / payload));
    assert.deepEqual(names, names.map((_, i) => cartridgeFileName('bk-14', i + 1)));
    for (const name of names.slice(0, -1)) assert.equal(fs.statSync(path.join(dir, name)).size, cartridgeBytes);
    assert.equal(fs.readFileSync(path.join(dir, names[0]!)).toString('latin1', 0, 8), 'THINCART');
    assert.equal(await readDir(dir), (volume.fields.correspondence as Float64Array).length);
    const summary = await inspectMedium(`dir:${dir}`);
    assert.equal(summary.cartridges, names.length);
    assert.equal((await thinErrorOf(() => write(dir))).code, 'ALREADY_EXISTS');
    assert.equal((await thinErrorOf(() => openMediumWriter(parseMedium(`dir:${dir}`), { backupId: 'x' }))).code, 'INVALID_ARGUMENT', 'no media size');
  });

  test('a stream ending exactly at a cartridge end gets a label-only last cartridge', async () => {
    const streamBytes = (await streamBytesOf(volume)).length;
    // A payload per cartridge that divides the stream exactly.
    let payload = 0;
    for (let parts = 3; parts < 10_000 && payload === 0; parts++) if (streamBytes % parts === 0 && streamBytes / parts >= 4096) payload = streamBytes / parts;
    assert.ok(payload > 0, `no exact divisor of ${streamBytes}`);
    const dir = path.join(tmp, 'exact');
    const names = await write(dir, { mediaSizeBytes: payload + LABEL_BYTES });
    assert.equal(names.length, streamBytes / payload + 1);
    assert.equal(fs.statSync(path.join(dir, names.at(-1)!)).size, LABEL_BYTES, 'label-only last cartridge');
    assert.equal(await readDir(dir), (volume.fields.correspondence as Float64Array).length);
    // Losing that empty last cartridge is still noticed.
    fs.rmSync(path.join(dir, names.at(-1)!));
    assert.match((await thinErrorOf(() => readDir(dir))).message, /is missing: cartridge \d+ is full/);
  });

  test('missing, swapped, foreign and truncated cartridges are named', async () => {
    const base = path.join(tmp, 'base');
    const names = await write(base);
    assert.ok(names.length >= 4, `${names.length} cartridges`);
    const copy = (name: string): string => {
      const dir = path.join(tmp, name);
      fs.cpSync(base, dir, { recursive: true });
      return dir;
    };
    const missing = copy('missing');
    fs.rmSync(path.join(missing, names[1]!));
    const missingError = await thinErrorOf(() => readDir(missing));
    assert.equal(missingError.code, 'CORRUPT');
    assert.match(missingError.message, /cartridge bk-14\.0002 is missing: cartridge 1 is full/);

    const missingLast = copy('missing-last');
    fs.rmSync(path.join(missingLast, names.at(-1)!));
    assert.match((await thinErrorOf(() => readDir(missingLast))).message, new RegExp(`${names.at(-1)!.replace('.', '\\.')} is missing`));

    const swapped = copy('swapped');
    fs.renameSync(path.join(swapped, names[1]!), path.join(swapped, 'tmp'));
    fs.renameSync(path.join(swapped, names[2]!), path.join(swapped, names[1]!));
    fs.renameSync(path.join(swapped, 'tmp'), path.join(swapped, names[2]!));
    assert.match((await thinErrorOf(() => readDir(swapped))).message, /bk-14\.0002 holds cartridge 3 of backup bk-14, not cartridge 2 \(cartridges swapped or renamed\)/);

    const foreignSource = path.join(tmp, 'other');
    fs.mkdirSync(foreignSource);
    const other = testVolume({ extentCount: 400, mappedFraction: 0.5, seed: 15 });
    await writeStream(await openMediumWriter(parseMedium(`dir:${foreignSource}`), { backupId: 'bk-15', mediaSizeBytes: cartridgeBytes }), other);
    const foreign = copy('foreign');
    fs.copyFileSync(path.join(foreignSource, 'bk-15.0002'), path.join(foreign, names[1]!));
    assert.match((await thinErrorOf(() => readDir(foreign))).message, /bk-14\.0002 belongs to backup bk-15, not bk-14 \(a foreign cartridge\)/);

    const truncated = copy('truncated');
    fs.truncateSync(path.join(truncated, names[1]!), 5000);
    assert.match((await thinErrorOf(() => readDir(truncated))).message, /cartridge 2 is short \(5000 of 65536 bytes\) yet bk-14\.0003 follows/);

    const flipped = copy('flipped-label');
    const fd = fs.openSync(path.join(flipped, names[2]!), 'r+');
    fs.writeSync(fd, Buffer.from([0x42]), 0, 1, 40);
    fs.closeSync(fd);
    assert.match((await thinErrorOf(() => readDir(flipped))).message, /bk-14\.0003: cartridge label fails its CRC-32/);

    // Two backups in one directory: the reader needs the id.
    fs.cpSync(path.join(foreignSource, 'bk-15.0001'), path.join(copy('two'), 'bk-15.0001'));
    assert.match((await thinErrorOf(() => readDir(path.join(tmp, 'two')))).message, /several backups \(bk-14, bk-15\)/);
    assert.equal(await readDir(path.join(tmp, 'two'), 'bk-14'), (volume.fields.correspondence as Float64Array).length);
  });
});

describe('medium syntax', () => {
  test('parseMedium', () => {
    assert.deepEqual(parseMedium('file:/a/b'), { kind: 'file', path: '/a/b' });
    assert.deepEqual(parseMedium('dir:/a/../c'), { kind: 'dir', path: '/c' });
    assert.deepEqual(parseMedium('file:x', { baseDir: '/base' }), { kind: 'file', path: '/base/x' });
    assert.deepEqual(parseMedium('-'), { kind: 'stdio' });
    assert.deepEqual(parseMedium('volume:v1'), { kind: 'volume', name: 'v1' });
    for (const bad of ['', '/a/b', 'file:', 'tape:/dev/st0', 'dir:', 'file:/a\0b']) {
      assert.throws(() => parseMedium(bad), (error: ThinError) => error.code === 'INVALID_ARGUMENT' && error.field === 'medium', bad);
    }
  });
});

describe('media-root guard', () => {
  let root: string;
  let outside: string;
  before(() => {
    root = path.join(tmp, 'root');
    outside = path.join(tmp, 'outside');
    fs.mkdirSync(path.join(root, 'sub'), { recursive: true });
    fs.mkdirSync(outside, { recursive: true });
    fs.symlinkSync(outside, path.join(root, 'escape-dir'));
    fs.symlinkSync(path.join(outside, 'f'), path.join(root, 'escape-file'));
    fs.symlinkSync(path.join(root, 'sub'), path.join(root, 'inside-link'));
    fs.symlinkSync(path.join(root, 'sub'), path.join(outside, 'link-into-root'));
  });

  test('paths inside a root, existing or not, through inside symlinks', async () => {
    const realRoot = fs.realpathSync(root);
    assert.equal(await resolveUnderRoots(path.join(root, 'new.tbk'), [root]), path.join(realRoot, 'new.tbk'));
    assert.equal(await resolveUnderRoots(path.join(root, 'sub', 'deeper', 'x'), [root]), path.join(realRoot, 'sub', 'deeper', 'x'));
    assert.equal(await resolveUnderRoots(path.join(root, 'inside-link', 'x'), [root]), path.join(realRoot, 'sub', 'x'));
    assert.equal(await resolveUnderRoots(path.join(root, 'sub', '..', 'y'), [root]), path.join(realRoot, 'y'));
    assert.equal(await resolveUnderRoots(root, [root]), realRoot);
    assert.equal(await resolveUnderRoots(path.join(outside, 'link-into-root', 'z'), [root]), path.join(realRoot, 'sub', 'z'));
    assert.equal(await resolveUnderRoots(path.join(outside, 'a'), [root, outside]), path.join(fs.realpathSync(outside), 'a'));
  });

  test('outside paths, .. tricks, escaping and dangling symlinks are refused', async () => {
    const refused = async (target: string, pattern: RegExp): Promise<void> => {
      const error = await thinErrorOf(() => resolveUnderRoots(target, [root]));
      assert.equal(error.code, 'INVALID_ARGUMENT');
      assert.equal(error.field, 'medium');
      assert.match(error.message, pattern, target);
    };
    await refused(path.join(outside, 'x'), /is outside the media roots/);
    await refused('/etc/passwd', /is outside the media roots/);
    await refused(path.join(root, '..', 'outside', 'x'), /is outside the media roots/);
    await refused(path.join(root, 'sub', '..', '..', 'x'), /is outside the media roots/);
    await refused(`${root}-sibling/x`, /is outside the media roots/);
    await refused(path.join(root, 'escape-dir', 'x'), /resolves to .*outside.*symbolic link/);
    await refused(path.join(root, 'escape-file'), /symbolic link to nothing/);
    fs.writeFileSync(path.join(outside, 'f'), 'x');
    await refused(path.join(root, 'escape-file'), /resolves to/);
    const error = await thinErrorOf(() => resolveUnderRoots(path.join(outside, 'x'), []));
    assert.match(error.message, /no media root/);
    // The guard is applied when opening with roots.
    const openError = await thinErrorOf(() => openMediumWriter(parseMedium(`file:${path.join(root, 'escape-dir', 'b.tbk')}`), { roots: [root] }));
    assert.equal(openError.code, 'INVALID_ARGUMENT');
    assert.equal(fs.existsSync(path.join(outside, 'b.tbk')), false);
  });
});
