/**
 * Point-in-time copies through the array: the target is the point in time at once, while the
 * source keeps changing (write, partial write, trim) during the background copy; instant keeps
 * addresses, compact packs the used extents in order behind a self-describing header; the copy
 * resumes after the array is reopened; busy volumes are protected; a full pool is refused up front.
 */
import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openStorageArray, type StorageArray } from '../../src/array/array.js';
import { silentLogger } from '../../src/lib/log.js';
import { KiB, MiB } from '../../src/lib/sizes.js';
import { parseCompactHeader } from '../../src/copy/compact-header.js';

const EXTENT = 64 * KiB;

function pattern(lengthBytes: number, seed: number): Buffer {
  const buffer = Buffer.allocUnsafe(lengthBytes);
  for (let i = 0; i < lengthBytes; i++) buffer[i] = (seed * 131 + i * 7 + (i >> 9)) & 0xff;
  return buffer;
}

/** Byte equality with a short message (assert.deepEqual on megabytes builds a diff that exhausts memory). */
function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  const first = actual.findIndex((byte, i) => byte !== expected[i]);
  assert.equal(first, -1, `${what}: first difference at byte ${first} (extent ${Math.floor(first / EXTENT)}): ${actual[first]} instead of ${expected[first]}`);
}

async function waitJob(array: StorageArray, jobId: string): Promise<void> {
  const info = await array.jobs.wait(jobId, 60_000);
  assert.equal(info.state, 'succeeded', JSON.stringify(info.error));
}

