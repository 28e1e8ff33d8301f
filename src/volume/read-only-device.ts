/**
 * A read-only view of a device, for exports that hosts may read but not change (a copy target
 * while its copy runs). Every operation is listed: reads pass through, changes are refused.
 */
import { ThinError } from '../lib/errors.js';
import type { BlockDevice, BlockStatusRun, ChangeStatusRun, WriteOptions, ZeroOptions } from './block-device.js';

export class ReadOnlyDevice implements BlockDevice {
  readonly #inner: BlockDevice;
  readonly #reason: string;

  constructor(inner: BlockDevice, reason: string) {
    this.#inner = inner;
    this.#reason = reason;
  }

  get name(): string {
    return this.#inner.name;
  }
  get sizeBytes(): number {
    return this.#inner.sizeBytes;
  }
  get extentBytes(): number {
    return this.#inner.extentBytes;
  }
  get readOnly(): boolean {
    return true;
  }

  read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    return this.#inner.read(offsetBytes, lengthBytes);
  }
  write(_offsetBytes: number, _data: Buffer | readonly Buffer[], _options: WriteOptions): Promise<void> {
    return Promise.reject(this.#refusal());
  }
  trim(_offsetBytes: number, _lengthBytes: number, _options: WriteOptions): Promise<void> {
    return Promise.reject(this.#refusal());
  }
  writeZeroes(_offsetBytes: number, _lengthBytes: number, _options: ZeroOptions): Promise<void> {
    return Promise.reject(this.#refusal());
  }
  /** Nothing to make durable through this view; the inner device's own writers flush it. */
  flush(): Promise<void> {
    return this.#inner.flush();
  }
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.#inner.cache(offsetBytes, lengthBytes);
  }
  blockStatus(offsetBytes: number, lengthBytes: number, maxRuns?: number): BlockStatusRun[] {
    return this.#inner.blockStatus(offsetBytes, lengthBytes, maxRuns);
  }

  changeStatus(offsetBytes: number, lengthBytes: number, maxRuns: number): ChangeStatusRun[] {
    if (!this.#inner.changeStatus) return [{ lengthBytes, changed: false }];
    return this.#inner.changeStatus(offsetBytes, lengthBytes, maxRuns);
  }

  #refusal(): ThinError {
    return new ThinError('READ_ONLY', `${this.#inner.name} is read-only: ${this.#reason}`);
  }
}
