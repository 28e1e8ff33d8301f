/**
 * Exact-length reads over a MediumReader's chunks, counting the stream offset. A read that lies
 * inside one chunk is a view of it (no copy); one that spans chunks is assembled in a scratch
 * buffer that is reused, so a returned view is valid only until the next read.
 */
import type { MediumReader } from '../media/medium.js';

export class ByteSource {
  readonly #medium: MediumReader;
  #chunk: Buffer = Buffer.alloc(0);
  #chunkOffset = 0;
  #offsetBytes = 0;
  #scratch: Buffer = Buffer.alloc(0);
  #ended = false;

  constructor(medium: MediumReader) {
    this.#medium = medium;
  }

  /** Stream offset of the next byte to be read. */
  get offsetBytes(): number {
    return this.#offsetBytes;
  }

  /**
   * The next `lengthBytes` bytes; shorter only when the stream ends first (then it holds what
   * was left, and offsetBytes is where the stream ended).
   */
  async read(lengthBytes: number): Promise<Buffer> {
    const available = this.#chunk.length - this.#chunkOffset;
    if (available >= lengthBytes) return this.#take(lengthBytes);
    if (this.#scratch.length < lengthBytes) this.#scratch = Buffer.allocUnsafeSlow(Math.max(lengthBytes, 2 * this.#scratch.length));
    let filled = 0;
    while (filled < lengthBytes) {
      if (this.#chunkOffset === this.#chunk.length && !(await this.#nextChunk())) break;
      const piece = this.#take(Math.min(lengthBytes - filled, this.#chunk.length - this.#chunkOffset));
      piece.copy(this.#scratch, filled);
      filled += piece.length;
    }
    return this.#scratch.subarray(0, filled);
  }

  /** True when no byte is left (reads ahead one chunk if needed). */
  async atEnd(): Promise<boolean> {
    if (this.#chunkOffset < this.#chunk.length) return false;
    return !(await this.#nextChunk());
  }

  /** Counts (without keeping) the bytes left, for a message about bytes after the trailer. */
  async drainCount(): Promise<number> {
    let count = this.#chunk.length - this.#chunkOffset;
    this.#chunkOffset = this.#chunk.length;
    while (await this.#nextChunk()) {
      count += this.#chunk.length;
      this.#chunkOffset = this.#chunk.length;
    }
    return count;
  }

  #take(lengthBytes: number): Buffer {
    const view = this.#chunk.subarray(this.#chunkOffset, this.#chunkOffset + lengthBytes);
    this.#chunkOffset += lengthBytes;
    this.#offsetBytes += lengthBytes;
    return view;
  }

  async #nextChunk(): Promise<boolean> {
    if (this.#ended) return false;
    for (;;) {
      const chunk = await this.#medium.read();
      if (chunk === null) {
        this.#ended = true;
        return false;
      }
      if (chunk.length === 0) continue;
      this.#chunk = chunk;
      this.#chunkOffset = 0;
      return true;
    }
  }
}
