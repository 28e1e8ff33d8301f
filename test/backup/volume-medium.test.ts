/**
 * Backup regions (src/backup/media/volume-medium.ts) over an in-memory device: the stream comes
 * back byte for byte after the label; the label is the commit point (none until close, none after
 * abort); a region too small is NO_SPACE; every kind of bad label is refused before a stream byte
 * is read, each with its own reason.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { BACKUP_LIMITS } from '../../src/backup/format/limits.js';
import { REGION_LABEL_BYTES, REGION_STREAM_OFFSET_BYTES, RegionReader, RegionWriter, parseRegionLabel, renderRegionLabel, type RegionDevice } from '../../src/backup/media/volume-medium.js';

const KiB = 1024;

/** A volume as far as a region sees one: bytes in memory; flushes counted, and each write noted against them. */
class MemoryDevice implements RegionDevice {
  readonly name = 'vault';
  readonly bytes: Buffer;
  flushes = 0;
  /** For each write: its offset, and how many flushes came before it. */
  readonly writes: Array<{ offsetBytes: number; flushesBefore: number; fua: boolean }> = [];

  constructor(sizeBytes: number) {
    this.bytes = Buffer.alloc(sizeBytes);
  }

  get sizeBytes(): number {
    return this.bytes.length;
  }

  /** Buffers read() returned and not yet given back; every give-back is checked against them. */
  readonly lent = new Set<Buffer>();
  released = 0;

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const buffer = Buffer.from(this.bytes.subarray(offsetBytes, offsetBytes + lengthBytes));
    this.lent.add(buffer);
    return buffer;
  }

  releaseBuffer(buffer: Buffer): void {
    assert.ok(this.lent.delete(buffer), 'only a buffer read() returned is given back, and only once');
    buffer.fill(0xee); // reused: whoever still looked at it would see other bytes
    this.released++;
  }

  async write(offsetBytes: number, data: Buffer, options: { fua: boolean }): Promise<void> {
    assert.ok(offsetBytes + data.length <= this.bytes.length, 'writes stay inside the device');
    data.copy(this.bytes, offsetBytes);
    this.writes.push({ offsetBytes, flushesBefore: this.flushes, fua: options.fua });
  }

  async flush(): Promise<void> {
    this.flushes++;
  }
}

async function writeStream(device: MemoryDevice, stream: Buffer, chunkBytes: number, backupId = 'bk-000007'): Promise<void> {
  const writer = new RegionWriter(device, backupId);
  // Several in flight at once, as the stream writer does.
  const pending: Array<Promise<void>> = [];
  for (let offset = 0; offset < stream.length; offset += chunkBytes) pending.push(writer.write(stream.subarray(offset, offset + chunkBytes)));
  await Promise.all(pending);
  assert.equal(device.bytes.subarray(0, REGION_LABEL_BYTES).equals(Buffer.alloc(REGION_LABEL_BYTES)), true, 'no label before close');
  await writer.close();
}

async function readAll(device: MemoryDevice, backupId?: string): Promise<Buffer> {
  const reader = await RegionReader.open(device, backupId);
  const chunks: Buffer[] = [];
  for (let chunk = await reader.read(); chunk; chunk = await reader.read()) chunks.push(Buffer.from(chunk));
  await reader.close();
  return Buffer.concat(chunks);
}

test('the stream comes back byte for byte; the label is written last, with FUA, after a flush of the stream', async () => {
  const device = new MemoryDevice(8 * 1024 * KiB);
  const stream = crypto.randomBytes(3 * BACKUP_LIMITS.readChunkBytes + 12_345);
  await writeStream(device, stream, 256 * KiB);
  assert.deepEqual(await readAll(device, 'bk-000007'), stream);
  assert.deepEqual(await readAll(device), stream, 'without an expected id too');
  const label = device.writes.at(-1)!;
  assert.equal(label.offsetBytes, 0);
  assert.equal(label.fua, true);
  assert.ok(label.flushesBefore >= 1, 'the stream was flushed before its label');
  assert.ok(device.writes.slice(0, -1).every((write) => write.flushesBefore === 0 && write.offsetBytes >= REGION_STREAM_OFFSET_BYTES), 'stream writes come before, at or after the stream offset');
  assert.ok(device.writes.slice(0, -1).every((write) => (write.offsetBytes - REGION_STREAM_OFFSET_BYTES) % (256 * KiB) === 0), 'each chunk where the one before it ended');
});

