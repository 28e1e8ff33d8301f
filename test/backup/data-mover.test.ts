/**
 * The data mover lays out a stream's data section on a worker thread: the stream must be byte for
 * byte what BackupStreamWriter.writeExtent makes, for every extent size the array allows (frame
 * headers across chunk boundaries, records longer than a chunk, a short last record, holes), and
 * a read error, a medium error or a cancel must fail the run cleanly and leave the mover usable.
 * All of it also through a mover that reads ahead through the thread pool (as on a cold disk).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DataMover, DataMoverPool } from '../../src/backup/data-mover.js';
import { RECORD_FIELDS } from '../../src/backup/data-mover-protocol.js';
import { BackupStreamWriter } from '../../src/backup/format/writer.js';
import { extentData, MemoryWriter, seededRandom, streamBytesOf, testVolume, type TestVolume } from './helpers.js';
import { BACKUP_LIMITS } from '../../src/backup/format/limits.js';

interface Disk {
  fd: number;
  /** source extent → byte position on the disk file, or −1 for an extent that reads as zeros */
  positionOf: Map<number, number>;
}

let directory: string;
let mover: DataMover;
/** A mover that takes every pread for a slow one: nearly every record is read through the thread pool, several at once. */
let aheadMover: DataMover;

before(() => {
  directory = fs.mkdtempSync(path.join(os.tmpdir(), 'data-mover-'));
  mover = new DataMover();
  aheadMover = new DataMover({ slowReadNsPerByte: 0 });
});
after(async () => {
  await mover.close();
  await aheadMover.close();
  fs.rmSync(directory, { recursive: true, force: true });
});

/** Writes the volume's extents to a file in a shuffled physical order; `zeroEvery` extents become holes (all zeros). */
function diskOf(volume: TestVolume, name: string, zeroEvery = 0): { disk: Disk; expected: TestVolume } {
  const fd = fs.openSync(path.join(directory, name), 'w+');
  const extents = [...(volume.fields.correspondence as Float64Array)];
  const order = extents.map((extent, index) => ({ extent, key: seededRandom(index + 11)() })).sort((a, b) => a.key - b.key);
  const positionOf = new Map<number, number>();
  const zeroed = new Set<number>();
  order.forEach(({ extent }, slot) => {
    if (zeroEvery > 0 && extent % zeroEvery === 0) {
      positionOf.set(extent, -1);
      zeroed.add(extent);
      return;
    }
    const position = slot * volume.fields.extentBytes;
    fs.writeSync(fd, volume.dataOf(extent), 0, undefined, position);
    positionOf.set(extent, position);
  });
  const expected: TestVolume = {
    fields: volume.fields,
    dataOf: (extent) => (zeroed.has(extent) ? Buffer.alloc(volume.dataOf(extent).length) : volume.dataOf(extent)),
  };
  return { disk: { fd, positionOf }, expected };
}

function describer(volume: TestVolume, disk: Disk): (first: number, count: number, into: Float64Array) => void {
  const table = volume.fields.correspondence as Float64Array;
  return (first, count, into) => {
    for (let k = 0; k < count; k++) {
      const extent = table[first + k]!;
      const position = disk.positionOf.get(extent)!;
      into.set([extent, position < 0 ? -1 : disk.fd, Math.max(position, 0), volume.dataOf(extent).length], k * RECORD_FIELDS);
    }
  };
}

interface MoveOptions {
  medium?: MemoryWriter;
  signal?: AbortSignal;
  onProgress?: (bytes: number) => void;
  describe?: (first: number, count: number, into: Float64Array) => void;
  using?: DataMover;
}

async function moveStream(volume: TestVolume, disk: Disk, options: MoveOptions = {}): Promise<Buffer> {
  const medium = options.medium ?? new MemoryWriter();
  const writer = new BackupStreamWriter(medium, volume.fields);
  await writer.writeHeader();
  try {
    await (options.using ?? mover).move({
      writer, extentBytes: volume.fields.extentBytes, recordCount: volume.fields.correspondence.length,
      describe: options.describe ?? describer(volume, disk), signal: options.signal ?? new AbortController().signal, onProgress: options.onProgress ?? (() => undefined),
    });
  } catch (error) {
    await writer.abort();
    throw error;
  }
  await writer.finish();
  return medium.bytes();
}

