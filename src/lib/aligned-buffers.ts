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
 *
 * The buffers are recycled, never freed: each WebAssembly.Memory reserves gigabytes of address
 * space for its guard regions (V8 caps the total near 1 TiB), and a fresh one per backup made the
 * collector run to give them back. Memory held is therefore the peak in use at once — a few
 * staging chunks per running backup.
 */
import { assert } from './assert.js';
import { KiB, MiB } from './sizes.js';

/** What O_DIRECT asks of memory, offsets and lengths: the largest logical block in use (4Kn disks). */
export const DIRECT_IO_ALIGNMENT_BYTES = 4 * KiB;

const WASM_PAGE_BYTES = 64 * KiB;
/** Buffers are carved from memories of at least this size (one memory for small buffers). */
const SLAB_BYTES_MIN = 16 * MiB;

const alignedBackingStores = new WeakSet<ArrayBufferLike>();
/** Idle buffers by size. */
const idleBySize = new Map<number, Buffer[]>();
/** Buffers handed out and not given back: release() takes only these, and each once. */
const outstanding = new Set<Buffer>();

/** A page-aligned buffer of `bytes` (a whole number of 64 KiB pages), contents undefined. Give it back with releaseAlignedBuffer. */
export function acquireAlignedBuffer(bytes: number): Buffer {
  assert(Number.isSafeInteger(bytes) && bytes > 0 && bytes % WASM_PAGE_BYTES === 0, 'aligned buffers: size is a whole number of 64 KiB pages');
  let idle = idleBySize.get(bytes);
  if (!idle) idleBySize.set(bytes, (idle = []));
  if (idle.length === 0) idle.push(...carveSlab(bytes));
  const buffer = idle.pop()!;
  outstanding.add(buffer);
  return buffer;
}

/** Gives back a buffer from acquireAlignedBuffer, whole; it must not be used afterwards. */
export function releaseAlignedBuffer(buffer: Buffer): void {
  assert(outstanding.delete(buffer), 'aligned buffers: released once, and only what was acquired');
  idleBySize.get(buffer.length)!.push(buffer);
}

/** Buffers handed out and not given back (tests check that writers give back what they took). */
export function alignedBuffersInUse(): number {
  return outstanding.size;
}

/** True when `buffer` can be written with O_DIRECT as it is: aligned memory, aligned length. */
export function isDirectIoReady(buffer: Uint8Array): boolean {
  return alignedBackingStores.has(buffer.buffer)
    && buffer.byteOffset % DIRECT_IO_ALIGNMENT_BYTES === 0
    && buffer.byteLength % DIRECT_IO_ALIGNMENT_BYTES === 0
    && buffer.byteLength > 0;
}

/**
 * Page-aligned memory that other threads can see (a data mover's ring): a shared
 * WebAssembly.Memory, so the same alignment argument holds. Keep it for the owner's lifetime
 * (see above on address space); Buffers over it pass isDirectIoReady.
 */
export function createAlignedSharedMemory(bytes: number): SharedArrayBuffer {
  assert(Number.isSafeInteger(bytes) && bytes > 0 && bytes % WASM_PAGE_BYTES === 0, 'aligned shared memory: a whole number of 64 KiB pages');
  const pages = bytes / WASM_PAGE_BYTES;
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  const buffer = memory.buffer as unknown as SharedArrayBuffer;
  alignedBackingStores.add(buffer);
  return buffer;
}

function carveSlab(bytesEach: number): Buffer[] {
  const count = Math.max(1, Math.floor(SLAB_BYTES_MIN / bytesEach));
  const memory = new WebAssembly.Memory({ initial: (count * bytesEach) / WASM_PAGE_BYTES });
  alignedBackingStores.add(memory.buffer);
  const whole = Buffer.from(memory.buffer);
  return Array.from({ length: count }, (_, index) => whole.subarray(index * bytesEach, (index + 1) * bytesEach));
}
