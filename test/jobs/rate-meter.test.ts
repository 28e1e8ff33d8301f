/** RateMeter and etaSeconds with a fake clock. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { etaSeconds, RateMeter } from '../../src/jobs/rate-meter.js';

test('rate over the window: follows a change of speed and keeps memory bounded', () => {
  let nowMs = 0;
  const meter = new RateMeter(10_000, () => nowMs, 0);
  assert.equal(meter.rateBytesPerSec(0), 0, 'no time has passed');
  let doneBytes = 0;
  for (let tick = 0; tick < 1000; tick++) {
    nowMs += 10; // 100 updates a second for 10 s at 1 MB/s
    doneBytes += 10_000;
    meter.record(doneBytes);
  }
  assert.equal(meter.rateBytesPerSec(doneBytes), 1_000_000);
  for (let tick = 0; tick < 1000; tick++) {
    nowMs += 10; // then 10 s at 100 kB/s
    doneBytes += 1000;
    meter.record(doneBytes);
  }
  // Samples are ~250 ms apart, so the interpolated window start can be off by part of one
  // interval at the old speed: at most a few percent here.
  const rate = meter.rateBytesPerSec(doneBytes);
  assert.ok(rate >= 100_000 && rate <= 106_000, `rate ${rate} reflects only the last window`);
});

test('a meter resumed at a byte count measures only new progress', () => {
  let nowMs = 5000;
  const meter = new RateMeter(10_000, () => nowMs, 1_000_000);
  nowMs += 2000;
  meter.record(1_004_000);
  assert.equal(meter.rateBytesPerSec(1_004_000), 2000);
});

test('etaSeconds', () => {
  assert.equal(etaSeconds(0, 0, 100), null, 'unknown total');
  assert.equal(etaSeconds(0, 1000, 0), null, 'no progress');
  assert.equal(etaSeconds(250, 1000, 100), 8, 'rounded up');
  assert.equal(etaSeconds(2000, 1000, 100), 0);
});
