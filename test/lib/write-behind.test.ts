/**
 * WriteBehind (src/lib/write-behind.ts): syncs start after firstBytes, then at doubling intervals
 * up to everyBytes; never two at once (bytes written during a sync count toward the next);
 * settled() waits for the one running; a failing sync does not break the writer.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { WriteBehind } from '../../src/lib/write-behind.js';

/** A sync the test finishes by hand, recording the byte count at which each one started. */
function manualSync(written: () => number): { sync: () => Promise<void>; startedAt: number[]; finish: () => void } {
  const startedAt: number[] = [];
  let finish: () => void = () => undefined;
  const sync = (): Promise<void> => {
    startedAt.push(written());
    return new Promise((resolve) => (finish = resolve));
  };
  return { sync, startedAt, finish: () => finish() };
}

describe('WriteBehind', () => {
  test('the interval starts at firstBytes and doubles up to everyBytes', async () => {
    let written = 0;
    const syncs = manualSync(() => written);
    const writeBehind = new WriteBehind(syncs.sync, 16, 2);
    for (let i = 0; i < 80; i++) {
      written += 1;
      writeBehind.note(1);
      syncs.finish(); // each sync ends at once: only the interval decides
      await writeBehind.settled();
    }
    // Started after 2, then 4, 8, 16, 16, 16 more bytes.
    assert.deepEqual(syncs.startedAt, [2, 6, 14, 30, 46, 62, 78]);
  });

  test('never two syncs at once; bytes written meanwhile count toward the next', async () => {
    let written = 0;
    const syncs = manualSync(() => written);
    const writeBehind = new WriteBehind(syncs.sync, 10, 10);
    for (let i = 0; i < 35; i++) {
      written += 1;
      writeBehind.note(1); // the first sync (at 10) is still running for all of these
    }
    assert.deepEqual(syncs.startedAt, [10]);
    syncs.finish();
    await writeBehind.settled();
    written += 1;
    writeBehind.note(1); // 26 bytes since the first started: the next starts now
    assert.deepEqual(syncs.startedAt, [10, 36]);
    syncs.finish();
    await writeBehind.settled();
  });

  test('without firstBytes the interval is fixed; a failing sync is left to the final one', async () => {
    let written = 0;
    const startedAt: number[] = [];
    const writeBehind = new WriteBehind(() => {
      startedAt.push(written);
      return Promise.reject(new Error('EIO'));
    }, 8);
    for (let i = 0; i < 20; i++) {
      written += 1;
      writeBehind.note(1);
      await writeBehind.settled();
    }
    assert.deepEqual(startedAt, [8, 16]);
  });

  test('intervals must be positive, the first no larger than the rest', () => {
    assert.throws(() => new WriteBehind(() => Promise.resolve(), 8, 16), /invariant/);
    assert.throws(() => new WriteBehind(() => Promise.resolve(), 8, 0), /invariant/);
  });
});
