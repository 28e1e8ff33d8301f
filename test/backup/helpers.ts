/** Helpers for the backup format and media tests: in-memory media, seeded data, stream walking. */
import type { MediumReader, MediumWriter } from '../../src/backup/media/medium.js';
import { seededRandom } from '../helpers/random.js';
export { seededRandom };
import { BackupStreamWriter } from '../../src/backup/format/writer.js';
import { BackupStreamReader } from '../../src/backup/format/reader.js';
import { allocationRunsFromExtents, recordBytesFor, type BackupHeaderFields } from '../../src/backup/format/header.js';


/** The bytes of source extent `extent`: different for every extent and seed. */
export function extentData(extent: number, lengthBytes: number, seed = 1): Buffer {
  const data = Buffer.allocUnsafe(lengthBytes);
  let x = (extent * 2654435761 + seed * 40503) >>> 0;
  for (let i = 0; i < lengthBytes; i += 4) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    data.writeUInt32LE(x, i);
  }
  return data;
}

export class MemoryWriter implements MediumWriter {
  readonly description = 'memory:test';
  readonly chunks: Buffer[] = [];
  bytesWritten = 0;
  closed = false;
  async write(chunk: Buffer): Promise<void> {
    this.chunks.push(Buffer.from(chunk)); // the writer reuses its buffers: keep a copy
    this.bytesWritten += chunk.length;
  }
  async close(): Promise<void> {
    this.closed = true;
  }
  async abort(): Promise<void> {
    this.closed = true;
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/** Serves `bytes` in chunks of seeded random sizes up to `chunkBytesMax`. */
export class MemoryReader implements MediumReader {
  readonly description = 'memory:test';
  bytesRead = 0;
  readonly #bytes: Buffer;
  readonly #random: () => number;
  readonly #chunkBytesMax: number;
  constructor(bytes: Buffer, chunkBytesMax = 1 << 20, seed = 7) {
    this.#bytes = bytes;
    this.#chunkBytesMax = chunkBytesMax;
    this.#random = seededRandom(seed);
  }
  async read(): Promise<Buffer | null> {
    if (this.bytesRead >= this.#bytes.length) return null;
    const length = 1 + Math.floor(this.#random() * this.#chunkBytesMax);
    const chunk = this.#bytes.subarray(this.bytesRead, this.bytesRead + length);
    this.bytesRead += chunk.length;
    return chunk;
  }
  async close(): Promise<void> {}
}

export interface TestVolume {
  fields: BackupHeaderFields;
  /** source extent → its data */
  dataOf: (extent: number) => Buffer;
}

/**
 * A source volume of `extentCount` extents (the last one partial when `partialTailBytes`), with
 * a seeded fraction mapped; a full backup's fields.
 */
export function testVolume(options: { extentCount: number; mappedFraction: number; extentBytes?: number; partialTailBytes?: number; seed?: number }): TestVolume {
  const extentBytes = options.extentBytes ?? 4096;
  const seed = options.seed ?? 1;
  const random = seededRandom(seed);
  const mapped: number[] = [];
  for (let e = 0; e < options.extentCount; e++) if (random() < options.mappedFraction) mapped.push(e);
  const capacity = (options.extentCount - (options.partialTailBytes ? 1 : 0)) * extentBytes + (options.partialTailBytes ?? 0);
  const fields: BackupHeaderFields = {
    backupId: `bk-${seed}`,
    kind: 'full',
    sourceName: 'vol1',
    sourceUuid: '0d9b6c1e-2f0a-4a55-9d0e-4b8f5d2b9e11',
    sourceCapacityBytes: capacity,
    extentBytes,
    allocationRuns: allocationRunsFromExtents(mapped),
    correspondence: Float64Array.from(mapped),
    createdAtMs: Date.UTC(2026, 0, 2, 3, 4, 5),
    labels: ['nightly', 'ünïcode'],
    description: 'test backup',
  };
  return { fields, dataOf: (extent) => extentData(extent, recordBytesFor(extent, capacity, extentBytes), seed) };
}

export async function writeStream(medium: MediumWriter, volume: TestVolume): Promise<void> {
  const writer = new BackupStreamWriter(medium, volume.fields);
  await writer.writeHeader();
  for (const extent of volume.fields.correspondence as Float64Array) await writer.writeExtent(extent, volume.dataOf(extent));
  await writer.finish();
}

export function streamBytesOf(volume: TestVolume): Promise<Buffer> {
  const medium = new MemoryWriter();
  return writeStream(medium, volume).then(() => medium.bytes());
}

/** Reads a whole stream, checking every record against the volume; returns the record count. */
export async function readAndCheck(medium: MediumReader, volume: TestVolume): Promise<number> {
  const reader = new BackupStreamReader(medium);
  await reader.readHeader();
  let count = 0;
  for await (const record of reader) {
    const expected = volume.dataOf(record.sourceExtent);
    if (!record.data.equals(expected)) throw new Error(`record ${record.index} (extent ${record.sourceExtent}) differs`);
    count++;
  }
  await reader.verifyTrailer();
  return count;
}

export interface FramePart {
  tag: string;
  start: number;
  end: number;
  payloadStart: number;
  /** DATA frames: the record index. */
  recordIndex?: number;
}

/** The frames of a good stream, by walking their headers (preamble as a pseudo-frame). */
export function walkFrames(bytes: Buffer): FramePart[] {
  const parts: FramePart[] = [{ tag: 'PREAMBLE', start: 0, end: 16, payloadStart: 16 }];
  let offset = 16;
  while (offset < bytes.length) {
    const tag = bytes.toString('latin1', offset, offset + 4);
    const payloadBytes = bytes.readUInt32LE(offset + 4);
    const part: FramePart = { tag, start: offset, end: offset + 32 + payloadBytes, payloadStart: offset + 32 };
    if (tag === 'DATA') part.recordIndex = bytes.readUInt32LE(offset + 8);
    parts.push(part);
    offset = part.end;
  }
  return parts;
}