describe('data mover', () => {
  const shapes = [
    { name: '4 KiB extents, a short last one: many headers per chunk, some across chunk boundaries', extentCount: 3000, extentBytes: 4096, partialTailBytes: 1000 },
    { name: '64 KiB extents, with holes', extentCount: 400, extentBytes: 64 * 1024, zeroEvery: 7 },
    { name: '4 MiB extents: each record spans five chunks', extentCount: 6, extentBytes: 4 * 1024 * 1024, partialTailBytes: 12344 },
    { name: 'no extent at all', extentCount: 50, extentBytes: 4096, mappedFraction: 0 },
  ];
  for (const [index, shape] of shapes.entries()) {
    test(`the stream is byte for byte the writer's own: ${shape.name}`, async () => {
      const volume = testVolume({ extentCount: shape.extentCount, mappedFraction: shape.mappedFraction ?? 0.6, extentBytes: shape.extentBytes, partialTailBytes: shape.partialTailBytes, seed: index + 2 });
      const { disk, expected } = diskOf(volume, `shape-${index}`, shape.zeroEvery);
      const want = await streamBytesOf(expected);
      assert.ok((await moveStream(volume, disk)).equals(want), 'the moved stream equals the one writeExtent writes');
      assert.ok((await moveStream(volume, disk, { using: aheadMover })).equals(want), 'and so does the one read ahead through the thread pool');
    });
  }

  test('reads ahead through the thread pool: a read that fails, and a cancel while reads are in flight, end the run cleanly', async () => {
    const volume = testVolume({ extentCount: 20_000, mappedFraction: 0.9, extentBytes: 4096, seed: 26 }); // ~70 chunks
    const { disk, expected } = diskOf(volume, 'ahead');
    const want = await streamBytesOf(expected);
    const table = volume.fields.correspondence as Float64Array;
    const broken: Disk = { fd: disk.fd, positionOf: new Map(disk.positionOf) };
    broken.positionOf.set(table[5000]!, 1 << 30); // beyond the file: a read returns 0 bytes
    await assert.rejects(moveStream(volume, broken, { using: aheadMover }), (error: Error & { code?: string }) => error.code === 'IO_ERROR' && /short read/.test(error.message));
    assert.ok(aheadMover.reusable);
    assert.ok((await moveStream(volume, disk, { using: aheadMover })).equals(want), 'the run after a failed read');
    const controller = new AbortController();
    const onProgress = (): void => controller.abort(new Error('cancelled by the operator'));
    await assert.rejects(moveStream(volume, disk, { using: aheadMover, signal: controller.signal, onProgress }), /cancelled by the operator/);
    assert.ok(aheadMover.reusable);
    // A read of the cancelled run still writing into the ring would spoil this one (the run waits
    // for its reads before it ends; a test cannot make a read slow enough to catch it for sure).
    assert.ok((await moveStream(volume, disk, { using: aheadMover })).equals(want), 'the run after a cancel');
  });

  test('a stream whose data ends exactly on a chunk boundary (after more chunks than the ring has)', async () => {
    // Find a volume whose data section ends on a chunk boundary: all extents mapped, the last one
    // short by just the right amount. The header's length comes from the writer itself.
    const chunkBytes = BACKUP_LIMITS.writeChunkBytes;
    const extentBytes = 4096;
    let found: TestVolume | undefined;
    for (let extentCount = 5000; !found && extentCount < 6000; extentCount++) {
      const probe = testVolume({ extentCount, mappedFraction: 1, extentBytes, partialTailBytes: 4, seed: 30 });
      const headerWriter = new BackupStreamWriter(new MemoryWriter(), probe.fields);
      await headerWriter.writeHeader();
      const headerBytes = headerWriter.streamBytes;
      await headerWriter.abort();
      const withoutTail = headerBytes + extentCount * 32 + (extentCount - 1) * extentBytes;
      const tailBytes = (chunkBytes - (withoutTail % chunkBytes)) % chunkBytes;
      if (tailBytes < 1 || tailBytes >= extentBytes) continue;
      const volume = testVolume({ extentCount, mappedFraction: 1, extentBytes, partialTailBytes: 4, seed: 30 });
      const capacity = (extentCount - 1) * extentBytes + tailBytes;
      volume.fields.sourceCapacityBytes = capacity;
      volume.dataOf = (extent) => {
        const length = Math.min(extentBytes, capacity - extent * extentBytes);
        return extentData(extent, extentBytes, 30).subarray(0, length);
      };
      assert.equal((withoutTail + tailBytes) % chunkBytes, 0);
      found = volume;
    }
    assert.ok(found, 'a volume ending on a chunk boundary exists in the range searched');
    const { disk, expected } = diskOf(found, 'boundary');
    assert.ok((await moveStream(found, disk)).equals(await streamBytesOf(expected)));
    // Again with this thread stalled early (as a busy event loop would): the worker then seals the
    // chunks ahead and ends the run before the job has handed the last laps' chunks on.
    let chunksSeen = 0;
    const stall = (): void => {
      if (++chunksSeen !== 2) return;
      const until = Date.now() + 300;
      while (Date.now() < until); // busy on purpose: a blocked event loop
    };
    assert.ok((await moveStream(found, disk, { onProgress: stall })).equals(await streamBytesOf(expected)), 'the same stream with the event loop stalled');
  });

  test('a read past the end of the disk fails the run with the reason, and the mover moves the next one', async () => {
    // 15,000 records: the failure comes in the first batch of 8,192 while the next waits in the
    // worker's port; the next run, started at once, must not take that batch for its own.
    const volume = testVolume({ extentCount: 30_000, mappedFraction: 0.5, extentBytes: 4096, seed: 21 });
    const { disk, expected } = diskOf(volume, 'short');
    const table = volume.fields.correspondence as Float64Array;
    assert.ok(table.length > 2 * 8192 * 0.9);
    const broken: Disk = { fd: disk.fd, positionOf: new Map(disk.positionOf) };
    broken.positionOf.set(table[100]!, 1 << 30); // beyond the file: a read returns 0 bytes
    await assert.rejects(moveStream(volume, broken), (error: Error & { code?: string }) => error.code === 'IO_ERROR' && /short read/.test(error.message));
    assert.ok(mover.reusable);
    assert.ok((await moveStream(volume, disk)).equals(await streamBytesOf(expected)));
    assert.ok((await moveStream(volume, disk)).equals(await streamBytesOf(expected)), 'and the run after it');
  });

  test('a medium that fails stops the run with its error, and nothing is written after it', async () => {
    const volume = testVolume({ extentCount: 20_000, mappedFraction: 0.9, extentBytes: 4096, seed: 22 }); // ~70 chunks
    const { disk, expected } = diskOf(volume, 'medium-fails');
    class FailingWriter extends MemoryWriter {
      attempts = 0;
      override async write(chunk: Buffer): Promise<void> {
        this.attempts++;
        if (this.chunks.length >= 2) throw new Error('medium full');
        await super.write(chunk);
      }
    }
    const medium = new FailingWriter();
    await assert.rejects(moveStream(volume, disk, { medium }), /medium full/);
    assert.equal(medium.chunks.length, 2);
    // What was sealed before the failure was seen may have been handed over; nothing after.
    assert.ok(medium.attempts <= 2 + 16 + 1, `${medium.attempts} writes were tried`);
    assert.ok(mover.reusable);
    assert.ok((await moveStream(volume, disk)).equals(await streamBytesOf(expected)), 'the run after it');
  });

  test('a failure while describing records stops the worker before the run rejects', async () => {
    const volume = testVolume({ extentCount: 40_000, mappedFraction: 0.9, extentBytes: 4096, seed: 24 }); // 36,000 records: 5 batches
    const { disk, expected } = diskOf(volume, 'describe-fails');
    const good = describer(volume, disk);
    const describe = (first: number, count: number, into: Float64Array): void => {
      if (first >= 2 * 8192) throw new Error('no location for this extent');
      good(first, count, into);
    };
    await assert.rejects(moveStream(volume, disk, { describe }), /no location for this extent/);
    assert.ok(mover.reusable, 'the worker stopped (a final state), so the mover takes the next run');
    assert.ok((await moveStream(volume, disk)).equals(await streamBytesOf(expected)));
  });

  test('a worker that dies mid-run fails the run, and that mover is not reused', async () => {
    const volume = testVolume({ extentCount: 20_000, mappedFraction: 0.9, extentBytes: 4096, seed: 25 });
    const { disk } = diskOf(volume, 'dies');
    const doomed = new DataMover();
    let killed = false;
    const onProgress = (): void => {
      if (killed) return;
      killed = true;
      void doomed.close(); // terminates the thread under the run
    };
    await assert.rejects(moveStream(volume, disk, { using: doomed, onProgress }), /data mover/);
    assert.equal(doomed.reusable, false);
  });

  test('a pool keeps its mover between backups, and refuses a backup once closed', async () => {
    const pool = new DataMoverPool();
    pool.prestart();
    let first: DataMover | undefined;
    await pool.withMover(async (one) => {
      first = one;
    });
    await pool.withMover(async (again) => {
      assert.equal(again, first, 'the idle mover is reused');
    });
    await pool.close();
    assert.equal(first!.reusable, false, 'closing ends the mover');
    await assert.rejects(pool.withMover(async () => undefined), (error: Error & { code?: string }) => error.code === 'BUSY');
  });

  test('a cancel stops the run with the signal\'s reason and leaves the mover usable', async () => {
    const volume = testVolume({ extentCount: 20_000, mappedFraction: 0.9, extentBytes: 4096, seed: 23 }); // ~70 chunks
    const { disk, expected } = diskOf(volume, 'cancel');
    const controller = new AbortController();
    class CancellingWriter extends MemoryWriter {
      override async write(chunk: Buffer): Promise<void> {
        await super.write(chunk);
        if (this.chunks.length >= 3 && !controller.signal.aborted) controller.abort(new Error('cancelled by the operator'));
      }
    }
    const medium = new CancellingWriter();
    await assert.rejects(moveStream(volume, disk, { medium, signal: controller.signal }), /cancelled by the operator/);
    // At most the ring (16 chunks) was sealed ahead of the cancel.
    assert.ok(medium.chunks.length <= 3 + 16, `the run stopped soon after the cancel (${medium.chunks.length} chunks written)`);
    assert.ok(mover.reusable);
    // The worker waits for the next run without spinning (a stop wakes it by moving a counter
    // with no message: that must not leave it looping).
    const before = process.cpuUsage();
    await new Promise((resolve) => setTimeout(resolve, 500));
    const idle = process.cpuUsage(before);
    assert.ok(idle.user + idle.system < 200_000, `idle CPU after a cancel: ${(idle.user + idle.system) / 1000} ms in 500 ms`);
    assert.ok((await moveStream(volume, disk)).equals(await streamBytesOf(expected)));
  });
});
