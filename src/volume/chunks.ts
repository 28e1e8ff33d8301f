/** Views into a payload that arrived as several chunks, without copying. */
import { assert } from '../lib/assert.js';

export function totalBytes(chunks: readonly Buffer[]): number {
  let total = 0;
  for (const chunk of chunks) total += chunk.byteLength;
  return total;
}

/** The bytes [startBytes, startBytes+lengthBytes) of the concatenated chunks, as subarray views. */
export function sliceChunks(chunks: readonly Buffer[], startBytes: number, lengthBytes: number): Buffer[] {
  const views: Buffer[] = [];
  let skip = startBytes;
  let remaining = lengthBytes;
  for (const chunk of chunks) {
    if (remaining === 0) break;
    if (skip >= chunk.byteLength) {
      skip -= chunk.byteLength;
      continue;
    }
    const take = Math.min(chunk.byteLength - skip, remaining);
    views.push(chunk.subarray(skip, skip + take));
    remaining -= take;
    skip = 0;
  }
  assert(remaining === 0, 'slice must lie inside the chunks');
  return views;
}

/** Copies chunks into `target` starting at `targetOffsetBytes`. */
export function copyChunks(chunks: readonly Buffer[], target: Buffer, targetOffsetBytes: number): void {
  let position = targetOffsetBytes;
  for (const chunk of chunks) {
    chunk.copy(target, position);
    position += chunk.byteLength;
  }
}