describe('point-in-time copies', () => {
  let home: string;
  let array: StorageArray;
  const open = async (poolFileBytes = 256 * MiB): Promise<StorageArray> => {
    const opened = await openStorageArray({ home, logger: silentLogger(), poolFileBytes });
    opened.startJobs();
    return opened;
  };

  beforeEach(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-copy-'));
    array = await open();
  });
  afterEach(async () => {
    await array.close().catch(() => undefined);
    fs.rmSync(home, { recursive: true, force: true });
  });

  /** Scattered data: extents 3, 4, 10 (partial), 100, 101 … 140, and the last extent. */
  async function fillSource(sizeBytes: number): Promise<Buffer> {
    await array.volumeCreate({ name: 'src', sizeBytes });
    const reference = Buffer.alloc(sizeBytes);
    const put = async (offset: number, data: Buffer): Promise<void> => {
      await array.volume('src').write(offset, data, { fua: false });
      data.copy(reference, offset);
    };
    await put(3 * EXTENT, pattern(2 * EXTENT, 1));
    await put(10 * EXTENT + 1000, pattern(5000, 2));
    await put(100 * EXTENT, pattern(41 * EXTENT, 3));
    await put(sizeBytes - EXTENT, pattern(EXTENT, 4));
    return reference;
  }

  test('instant copy equals the point in time while the source keeps changing', async () => {
    const size = 16 * MiB;
    const pointInTime = await fillSource(size);
    const copy = await array.copyCreate('src', 'snap', 'instant');
    assert.equal(copy.extentCount, 45);
    const source = array.volume('src');
    // Changes right after the point in time, racing the background copy.
    await Promise.all([
      source.write(3 * EXTENT + 10, pattern(100, 9), { fua: false }), // partial write of a needed extent
      source.write(100 * EXTENT, pattern(8 * EXTENT, 8), { fua: false }), // whole extents
      source.trim(120 * EXTENT, 4 * EXTENT, { fua: false }), // trim of needed extents
      source.write(50 * EXTENT, pattern(EXTENT, 7), { fua: false }), // unmapped at the point in time
    ]);
    // Reads of the copy in progress already return the point in time.
    assertSameBytes(await array.volume('snap').read(0, size), pointInTime, 'copy in progress');
    await waitJob(array, copy.jobId!);
    assertSameBytes(await array.volume('snap').read(0, size), pointInTime, 'copy complete');
    assert.equal(array.volumeShow('snap').state, 'ready');
    assert.equal(array.volumeShow('snap').mappedExtents, 45);
    const sourceNow = await source.read(3 * EXTENT + 10, 100);
    assert.deepEqual(sourceNow, pattern(100, 9), 'the source keeps its new data');
    assert.equal((await array.check({ repair: false })).ok, true);
  });

  test('compact copy packs used extents in order behind a self-describing header', async () => {
    const size = 64 * MiB;
    const pointInTime = await fillSource(size);
    const copy = await array.copyCreate('src', 'packed', 'compact');
    await array.volume('src').write(100 * EXTENT, pattern(EXTENT, 11), { fua: false });
    await waitJob(array, copy.jobId!);
    const shown = array.copyShow('packed', true);
    assert.equal(shown.metadataExtents, 1);
    assert.equal(shown.targetCapacityBytes, (1 + 45) * EXTENT, 'capacity = used size + header');
    const target = array.volume('packed');
    const { header, sourceExtents } = parseCompactHeader(await target.read(0, EXTENT));
    assert.equal(header.sourceCapacityBytes, size);
    assert.equal(header.extentCount, 45);
    assert.deepEqual(Array.from(sourceExtents), shown.correspondence!.map((row) => row.sourceExtent));
    for (let i = 0; i < sourceExtents.length; i++) {
      const sourceOffset = sourceExtents[i]! * EXTENT;
      assertSameBytes(await target.read((1 + i) * EXTENT, EXTENT), pointInTime.subarray(sourceOffset, sourceOffset + EXTENT), `X${i + 1}`);
    }
  });

  test('a copy interrupted by a restart resumes with the point in time kept', async () => {
    const size = 32 * MiB;
    const pointInTime = await fillSource(size);
    const copy = await array.copyCreate('src', 'snap', 'instant');
    await array.volume('src').write(100 * EXTENT, pattern(20 * EXTENT, 12), { fua: true });
    await array.close(); // stops the job (resumable) and commits
    array = await open();
    await array.volume('src').write(130 * EXTENT, pattern(5 * EXTENT, 13), { fua: false });
    await waitJob(array, copy.jobId!);
    assertSameBytes(await array.volume('snap').read(0, size), pointInTime, 'read-back');
    assert.equal((await array.check({ repair: false })).ok, true);
  });

  test('copy-on-read: a target read of an extent not copied yet copies it', async () => {
    const pointInTime = await fillSource(16 * MiB);
    // A view has no background copy, so whatever gets copied here was copied by the reads.
    const session = await array.copies.createView('src', 'cor', (view) => (view.copyOnRead = true));
    const target = array.volume('cor');
    assert.equal(target.map.mappedCount, 0);
    // A view's list is kept in memory only; copy show still gives its table (not one of zeros).
    const shown = array.copyShow('cor', true).correspondence!.map((row) => row.sourceExtent);
    assert.deepEqual(shown, Array.from(session.sourceExtents));
    assert.deepEqual(shown.slice(0, 3), [3, 4, 10]);
    const metadataBytes = session.row.metadataExtents * EXTENT;
    const read = await target.read(metadataBytes, 3 * EXTENT); // X1..X3 = source extents 3, 4, 10
    assertSameBytes(read.subarray(0, 2 * EXTENT), pointInTime.subarray(3 * EXTENT, 5 * EXTENT), 'read through');
    for (let waited = 0; waited < 5000 && target.map.mappedCount < 3; waited += 20) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(target.map.mappedCount, 3, 'the three extents read were copied');
    assert.equal(session.remainingItems, session.row.extentCount - 3);
    assertSameBytes(await target.read(metadataBytes, 2 * EXTENT), pointInTime.subarray(3 * EXTENT, 5 * EXTENT), 'from the copy now');
    await array.copies.discard(session);
    assert.equal((await array.check({ repair: false })).ok, true);
  });

  test('busy volumes, existing targets and a full pool are refused; nothing half-made', async () => {
    await fillSource(16 * MiB);
    await array.volumeCreate({ name: 'taken', sizeBytes: MiB });
    await assert.rejects(array.copyCreate('src', 'taken', 'instant'), { code: 'ALREADY_EXISTS' });
    await assert.rejects(array.copyCreate('nope', 'x', 'instant'), { code: 'NOT_FOUND' });
    await assert.rejects(array.copyCreate('src', 'bad/name', 'instant'), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(array.copyCreate('src', 'x', 'fast' as 'instant'), { code: 'INVALID_ARGUMENT' });
    const copy = await array.copyCreate('src', 'snap', 'instant');
    await assert.rejects(array.volumeDelete('src'), { code: 'BUSY' });
    await assert.rejects(array.volumeDelete('snap'), { code: 'BUSY' });
    await assert.rejects(array.volumeResize('src', 32 * MiB), { code: 'BUSY' });
    await assert.rejects(array.copyCreate('src', 'snap2', 'instant'), { code: 'BUSY' });
    await assert.rejects(array.openExport('snap')!.write(0, Buffer.alloc(512), { fua: false }), { code: 'READ_ONLY' });
    await waitJob(array, copy.jobId!);
    await array.volumeDelete('snap');
    assert.deepEqual(array.volumeList().map((v) => v.name).sort(), ['src', 'taken']);

    await array.close();
    fs.rmSync(home, { recursive: true, force: true });
    array = await open(60 * EXTENT); // 59 data extents
    await array.volumeCreate({ name: 'src', sizeBytes: 16 * MiB });
    await array.volume('src').write(0, pattern(40 * EXTENT, 5), { fua: false });
    await assert.rejects(array.copyCreate('src', 'snap', 'instant'), { code: 'NO_SPACE' });
    assert.deepEqual(array.volumeList().map((v) => v.name), ['src'], 'no target left behind');
  });

  test('a cancelled copy deletes its target and leaves the source as it is', async () => {
    const size = 64 * MiB;
    await array.volumeCreate({ name: 'src', sizeBytes: size });
    await array.volume('src').write(0, pattern(32 * MiB, 6), { fua: false });
    const copy = await array.copyCreate('src', 'snap', 'instant');
    array.jobs.cancel(copy.jobId!);
    const info = await array.jobs.wait(copy.jobId!, 60_000);
    assert.ok(info.state === 'cancelled' || info.state === 'succeeded', info.state);
    if (info.state === 'cancelled') assert.deepEqual(array.volumeList().map((v) => v.name), ['src']);
    assertSameBytes(await array.volume('src').read(0, 32 * MiB), pattern(32 * MiB, 6), 'read-back');
    assert.equal((await array.check({ repair: false })).ok, true);
  });
});
