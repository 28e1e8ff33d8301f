/**
 * RunReader (src/backup/run-reader.ts): a backup's runs come back in order whatever the mix of
 * synchronous and thread-pool reads; small runs are read synchronously until one is slow (a cache
 * miss), then the next runs go to the thread pool, read ahead within the bound, then a synchronous
 * probe again; large runs always go to the thread pool; a failed read surfaces at its place.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { RunReader, type ReadIo, type RunReaderOptions } from '../../src/backup/run-reader.js';

interface Run {
  index: number;
  bytes: number;
  /** A synchronous read of this run takes this long (a page-cache miss). */
  slowMs?: number;
  fails?: boolean;
}

const OPTIONS: RunReaderOptions = { inFlightMax: 3, syncBudgetMs: 2, slowReadsToSwitch: 2, threadPoolRunsAfterMiss: 5, syncRunBytesMax: 64 * 1024 };

/** A fake volume: each read returns a buffer naming its run; thread-pool reads finish out of order. */
function fakeReads(): { read: (run: Run, io: ReadIo) => Promise<Buffer>; log: Array<{ index: number; io: ReadIo }>; inFlightPeak: () => number } {
  const log: Array<{ index: number; io: ReadIo }> = [];
  let inFlight = 0;
  let peak = 0;
  const read = (run: Run, io: ReadIo): Promise<Buffer> => {
    log.push({ index: run.index, io });
    const data = Buffer.from(`run ${run.index}`);
    if (io === 'sync') {
      if (run.slowMs !== undefined) {
        const until = performance.now() + run.slowMs;
        while (performance.now() < until); // the synchronous read blocks, as a pread that goes to disk does
      }
      return run.fails ? Promise.reject(new Error(`read ${run.index} failed`)) : Promise.resolve(data);
    }
    inFlight++;
    peak = Math.max(peak, inFlight);
    return sleep(1 + ((run.index * 7) % 5)).then(() => {
      inFlight--;
      if (run.fails) throw new Error(`read ${run.index} failed`);
      return data;
    });
  };
  return { read, log, inFlightPeak: () => peak };
}

async function readAll(reader: RunReader<Run>): Promise<string[]> {
  const out: string[] = [];
  for (let data = reader.next(); data; data = reader.next()) out.push((await data).toString());
  return out;
}

const small = (index: number, extra: Partial<Run> = {}): Run => ({ index, bytes: 64 * 1024, ...extra });
const large = (index: number): Run => ({ index, bytes: 1024 * 1024 });
const names = (runs: Run[]): string[] => runs.map((run) => `run ${run.index}`);

describe('RunReader', () => {
  test('small runs that hit the page cache are all read synchronously, in order', async () => {
    const runs = Array.from({ length: 20 }, (_, i) => small(i));
    const fake = fakeReads();
    const reader = new RunReader(runs, (run) => run.bytes, fake.read, OPTIONS);
    assert.deepEqual(await readAll(reader), names(runs));
    assert.ok(fake.log.every((entry) => entry.io === 'sync'));
    assert.equal(reader.syncReads, 20);
    assert.equal(reader.threadPoolReads, 0);
  });

  test('large runs always go to the thread pool, at most inFlightMax ahead, and come back in order', async () => {
    const runs = Array.from({ length: 12 }, (_, i) => large(i));
    const fake = fakeReads();
    const reader = new RunReader(runs, (run) => run.bytes, fake.read, OPTIONS);
    assert.deepEqual(await readAll(reader), names(runs));
    assert.ok(fake.log.every((entry) => entry.io === 'thread-pool'));
    assert.equal(fake.inFlightPeak(), OPTIONS.inFlightMax);
  });

  test('one slow synchronous read alone changes nothing (the VM took the CPU, not a cache miss)', async () => {
    const runs = Array.from({ length: 12 }, (_, i) => small(i, i === 2 || i === 5 ? { slowMs: 10 } : {}));
    const fake = fakeReads();
    const reader = new RunReader(runs, (run) => run.bytes, fake.read, OPTIONS);
    assert.deepEqual(await readAll(reader), names(runs));
    assert.ok(fake.log.every((entry) => entry.io === 'sync'));
  });

  test('slow synchronous reads in a row send the next runs to the thread pool, then a synchronous probe follows', async () => {
    const runs = Array.from({ length: 16 }, (_, i) => small(i, i === 1 || i === 2 ? { slowMs: 10 } : {}));
    const fake = fakeReads();
    const reader = new RunReader(runs, (run) => run.bytes, fake.read, OPTIONS);
    assert.deepEqual(await readAll(reader), names(runs));
    const ioOf = (index: number): ReadIo => fake.log.find((entry) => entry.index === index)!.io;
    for (const index of [0, 1, 2]) assert.equal(ioOf(index), 'sync', `run ${index}`);
    for (let index = 3; index < 3 + OPTIONS.threadPoolRunsAfterMiss; index++) assert.equal(ioOf(index), 'thread-pool', `run ${index}`);
    for (let index = 3 + OPTIONS.threadPoolRunsAfterMiss; index < 16; index++) assert.equal(ioOf(index), 'sync', `run ${index}`);
    assert.ok(fake.inFlightPeak() <= OPTIONS.inFlightMax);
    assert.equal(fake.log.length, 16, 'every run read exactly once');
  });

  test('mixed sizes: large runs are read ahead while small ones stay synchronous', async () => {
    const runs = [small(0), large(1), large(2), small(3), small(4), large(5), small(6)];
    const fake = fakeReads();
    const reader = new RunReader(runs, (run) => run.bytes, fake.read, OPTIONS);
    assert.deepEqual(await readAll(reader), names(runs));
    for (const entry of fake.log) assert.equal(entry.io, runs[entry.index]!.bytes > OPTIONS.syncRunBytesMax ? 'thread-pool' : 'sync', `run ${entry.index}`);
  });

  test('a failed read rejects at its own place; settle() waits for the reads still in flight', async () => {
    const runs = Array.from({ length: 10 }, (_, i) => ({ ...large(i), fails: i === 4 }));
    const fake = fakeReads();
    const reader = new RunReader(runs, (run) => run.bytes, fake.read, OPTIONS);
    const got: string[] = [];
    await assert.rejects(async () => {
      for (let data = reader.next(); data; data = reader.next()) got.push((await data).toString());
    }, /read 4 failed/);
    assert.deepEqual(got, names(runs.slice(0, 4)));
    await reader.settle();
    assert.equal(fake.inFlightPeak() <= OPTIONS.inFlightMax, true);
  });

  test('nothing to read: next() is undefined at once', () => {
    const reader = new RunReader<Run>([], (run) => run.bytes, fakeReads().read, OPTIONS);
    assert.equal(reader.next(), undefined);
  });
});
