/**
 * The volume layer through the array, without NBD: allocation, zero-fill, trim, zero, ENOSPC,
 * persistence across reopen, check and repair. Interop tests prove the same through real clients.
 */
import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openStorageArray, type StorageArray } from '../../src/array/array.js';
import { silentLogger } from '../../src/lib/log.js';
import { KiB, MiB } from '../../src/lib/sizes.js';

const EXTENT = 64 * KiB;

function pattern(lengthBytes: number, seed: number): Buffer {
  const buffer = Buffer.allocUnsafe(lengthBytes);
  for (let i = 0; i < lengthBytes; i++) buffer[i] = (seed * 31 + i * 7) & 0xff;
  return buffer;
}

describe('array and thin volumes', () => {
  let home: string;
  let array: StorageArray;

  const open = (poolFileBytes = 64 * MiB): Promise<StorageArray> =>
    openStorageArray({ home, logger: silentLogger(), poolFileBytes });

  beforeEach(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-array-'));
    array = await open();
  });

  afterEach(async () => {
    await array.close().catch(() => undefined);
    fs.rmSync(home, { recursive: true, force: true });
  });

  test('a new volume reads as zeros and allocates nothing', async () => {
    await array.volumeCreate({ name: 'v', sizeBytes: 64 * 1024 * MiB * 1024 }); // 64 TiB, over-committed
    const volume = array.volume('v');
    assert.deepEqual(await volume.read(5 * MiB, 8 * KiB), Buffer.alloc(8 * KiB));
    assert.equal(array.volumeShow('v').allocatedBytes, 0);
    assert.deepEqual(array.volumeMap('v'), [{ offsetBytes: 0, lengthBytes: 64 * 1024 * MiB * 1024, mapped: false }]);
    assert.ok(array.poolShow().overcommitRatio > 1000);
  });

  test('a partial first write zero-fills the rest of its extent', async () => {
    await array.volumeCreate({ name: 'v', sizeBytes: 16 * MiB });
    const volume = array.volume('v');
    const data = pattern(1000, 1);
    await volume.write(EXTENT + 300, data, { fua: false });
    const extent = await volume.read(EXTENT, EXTENT);
    assert.deepEqual(extent.subarray(300, 1300), data);
    assert.equal(extent.subarray(0, 300).every((b) => b === 0), true);
    assert.equal(extent.subarray(1300).every((b) => b === 0), true);
    assert.equal(array.volumeShow('v').mappedExtents, 1);
    assert.deepEqual(array.volumeMap('v').filter((run) => run.mapped), [{ offsetBytes: EXTENT, lengthBytes: EXTENT, mapped: true }]);
  });

  test('writes across extents from several chunks read back exactly, large and small', async () => {
    await array.volumeCreate({ name: 'v', sizeBytes: 16 * MiB });
    const volume = array.volume('v');
    const data = pattern(3 * EXTENT + 777, 2);
    const chunks = [data.subarray(0, 5000), data.subarray(5000, 70000), data.subarray(70000)];
    await volume.write(EXTENT - 123, chunks, { fua: true });
    assert.deepEqual(await volume.read(EXTENT - 123, data.length), data);
    assert.deepEqual(await volume.read(EXTENT - 123, 4096), data.subarray(0, 4096));
  });

  test('concurrent partial first writes to one extent both land', async () => {
    await array.volumeCreate({ name: 'v', sizeBytes: 16 * MiB });
    const volume = array.volume('v');
    const a = pattern(4096, 3);
    const b = pattern(4096, 4);
    await Promise.all([volume.write(0, a, { fua: false }), volume.write(8192, b, { fua: false })]);
    const extent = await volume.read(0, EXTENT);
    assert.deepEqual(extent.subarray(0, 4096), a);
    assert.deepEqual(extent.subarray(8192, 12288), b);
    assert.equal(array.volumeShow('v').mappedExtents, 1);
  });

  test('trim and write-zeroes unmap whole extents and keep partial ones', async () => {
    await array.volumeCreate({ name: 'v', sizeBytes: 16 * MiB });
    const volume = array.volume('v');
    await volume.write(0, pattern(4 * EXTENT, 5), { fua: false });
    await volume.trim(EXTENT, EXTENT + 100, { fua: false });
    assert.equal(array.volumeShow('v').mappedExtents, 3);
    assert.deepEqual(await volume.read(EXTENT, EXTENT), Buffer.alloc(EXTENT));
    await volume.writeZeroes(2 * EXTENT + 10, EXTENT + 100, { fua: false, mayUnmap: true, fastOnly: false });
    assert.equal(array.volumeShow('v').mappedExtents, 3, 'partial zero ranges stay mapped');
    const zeroed = await volume.read(2 * EXTENT, 2 * EXTENT);
    assert.equal(zeroed.subarray(10, EXTENT + 110).every((b) => b === 0), true);
    assert.deepEqual(zeroed.subarray(EXTENT + 110), pattern(4 * EXTENT, 5).subarray(3 * EXTENT + 110));
    await assert.rejects(volume.writeZeroes(0, 100, { fua: false, mayUnmap: true, fastOnly: true }), { code: 'UNSUPPORTED' });
    assert.deepEqual((await volume.read(0, 100)), pattern(100, 5), 'a refused fast zero changes nothing');
    await volume.writeZeroes(0, EXTENT, { fua: false, mayUnmap: true, fastOnly: true });
    assert.equal(array.volumeShow('v').mappedExtents, 2);
    await volume.writeZeroes(8 * EXTENT, EXTENT, { fua: false, mayUnmap: false, fastOnly: false });
    assert.equal(array.volumeShow('v').mappedExtents, 3, 'NO_HOLE allocates');
  });

  test('a full pool gives NO_SPACE and leaves the volume as it was', async () => {
    await array.close();
    fs.rmSync(home, { recursive: true, force: true });
    array = await open(10 * EXTENT); // 9 data extents after the label
    await array.volumeCreate({ name: 'v', sizeBytes: 16 * MiB });
    const volume = array.volume('v');
    await volume.write(0, pattern(8 * EXTENT, 6), { fua: false });
    await assert.rejects(volume.write(8 * EXTENT, pattern(2 * EXTENT, 7), { fua: false }), { code: 'NO_SPACE' });
    assert.equal(array.volumeShow('v').mappedExtents, 8, 'all or nothing');
    assert.deepEqual(await volume.read(8 * EXTENT, 2 * EXTENT), Buffer.alloc(2 * EXTENT));
    assert.equal(array.poolShow().extentsFree, 1);
    await volume.trim(0, 2 * EXTENT, { fua: false });
    await array.sync();
    await volume.write(8 * EXTENT, pattern(2 * EXTENT, 7), { fua: false });
    assert.deepEqual(await volume.read(0, 8 * EXTENT), Buffer.concat([Buffer.alloc(2 * EXTENT), pattern(8 * EXTENT, 6).subarray(2 * EXTENT)]));
  });

  test('a freed extent is not reused before the free is committed', async () => {
    await array.close();
    fs.rmSync(home, { recursive: true, force: true });
    array = await open(3 * EXTENT); // 2 data extents
    await array.volumeCreate({ name: 'a', sizeBytes: 1 * MiB });
    await array.volumeCreate({ name: 'b', sizeBytes: 1 * MiB });
    await array.volume('a').write(0, pattern(2 * EXTENT, 8), { fua: true });
    await array.volume('a').trim(0, EXTENT, { fua: false });
    await assert.rejects(array.volume('b').write(0, pattern(10, 9), { fua: false }), { code: 'NO_SPACE' });
    await array.sync();
    await array.volume('b').write(0, pattern(10, 9), { fua: false });
  });

  test('everything flushed survives reopen; check is clean; delete returns space', async () => {
    await array.volumeCreate({ name: 'v', sizeBytes: 32 * MiB });
    await array.volumeCreate({ name: 'w', sizeBytes: 32 * MiB });
    const data = pattern(5 * EXTENT + 99, 10);
    await array.volume('v').write(3 * MiB + 17, data, { fua: false });
    await array.volume('w').write(0, data, { fua: false });
    await array.volume('v').flush();
    await array.close();
    array = await open();
    assert.deepEqual(await array.volume('v').read(3 * MiB + 17, data.length), data);
    const report = await array.check({ repair: false });
    assert.equal(report.ok, true, JSON.stringify(report.problems));
    assert.equal(report.mappedExtents, 12);
    const usedBefore = array.poolShow().extentsUsed;
    await array.volumeDelete('w');
    assert.equal(array.poolShow().extentsUsed, usedBefore - 6);
    await array.close();
    array = await open();
    assert.deepEqual(array.volumeList().map((v) => v.name), ['v']);
    assert.equal((await array.check({ repair: false })).ok, true);
  });

  test('check finds a leak and --repair returns it to the pool', async () => {
    await array.volumeCreate({ name: 'v', sizeBytes: 4 * MiB });
    await array.volume('v').write(0, pattern(EXTENT, 11), { fua: true });
    const leaked = array.pool.allocate(2);
    await array.sync();
    const report = await array.check({ repair: false });
    assert.equal(report.ok, false);
    assert.deepEqual(report.problems.map((p) => p.kind), ['leaked', 'leaked']);
    assert.ok(report.problems[0]!.detail.includes(String(leaked[0])));
    const repaired = await array.check({ repair: true });
    assert.equal(repaired.repaired, 2);
    assert.equal((await array.check({ repair: false })).ok, true);
  });

  test('reserved extents are not durable as allocated until mapped (no leak after a crash)', async () => {
    await array.volumeCreate({ name: 'v', sizeBytes: 4 * MiB });
    const reserved = array.pool.reserve(3);
    await array.sync();
    assert.equal((await array.check({ repair: false })).ok, true, 'a reservation in progress is no leak');
    const persisted = array.store.bitmapPages(array.pool.diskInfos()[0]!.id);
    const bitOf = (extent: number): number => {
      const page = persisted.find((row) => row.pageIndex === 0);
      return page ? (page.blob.readUInt32LE((extent >>> 5) * 4) >>> (extent & 31)) & 1 : 0;
    };
    assert.deepEqual(reserved.map(bitOf), [0, 0, 0], 'the commit wrote the reserved bits clear');
    array.volume('v').map.map(0, reserved[0]!);
    array.pool.confirm(reserved[0]!);
    array.pool.free(reserved[1]!);
    await array.sync();
    const after = array.store.bitmapPages(array.pool.diskInfos()[0]!.id)[0]!;
    assert.equal((after.blob.readUInt32LE((reserved[0]! >>> 5) * 4) >>> (reserved[0]! & 31)) & 1, 1, 'mapped: durable');
    await array.close();
    array = await open();
    const report = await array.check({ repair: false });
    assert.equal(report.ok, true, JSON.stringify(report.problems));
  });

  test('bad arguments are refused with the field named and nothing changed', async () => {
    await assert.rejects(array.volumeCreate({ name: '../x', sizeBytes: MiB }), { code: 'INVALID_ARGUMENT', field: 'name' });
    await assert.rejects(array.volumeCreate({ name: 'x', sizeBytes: -1 }), { code: 'INVALID_ARGUMENT', field: 'sizeBytes' });
    await assert.rejects(array.volumeCreate({ name: 'x', sizeBytes: 1000 }), { code: 'INVALID_ARGUMENT', field: 'sizeBytes' });
    await array.volumeCreate({ name: 'x', sizeBytes: MiB });
    await assert.rejects(array.volumeCreate({ name: 'x', sizeBytes: MiB }), { code: 'ALREADY_EXISTS' });
    await assert.rejects(array.volumeResize('x', 512), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(array.volumeDelete('nope'), { code: 'NOT_FOUND' });
    await assert.rejects(array.volume('x').read(MiB - 10, 20), { code: 'OUT_OF_RANGE' });
    assert.equal(array.volumeList().length, 1);
    assert.equal(array.volumeShow('x').capacityBytes, MiB);
    const grown = await array.volumeResize('x', 2 * MiB);
    assert.equal(grown.capacityBytes, 2 * MiB);
  });
});
