/**
 * The backup stream format: round trips (small, thousands of extents, partial last extent,
 * incremental in any copy order, empty volume), writer misuse refused, and every kind of damage
 * detected with its position: truncation at every frame boundary and around it, a flipped byte
 * at 200 seeded positions plus every frame's first and last bytes, bytes after the trailer.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { BackupStreamReader } from '../../src/backup/format/reader.js';
import { BackupStreamWriter } from '../../src/backup/format/writer.js';
import { BackupCorruptError } from '../../src/backup/format/corrupt.js';
import { inspectStream } from '../../src/backup/format/inspect.js';
import { allocationRunsFromExtents, extentsOfRuns } from '../../src/backup/format/header.js';
import { ThinError } from '../../src/lib/errors.js';
import { alignedBuffersInUse } from '../../src/lib/aligned-buffers.js';
import { MemoryReader, MemoryWriter, readAndCheck, seededRandom, streamBytesOf, testVolume, walkFrames, writeStream, type FramePart, type TestVolume } from './helpers.js';

async function readWhole(bytes: Buffer, chunkBytesMax = 70_000): Promise<void> {
  const reader = new BackupStreamReader(new MemoryReader(bytes, chunkBytesMax));
  await reader.readHeader();
  for await (const record of reader) void record;
  await reader.verifyTrailer();
}

async function expectCorrupt(bytes: Buffer): Promise<BackupCorruptError> {
  try {
    await readWhole(bytes);
  } catch (error) {
    assert.ok(error instanceof BackupCorruptError, `expected BackupCorruptError, got ${String(error)}`);
    assert.equal(error.code, 'CORRUPT');
    return error;
  }
  assert.fail('damaged stream was read without an error');
}

function partAt(parts: FramePart[], offset: number): FramePart {
  return parts.find((p) => offset >= p.start && offset < p.end)!;
}

describe('backup stream round trips', () => {
  test('small full backup: header fields, records and trailer come back', async () => {
    const volume = testVolume({ extentCount: 40, mappedFraction: 0.3 });
    const bytes = await streamBytesOf(volume);
    const reader = new BackupStreamReader(new MemoryReader(bytes, 1)); // one byte at a time
    const header = await reader.readHeader();
    assert.equal(header.backupId, 'bk-1');
    assert.equal(header.formatVersion, 2, 'the version the preamble carries (docs/format.md)');
    assert.equal(bytes.readUInt16LE(8), 2);
    assert.equal(header.kind, 'full');
    assert.equal(header.parentBackupId, '');
    assert.equal(header.sourceName, 'vol1');
    assert.equal(header.sourceCapacityBytes, 40 * 4096);
    assert.deepEqual([...header.labels], ['nightly', 'ünïcode']);
    assert.deepEqual([...header.allocationRuns], [...volume.fields.allocationRuns as Float64Array]);
    assert.deepEqual([...header.correspondence], [...volume.fields.correspondence as Float64Array]);
    const seen: number[] = [];
    for await (const record of reader) {
      assert.equal(record.index, seen.length);
      assert.ok(record.data.equals(volume.dataOf(record.sourceExtent)));
      seen.push(record.sourceExtent);
    }
    assert.deepEqual(seen, [...volume.fields.correspondence as Float64Array]);
    const trailer = await reader.verifyTrailer();
    assert.equal(trailer.recordCount, seen.length);
    assert.equal(trailer.streamBytes, bytes.length);
  });

  test('thousands of extents, several map and table frames, partial last extent, read in odd chunk sizes', async () => {
    const volume = testVolume({ extentCount: 30_000, mappedFraction: 0.4, extentBytes: 512, partialTailBytes: 100, seed: 3 });
    // Make sure the partial last extent is in the backup.
    const mapped = [...extentsOfRuns(volume.fields.allocationRuns)].filter((e) => e !== 29_999).concat([29_999]);
    volume.fields.allocationRuns = allocationRunsFromExtents(mapped);
    volume.fields.correspondence = Float64Array.from(mapped);
    const bytes = await streamBytesOf(volume);
    const tags = walkFrames(bytes).map((p) => p.tag);
    assert.ok(tags.filter((t) => t === 'AMAP').length >= 2 && tags.filter((t) => t === 'CORR').length >= 2, 'tables span several frames');
    for (const chunkBytesMax of [33, 4096, 1 << 20]) {
      assert.equal(await readAndCheck(new MemoryReader(bytes, chunkBytesMax), volume), mapped.length);
    }
    const summary = await inspectStream(new MemoryReader(bytes));
    assert.equal(summary.recordCount, mapped.length);
    assert.equal(summary.dataBytes, (mapped.length - 1) * 512 + 100);
    assert.equal(summary.streamBytes, bytes.length);
  });

  test('incremental backup with records in any copy order', async () => {
    const volume = testVolume({ extentCount: 500, mappedFraction: 0.5, seed: 4 });
    const changed = [...(volume.fields.correspondence as Float64Array)].filter((_, i) => i % 3 === 0).reverse();
    const incremental: TestVolume = { ...volume, fields: { ...volume.fields, kind: 'incremental', parentBackupId: 'bk-0', backupId: 'bk-4i', correspondence: Float64Array.from(changed) } };
    const bytes = await streamBytesOf(incremental);
    assert.equal(await readAndCheck(new MemoryReader(bytes), incremental), changed.length);
    const summary = await inspectStream(new MemoryReader(bytes));
    assert.equal(summary.kind, 'incremental');
    assert.equal(summary.parentBackupId, 'bk-0');
    assert.equal(summary.mappedExtentCount, (volume.fields.correspondence as Float64Array).length);
  });

  test('extent numbers past 2^32 keep both halves of their u64 in the map and the table', async () => {
    // 512-byte extents of a 4 PiB volume: extent numbers up to 2^43, so the high word is not zero.
    const extentBytes = 512;
    const capacity = 2 ** 52;
    const mapped = [5, 6, 7, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 3 * 2 ** 32 + 17, capacity / extentBytes - 1];
    const runs = allocationRunsFromExtents(mapped);
    assert.deepEqual([...runs], [5, 3, 2 ** 32 - 1, 3, 3 * 2 ** 32 + 17, 1, capacity / extentBytes - 1, 1]);
    assert.throws(() => allocationRunsFromExtents([3, 3]), /must ascend: 3 after 3/);
    const base = testVolume({ extentCount: 1, mappedFraction: 0, extentBytes });
    const volume: TestVolume = {
      fields: { ...base.fields, sourceCapacityBytes: capacity, allocationRuns: runs, correspondence: Float64Array.from(mapped) },
      dataOf: (extent) => Buffer.alloc(extentBytes, extent % 251),
    };
    const reader = new BackupStreamReader(new MemoryReader(await streamBytesOf(volume)));
    const header = await reader.readHeader();
    assert.deepEqual([...header.allocationRuns], [...runs]);
    assert.deepEqual([...header.correspondence], mapped);
  });

  test('an empty volume makes a stream with no records', async () => {
    const volume = testVolume({ extentCount: 10, mappedFraction: 0 });
    const bytes = await streamBytesOf(volume);
    assert.equal(await readAndCheck(new MemoryReader(bytes), volume), 0);
    assert.deepEqual(walkFrames(bytes).map((p) => p.tag), ['PREAMBLE', 'HEAD', 'HEND', 'TRLR']);
  });

  test('the writer streams through bounded, reused buffers', async () => {
    const volume = testVolume({ extentCount: 2000, mappedFraction: 1, extentBytes: 65536, seed: 5 });
    const medium = new MemoryWriter();
    const inUseBefore = alignedBuffersInUse();
    await writeStream(medium, volume);
    // Every write but the last is one staging buffer, and the medium is closed.
    assert.ok(medium.chunks.slice(0, -1).every((c) => c.length === 1 << 20));
    assert.ok(medium.closed);
    assert.equal(alignedBuffersInUse(), inUseBefore, 'the staging buffers went back to be recycled');
  });
});

describe('writer refuses misuse', () => {
  test('bad header fields, wrong extent, wrong length, early finish', async () => {
    const volume = testVolume({ extentCount: 20, mappedFraction: 0.5, seed: 6 });
    const table = volume.fields.correspondence as Float64Array;
    const codeOf = async (work: () => unknown): Promise<string> => {
      try {
        await work();
      } catch (error) {
        assert.ok(error instanceof ThinError);
        return error.code;
      }
      return 'none';
    };
    assert.equal(await codeOf(() => new BackupStreamWriter(new MemoryWriter(), { ...volume.fields, correspondence: table.subarray(1) })), 'INVALID_ARGUMENT', 'full backup without every mapped extent');
    assert.equal(await codeOf(() => new BackupStreamWriter(new MemoryWriter(), { ...volume.fields, backupId: '../x' })), 'INVALID_ARGUMENT');
    assert.equal(await codeOf(() => new BackupStreamWriter(new MemoryWriter(), { ...volume.fields, kind: 'incremental' })), 'INVALID_ARGUMENT', 'incremental without parent');
    assert.equal(await codeOf(() => new BackupStreamWriter(new MemoryWriter(), { ...volume.fields, correspondence: Float64Array.from([...table.subarray(1), 19.5]) })), 'INVALID_ARGUMENT');
    const writer = new BackupStreamWriter(new MemoryWriter(), volume.fields);
    assert.equal(await codeOf(() => writer.writeExtent(table[0]!, volume.dataOf(table[0]!))), 'INVALID_ARGUMENT', 'before the header');
    await writer.writeHeader();
    assert.equal(await codeOf(() => writer.writeExtent(table[1]!, volume.dataOf(table[1]!))), 'INVALID_ARGUMENT', 'out of order');
    assert.equal(await codeOf(() => writer.writeExtent(table[0]!, Buffer.alloc(100))), 'INVALID_ARGUMENT', 'wrong length');
    assert.equal(await codeOf(() => writer.finish()), 'INVALID_ARGUMENT', 'finish before every record');
    const both = await Promise.allSettled([writer.writeExtent(table[0]!, volume.dataOf(table[0]!)), writer.writeExtent(table[0]!, volume.dataOf(table[0]!))]);
    assert.equal(both[0].status, 'fulfilled', 'still usable after refusals');
    assert.ok(both[1].status === 'rejected' && /await each call/.test(String(both[1].reason)), 'overlapping calls refused');
    assert.equal(writer.recordsWritten, 1);
  });

  test('a medium failure fails the stream with the medium error', async () => {
    const volume = testVolume({ extentCount: 100, mappedFraction: 1, extentBytes: 65536, seed: 8 });
    const failing = new MemoryWriter();
    failing.write = async () => {
      throw new ThinError('NO_SPACE', 'medium full');
    };
    const inUseBefore = alignedBuffersInUse();
    const writer = new BackupStreamWriter(failing, volume.fields);
    await writer.writeHeader();
    await assert.rejects(async () => {
      for (const extent of volume.fields.correspondence as Float64Array) await writer.writeExtent(extent, volume.dataOf(extent));
      await writer.finish();
    }, (error: ThinError) => error.code === 'NO_SPACE');
    assert.ok(alignedBuffersInUse() > inUseBefore);
    await writer.abort();
    assert.equal(alignedBuffersInUse(), inUseBefore, 'abort gives the staging buffers back');
  });
});

describe('damage is detected with its position', () => {
  const volume = testVolume({ extentCount: 12_000, mappedFraction: 0.02, extentBytes: 4096, seed: 9 });
  volume.fields.labels = ['a'];
  let bytes: Buffer;
  let parts: FramePart[];
  const setup = async (): Promise<void> => {
    bytes ??= await streamBytesOf(volume);
    parts ??= walkFrames(bytes);
  };

  test('truncation at every frame boundary and around it', async () => {
    await setup();
    assert.ok(parts.some((p) => p.tag === 'AMAP') && parts.some((p) => p.tag === 'CORR'));
    const lengths = new Set<number>([0, 1, 8, 15]);
    for (const part of parts) {
      for (const delta of [-1, 0, 1, 4, 31, 32, 33]) lengths.add(part.start + delta);
      lengths.add(Math.floor((part.payloadStart + part.end) / 2));
      lengths.add(part.end - 1);
    }
    let checked = 0;
    for (const length of [...lengths].filter((l) => l >= 0 && l < bytes.length).sort((a, b) => a - b)) {
      const error = await expectCorrupt(bytes.subarray(0, length));
      assert.equal(error.offsetBytes, length, `truncated to ${length}: reported at ${error.offsetBytes}: ${error.message}`);
      assert.match(error.message, /truncated/, error.message);
      const part = partAt(parts, length);
      if (part.recordIndex !== undefined && length > part.start) assert.equal(error.recordIndex, part.recordIndex, error.message);
      checked++;
    }
    assert.ok(checked > 150, `${checked} truncations`);
  });

  test('a flipped byte at 200 seeded positions and at every frame edge', async () => {
    await setup();
    const random = seededRandom(2026);
    const positions = new Set<number>();
    while (positions.size < 200) positions.add(Math.floor(random() * bytes.length));
    for (const part of parts) {
      positions.add(part.start);
      positions.add(part.payloadStart - 1);
      positions.add(part.end - 1);
    }
    // Every byte of the preamble, the HEND frame and the trailer.
    for (const part of parts.filter((p) => p.tag === 'PREAMBLE' || p.tag === 'HEND' || p.tag === 'TRLR')) {
      for (let offset = part.start; offset < part.end; offset++) positions.add(offset);
    }
    for (const position of positions) {
      const damaged = Buffer.from(bytes);
      damaged[position] = damaged[position]! ^ (1 << (position % 8));
      const error = await expectCorrupt(damaged);
      const part = partAt(parts, position);
      assert.ok(error.offsetBytes >= part.start && error.offsetBytes <= position, `flip at ${position} (${part.tag} at ${part.start}) reported at ${error.offsetBytes}: ${error.message}`);
      if (part.recordIndex !== undefined) assert.equal(error.recordIndex, part.recordIndex, error.message);
    }
    assert.ok(positions.size > 400, `${positions.size} positions`);
  });

  test('bytes after the trailer, a record dropped, two records swapped', async () => {
    await setup();
    const extra = await expectCorrupt(Buffer.concat([bytes, Buffer.from('xyz')]));
    assert.match(extra.message, /3 unexpected bytes after the end/);
    assert.equal(extra.offsetBytes, bytes.length);

    const data = parts.filter((p) => p.tag === 'DATA');
    const [a, b] = [data[3]!, data[4]!];
    const dropped = await expectCorrupt(Buffer.concat([bytes.subarray(0, a.start), bytes.subarray(a.end)]));
    assert.match(dropped.message, /record index 4 where record 3 belongs/);
    const swapped = await expectCorrupt(Buffer.concat([bytes.subarray(0, a.start), bytes.subarray(b.start, b.end), bytes.subarray(a.start, a.end), bytes.subarray(b.end)]));
    assert.equal(swapped.recordIndex, 3);
    assert.equal(swapped.offsetBytes, a.start);
  });

  test('a stream that is not a backup is named as such', async () => {
    const error = await expectCorrupt(Buffer.from('hello world, this is not a backup stream at all'));
    assert.match(error.message, /not a thinarray backup stream/);
    assert.equal(error.section, 'preamble');
  });
});
