/** A correct in-memory BlockDevice (sparse map of extents) that exists only to test the NBD layer. */
import { ThinError } from '../../src/lib/errors.js';
import type { BlockDevice, BlockStatusRun, WriteOptions, ZeroOptions } from '../../src/volume/block-device.js';

export interface MemoryDeviceOptions {
  name?: string;
  sizeBytes: number;
  extentBytes?: number;
  readOnly?: boolean;
  /** Every operation waits this long first (to keep requests in flight). */
  delayMs?: number;
}

export interface OperationRecord {
  op: string;
  offsetBytes: number;
  lengthBytes: number;
  options?: WriteOptions | ZeroOptions;
  /** For writes: how many buffers the data came in. */
  parts?: number;
}

export class MemoryDevice implements BlockDevice {
  readonly name: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly extentBytes: number;
  delayMs: number;
  /** Set to make the next operations fail with this error (tests of error mapping). */
  failWith: Error | undefined;
  readonly log: OperationRecord[] = [];
  /** Operations waiting in their delay right now, and the most ever seen at once. */
  active = 0;
  maxActive = 0;
  private readonly extents = new Map<number, Buffer>();

  constructor(options: MemoryDeviceOptions) {
    this.name = options.name ?? 'memory';
    this.sizeBytes = options.sizeBytes;
    this.extentBytes = options.extentBytes ?? 64 * 1024;
    this.readOnly = options.readOnly ?? false;
    this.delayMs = options.delayMs ?? 0;
  }

  get mappedExtents(): number[] {
    return [...this.extents.keys()].sort((a, b) => a - b);
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    await this.enter('read', offsetBytes, lengthBytes);
    const out = Buffer.alloc(lengthBytes);
    this.forEachPiece(offsetBytes, lengthBytes, (extent, within, length, at) => {
      this.extents.get(extent)?.copy(out, at, within, within + length);
    });
    return out;
  }

  async write(offsetBytes: number, data: Buffer | readonly Buffer[], options: WriteOptions): Promise<void> {
    const parts = Buffer.isBuffer(data) ? [data] : data;
    const lengthBytes = parts.reduce((sum, part) => sum + part.length, 0);
    await this.enter('write', offsetBytes, lengthBytes, options, parts.length);
    this.assertWritable();
    const joined = Buffer.concat(parts as Buffer[]);
    this.forEachPiece(offsetBytes, lengthBytes, (extent, within, length, at) => {
      joined.copy(this.allocate(extent), within, at, at + length);
    });
  }

  async trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void> {
    await this.enter('trim', offsetBytes, lengthBytes, options);
    this.assertWritable();
    this.forEachPiece(offsetBytes, lengthBytes, (extent, _within, length) => {
      if (length === this.extentLength(extent)) this.extents.delete(extent);
    });
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    await this.enter('writeZeroes', offsetBytes, lengthBytes, options);
    this.assertWritable();
    if (options.fastOnly && !this.zeroIsFast(offsetBytes, lengthBytes, options)) {
      throw new ThinError('UNSUPPORTED', 'zeroing this range would write data');
    }
    this.forEachPiece(offsetBytes, lengthBytes, (extent, within, length) => {
      if (options.mayUnmap && length === this.extentLength(extent)) {
        this.extents.delete(extent);
      } else if (!options.mayUnmap) {
        this.allocate(extent).fill(0, within, within + length);
      } else {
        this.extents.get(extent)?.fill(0, within, within + length);
      }
    });
  }

  async flush(): Promise<void> {
    await this.enter('flush', 0, 0);
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    await this.enter('cache', offsetBytes, lengthBytes);
  }

  blockStatus(offsetBytes: number, lengthBytes: number): BlockStatusRun[] {
    this.assertRange(offsetBytes, lengthBytes);
    const runs: BlockStatusRun[] = [];
    this.forEachPiece(offsetBytes, lengthBytes, (extent, _within, length) => {
      const hole = !this.extents.has(extent);
      const last = runs[runs.length - 1];
      if (last !== undefined && last.hole === hole) last.lengthBytes += length;
      else runs.push({ lengthBytes: length, hole, zero: hole });
    });
    return runs;
  }

  /** Fast when nothing would be written: every touched extent is unmapped or wholly unmapped by it. */
  private zeroIsFast(offsetBytes: number, lengthBytes: number, options: ZeroOptions): boolean {
    if (!options.mayUnmap) return false;
    let fast = true;
    this.forEachPiece(offsetBytes, lengthBytes, (extent, _within, length) => {
      if (this.extents.has(extent) && length !== this.extentLength(extent)) fast = false;
    });
    return fast;
  }

  private async enter(op: string, offsetBytes: number, lengthBytes: number, options?: WriteOptions, parts?: number) {
    this.assertRange(offsetBytes, lengthBytes);
    this.log.push({ op, offsetBytes, lengthBytes, ...(options ? { options } : {}), ...(parts ? { parts } : {}) });
    if (this.delayMs > 0) {
      this.maxActive = Math.max(this.maxActive, ++this.active);
      await new Promise((resolve) => setTimeout(resolve, this.delayMs));
      this.active--;
    }
    if (this.failWith !== undefined) throw this.failWith;
  }

  private assertRange(offsetBytes: number, lengthBytes: number): void {
    if (!(Number.isSafeInteger(offsetBytes) && Number.isSafeInteger(lengthBytes) && offsetBytes >= 0 && lengthBytes >= 0)) {
      throw new Error(`bad range ${offsetBytes}+${lengthBytes}`);
    }
    if (offsetBytes + lengthBytes > this.sizeBytes) throw new Error(`range ${offsetBytes}+${lengthBytes} past ${this.sizeBytes}`);
  }

  private assertWritable(): void {
    if (this.readOnly) throw new ThinError('READ_ONLY', 'read-only device');
  }

  /** The last extent may be short when the size is not a multiple of the extent size. */
  private extentLength(extent: number): number {
    return Math.min(this.extentBytes, this.sizeBytes - extent * this.extentBytes);
  }

  private allocate(extent: number): Buffer {
    let data = this.extents.get(extent);
    if (data === undefined) {
      data = Buffer.alloc(this.extentLength(extent));
      this.extents.set(extent, data);
    }
    return data;
  }

  /** Splits a range at extent boundaries: (extent, offset within it, length, offset within the range). */
  private forEachPiece(offsetBytes: number, lengthBytes: number, visit: (extent: number, within: number, length: number, at: number) => void) {
    let at = 0;
    while (at < lengthBytes) {
      const position = offsetBytes + at;
      const extent = Math.floor(position / this.extentBytes);
      const within = position - extent * this.extentBytes;
      const length = Math.min(this.extentBytes - within, lengthBytes - at);
      visit(extent, within, length, at);
      at += length;
    }
  }
}
