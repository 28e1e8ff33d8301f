/**
 * Page-aligned buffers, for O_DIRECT writes (which fail with EINVAL unless the memory, the file
 * offset and the length are all aligned to the device's logical block).
 *
 * Node has no aligned allocation and no way to read a Buffer's address. Large Buffers come from
 * malloc, which puts a 16-byte header before each mmap'd chunk, so they are never page-aligned.
 * The backing store of a WebAssembly.Memory, however, is reserved page by page by V8 (its own
 * pages are 64 KiB), so it always starts on a page boundary: the buffers here are slices of one.
 * A WeakSet remembers those backing stores, so a writer can tell an aligned buffer from any other
 * without trusting the caller.
 */
import { assert } from './assert.js';
import { KiB } from './sizes.js';

/** What O_DIRECT asks of memory, offsets and lengths: the largest logical block in use (4Kn disks). */
export const DIRECT_IO_ALIGNMENT_BYTES = 4 * KiB;

const WASM_PAGE_BYTES = 64 * KiB;
const alignedBackingStores = new WeakSet<ArrayBufferLike>();

/**
 * `count` zero-filled buffers of `bytesEach` (a multiple of 64 KiB), each starting on a page
 * boundary. They share one backing store, freed when the last of them is collected.
 */
export function allocateAlignedBuffers(count: number, bytesEach: number): Buffer[] {
  assert(Number.isSafeInteger(count) && count > 0, 'aligned buffers: count > 0');
  assert(Number.isSafeInteger(bytesEach) && bytesEach > 0 && bytesEach % WASM_PAGE_BYTES === 0, 'aligned buffers: size is a whole number of 64 KiB pages');
  const memory = new WebAssembly.Memory({ initial: (count * bytesEach) / WASM_PAGE_BYTES });
  alignedBackingStores.add(memory.buffer);
  const whole = Buffer.from(memory.buffer);
  return Array.from({ length: count }, (_, index) => whole.subarray(index * bytesEach, (index + 1) * bytesEach));
}

/** True when `buffer` can be written with O_DIRECT as it is: aligned memory, aligned length. */
export function isDirectIoReady(buffer: Uint8Array): boolean {
  return alignedBackingStores.has(buffer.buffer)
    && buffer.byteOffset % DIRECT_IO_ALIGNMENT_BYTES === 0
    && buffer.byteLength % DIRECT_IO_ALIGNMENT_BYTES === 0
    && buffer.byteLength > 0;
}