test('the reader reads one chunk ahead and gives chunks back once the caller may no longer look at them', async () => {
  const device = new MemoryDevice(8 * 1024 * KiB);
  const chunkBytes = BACKUP_LIMITS.readChunkBytes;
  const stream = crypto.randomBytes(5 * chunkBytes + 777);
  await writeStream(device, stream, 256 * KiB);
  const reader = await RegionReader.open(device, 'bk-000007');
  assert.equal(device.lent.size, 0, 'the label was read and given back');
  const returned: Buffer[] = [];
  for (let chunk = await reader.read(); chunk; chunk = await reader.read()) {
    returned.push(chunk);
    // The contract: valid until the second read() after the one that returned it.
    const index = returned.length - 1;
    assert.deepEqual(chunk, stream.subarray(index * chunkBytes, (index + 1) * chunkBytes), `chunk ${index}`);
    if (index >= 1) assert.deepEqual(returned[index - 1], stream.subarray((index - 1) * chunkBytes, index * chunkBytes), `chunk ${index - 1} is still intact one read later`);
    assert.ok(device.lent.has(chunk) && (index === 0 || device.lent.has(returned[index - 1]!)), 'the last two chunks are still lent');
    assert.ok(device.lent.size <= 3, 'at most the last two chunks and one read ahead are out');
  }
  assert.equal(returned.length, 6);
  // The label's buffer, then reads 3 to 7 (the last one found the end) each gave back the chunk of two reads before.
  assert.equal(device.released, 1 + 5, 'chunks were given back while reading');
  await reader.close();
  assert.equal(device.lent.size, 0, 'close gives back every chunk still out');
  await reader.close(); // twice is harmless
});

test('an empty stream and a stream that fills the region exactly', async () => {
  const empty = new MemoryDevice(REGION_STREAM_OFFSET_BYTES);
  await writeStream(empty, Buffer.alloc(0), 1);
  assert.equal((await readAll(empty)).length, 0);
  const full = new MemoryDevice(REGION_STREAM_OFFSET_BYTES + 64 * KiB);
  const stream = crypto.randomBytes(64 * KiB);
  await writeStream(full, stream, 16 * KiB);
  assert.deepEqual(await readAll(full), stream);
});

test('a region too small is NO_SPACE, and an aborted writer leaves no label', async () => {
  const device = new MemoryDevice(REGION_STREAM_OFFSET_BYTES + 64 * KiB);
  const writer = new RegionWriter(device, 'bk-000001');
  await writer.write(Buffer.alloc(32 * KiB, 1));
  await assert.rejects(writer.write(Buffer.alloc(32 * KiB + 1, 2)), (error: any) => error.code === 'NO_SPACE' && /volume:vault is full/.test(error.message));
  await writer.abort();
  await assert.rejects(RegionReader.open(device), /holds no finished backup/);
});

test('bad labels are refused before any stream byte, each with its reason', async () => {
  const make = async (): Promise<MemoryDevice> => {
    const device = new MemoryDevice(REGION_STREAM_OFFSET_BYTES + 256 * KiB);
    await writeStream(device, crypto.randomBytes(100 * KiB), 32 * KiB);
    return device;
  };
  const cases: Array<[string, (device: MemoryDevice) => void, RegExp, string?]> = [
    ['another magic', (device) => device.bytes.write('NOTAREGN', 0, 'latin1'), /is not a backup region/],
    ['a flipped byte in the label', (device) => (device.bytes[40] ^= 0x01), /fails its CRC-32/],
    ['a flipped CRC', (device) => (device.bytes[REGION_LABEL_BYTES - 1] ^= 0x80), /fails its CRC-32/],
    ['another backup\'s region', () => undefined, /holds backup bk-000007, not bk-000008/, 'bk-000008'],
    [
      'a length past the region',
      (device) => renderRegionLabel({ backupId: 'bk-000007', streamBytes: 256 * KiB + 1 }).copy(device.bytes, 0),
      /more than its 1310720 bytes hold/,
    ],
    ['a wiped label', (device) => device.bytes.fill(0, 0, REGION_LABEL_BYTES), /holds no finished backup/],
  ];
  for (const [what, damage, expected, backupId] of cases) {
    const device = await make();
    damage(device);
    await assert.rejects(RegionReader.open(device, backupId), (error: any) => error.code === 'CORRUPT' && expected.test(error.message), what);
  }
  assert.deepEqual(parseRegionLabel(renderRegionLabel({ backupId: 'bk-000001', streamBytes: 5 }), 2 * REGION_STREAM_OFFSET_BYTES), { backupId: 'bk-000001', streamBytes: 5 });
});
