/** A FIFO of received socket chunks for the handshake, where copying a few bytes does not matter. */

export class ByteQueue {
  private chunks: Buffer[] = [];
  /** Bytes already consumed from chunks[0]. */
  private headOffset = 0;
  private queuedBytes = 0;

  get length(): number {
    return this.queuedBytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.queuedBytes += chunk.length;
  }

  /** Removes and returns exactly `count` bytes (a view when they sit in one chunk). */
  take(count: number): Buffer {
    if (count > this.queuedBytes) throw new RangeError(`take(${count}) with ${this.queuedBytes} queued`);
    const head = this.chunks[0];
    if (head !== undefined && head.length - this.headOffset >= count) {
      const view = head.subarray(this.headOffset, this.headOffset + count);
      this.advance(count);
      return view;
    }
    const out = Buffer.allocUnsafe(count);
    let filled = 0;
    while (filled < count) {
      const chunk = this.chunks[0]!;
      const n = Math.min(count - filled, chunk.length - this.headOffset);
      chunk.copy(out, filled, this.headOffset, this.headOffset + n);
      filled += n;
      this.advance(n);
    }
    return out;
  }

  /** Drops up to `count` bytes; returns how many were dropped. */
  skip(count: number): number {
    let skipped = 0;
    while (skipped < count && this.queuedBytes > 0) {
      const chunk = this.chunks[0]!;
      const n = Math.min(count - skipped, chunk.length - this.headOffset);
      this.advance(n);
      skipped += n;
    }
    return skipped;
  }

  /** Everything still queued, as views, emptying the queue (hand-over to the transmission phase). */
  drain(): Buffer[] {
    const out = this.chunks.map((chunk, i) => (i === 0 ? chunk.subarray(this.headOffset) : chunk));
    this.chunks = [];
    this.headOffset = 0;
    this.queuedBytes = 0;
    return out.filter((chunk) => chunk.length > 0);
  }

  private advance(count: number): void {
    this.headOffset += count;
    this.queuedBytes -= count;
    if (this.headOffset === this.chunks[0]!.length) {
      this.chunks.shift();
      this.headOffset = 0;
    }
  }
}
