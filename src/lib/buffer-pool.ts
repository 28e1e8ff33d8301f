/**
 * Recycled buffers for large reads. A fresh 1 MiB Buffer costs a page fault per 4 KiB page (the
 * kernel zeroes each one) plus garbage-collector work once it is dropped; on the sequential read
 * path that was a whole extra pass over memory per request. Buffers come in power-of-two size
 * classes and go back to their class only when the one holder that may release them (the NBD
 * reply, once the socket has taken the data) says so; a buffer that is never released is simply
 * collected like any other.
 */
import { assert } from './assert.js';
import { LIMITS } from './limits.js';

const classes = new Map<number, Buffer[]>();
/** Backing buffer of each pooled view handed out and not yet released. */
const outstanding = new WeakMap<ArrayBufferLike, Buffer>();
let pooledBytes = 0;

function sizeClass(lengthBytes: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(lengthBytes, LIMITS.pooledBufferBytesMin)));
}

/** A buffer of exactly `lengthBytes` (contents undefined), recycled when possible. */
export function acquireBuffer(lengthBytes: number): Buffer {
  if (lengthBytes < LIMITS.pooledBufferBytesMin || lengthBytes > LIMITS.pooledBufferBytesMax) return Buffer.allocUnsafe(lengthBytes);
  const size = sizeClass(lengthBytes);
  let backing = classes.get(size)?.pop();
  if (backing) pooledBytes -= size;
  else backing = Buffer.allocUnsafeSlow(size);
  assert(backing.byteLength === size && pooledBytes >= 0, 'pooled buffer has its class size');
  outstanding.set(backing.buffer, backing);
  return backing.subarray(0, lengthBytes);
}

/** Gives a buffer from acquireBuffer back; anything else is ignored. Never use it afterwards. */
export function releaseBuffer(view: Buffer): void {
  const backing = outstanding.get(view.buffer);
  if (!backing) return;
  outstanding.delete(view.buffer);
  if (pooledBytes + backing.byteLength > LIMITS.pooledBuffersBytesMax) return; // let it be collected
  let free = classes.get(backing.byteLength);
  if (!free) classes.set(backing.byteLength, (free = []));
  free.push(backing);
  pooledBytes += backing.byteLength;
}
