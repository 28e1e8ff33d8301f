/** The read buffer pool: exact lengths, recycling only on release, bounded, ignores strangers. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { acquireBuffer, releaseBuffer } from '../../src/lib/buffer-pool.js';

test('pooled buffers are recycled only after release and have the asked length', () => {
  const first = acquireBuffer(1_000_000);
  assert.equal(first.length, 1_000_000);
  const second = acquireBuffer(1_000_000);
  assert.notEqual(first.buffer, second.buffer, 'an outstanding buffer is never handed out twice');
  releaseBuffer(first);
  releaseBuffer(first); // a second release is ignored
  const third = acquireBuffer(900_000);
  assert.equal(third.buffer, first.buffer, 'a released buffer of the same class is reused');
  assert.equal(third.length, 900_000);
  const fourth = acquireBuffer(900_000);
  assert.notEqual(fourth.buffer, first.buffer, 'released once, handed out once');
  releaseBuffer(Buffer.alloc(10)); // not from the pool: ignored
  const small = acquireBuffer(4096);
  assert.equal(small.length, 4096);
});
