/**
 * RunReader (src/backup/run-reader.ts): a backup's runs come back in order whatever the mix of
 * synchronous and thread-pool reads; small runs are read synchronously until enough of the recent
 * ones are slow (cache misses), then the next runs go to the thread pool, read ahead within the
 * bound, then a synchronous probe again; large runs always go to the thread pool; a failed read
 * surfaces at its place. Synchronous reads are timed on a virtual clock, so nothing here depends
 * on how busy the machine is.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { RunReader, type ReadIo, type RunReaderOptions } from '../../src/backup/run-reader.js';

interface Run {
  index: number;
  bytes: number;
  /** A synchronous read of this run takes this long on the virtual clock (a page-cache miss). */
  slowMs?: number;
  /** A thread-pool read of this run takes this long (default: 1–5 ms, so they finish out of order). */
  delayMs?: number;
  fails?: boolean;
}

/** A fake volume: each read returns a buffer naming its run; thread-pool reads finish out of order. */
function fakeReads(): {
  read: (run: Run, io: ReadIo) => Promise<Buffer>;
  log: Array<{ index: number; io: ReadIo }>;
  inFlight: () => number;
  inFlightPeak: () => number;
  options: RunReaderOptions;
} {
  const log: Array<{ index: number; io: ReadIo }> = [];
  let clockMs = 0;
  let inFlight = 0;
  let peak = 0;
  const read = (run: Run, io: ReadIo): Promise<Buffer> => {
    log.push({ index: run.index, io });
    const data = Buffer.from(`run ${run.index}`);
    if (io === 'sync') {
      clockMs += run.slowMs ?? 0.05; // the synchronous read blocks for this long
      return run.fails ? Promise.reject(new Error(`read ${run.index} failed`)) : Promise.resolve(data);
    }
    inFlight++;
    peak = Math.max(peak, inFlight);
    return sleep(run.delayMs ?? 1 + ((run.index * 7) % 5)).then(() => {
      inFlight--;
      if (run.fails) throw new Error(`read ${run.index} failed`);
      return data;
    });
  };
  const options: RunReaderOptions = {
    inFlightMax: 3, syncBudgetMs: 2, slowReadsToSwitch: 2, slowReadsWindow: 4, threadPoolRunsAfterMiss: 5, syncRunBytesMax: 64 * 1024,
    nowMs: () => clockMs,
  };
  return { read, log, inFlight: () => inFlight, inFlightPeak: () => peak, options };
}

async function readAll(reader: RunReader<Run>): Promise<string[]> {
  const out: string[] = [];
  for (let data = reader.next(); data; data = reader.next()) out.push((await data).toString());
  return out;
}

const small = (index: number, extra: Partial<Run> = {}): Run => ({ index, bytes: 64 * 1024, ...extra });
const large = (index: number): Run => ({ index, bytes: 1024 * 1024 });
const names = (runs: Run[]): string[] => runs.map((run) => `run ${run.index}`);

/** A RunReader over `runs` with fake reads (fakeReads): the reader and the fake that records them. */
function readerOver(runs: Run[]): { reader: RunReader<Run>; fake: ReturnType<typeof fakeReads> } {
  const fake = fakeReads();
  return { reader: new RunReader(runs, (run) => run.bytes, fake.read, fake.options), fake };
}

describe('RunReader', () => {
  test('small runs that hit the page cache are all read synchronously, in order', async () => {
    const runs = Array.from({ length: 20 }, (_, i) => small(i));
    const { reader, fake } = readerOver(runs);
    assert.deepEqual(await readAll(reader), names(runs));
    assert.ok(fake.log.every((entry) => entry.io === 'sync'));
    assert.equal(reader.syncReads, 20);
    assert.equal(reader.threadPoolReads, 0);
  });

  test('large runs always go to the thread pool, at most inFlightMax ahead, and come back in order', async () => {
    const runs = Array.from({ length: 12 }, (_, i) => large(i));
    const { reader, fake } = readerOver(runs);
    assert.deepEqual(await readAll(reader), names(runs));
    assert.ok(fake.log.every((entry) => entry.io === 'thread-pool'));
    assert.equal(fake.inFlightPeak(), fake.options.inFlightMax);
  });

  test('slow reads further apart than the window change nothing (the VM took the CPU, not a cache miss)', async () => {
    const runs = Array.from({ length: 16 }, (_, i) => small(i, i === 2 || i === 6 || i === 10 ? { slowMs: 10 } : {}));
    const { reader, fake } = readerOver(runs);
    assert.deepEqual(await readAll(reader), names(runs));
    assert.ok(fake.log.every((entry) => entry.io === 'sync'));
  });

  /** 16 small runs, the given ones slow: runs 0–2 must be synchronous, the switch after run 2, a probe after the thread-pool runs. */
  async function expectSwitchAfterRun2(slowRuns: number[]): Promise<void> {
    const runs = Array.from({ length: 16 }, (_, i) => small(i, slowRuns.includes(i) ? { slowMs: 10 } : {}));
    const { reader, fake } = readerOver(runs);
    assert.deepEqual(await readAll(reader), names(runs));
    const ioOf = (index: number): ReadIo => fake.log.find((entry) => entry.index === index)!.io;
    const probeAt = 3 + fake.options.threadPoolRunsAfterMiss;
    for (let index = 0; index < 16; index++) assert.equal(ioOf(index), index >= 3 && index < probeAt ? 'thread-pool' : 'sync', `run ${index}`);
    assert.ok(fake.inFlightPeak() <= fake.options.inFlightMax);
    assert.equal(fake.log.length, 16, 'every run read exactly once');
  }

  test('slow synchronous reads send the next runs to the thread pool, then a synchronous probe follows', async () => {
    await expectSwitchAfterRun2([1, 2]);
  });

  test('slow reads alternating with fast ones (a partly cached volume) also switch', async () => {
    await expectSwitchAfterRun2([0, 2]);
  });

  test('mixed sizes: large runs are read ahead while small ones stay synchronous', async () => {
    const runs = [small(0), large(1), large(2), small(3), small(4), large(5), small(6)];
    const { reader, fake } = readerOver(runs);
    assert.deepEqual(await readAll(reader), names(runs));
    for (const entry of fake.log) assert.equal(entry.io, runs[entry.index]!.bytes > fake.options.syncRunBytesMax ? 'thread-pool' : 'sync', `run ${entry.index}`);
  });

  test('a failed read rejects at its own place; settle() waits for the reads still in flight', async () => {
    // The failing read ends at once, the ones started after it take long: they are surely still running.
    const runs = Array.from({ length: 10 }, (_, i) => ({ ...large(i), ...(i === 4 ? { fails: true, delayMs: 1 } : i > 4 ? { delayMs: 50 } : {}) }));
    const { reader, fake } = readerOver(runs);
    const got: string[] = [];
    await assert.rejects(async () => {
      for (let data = reader.next(); data; data = reader.next()) got.push((await data).toString());
    }, /read 4 failed/);
    assert.deepEqual(got, names(runs.slice(0, 4)));
    assert.ok(fake.inFlight() > 0, 'reads started ahead are still running when the failure surfaces');
    await reader.settle();
    assert.equal(fake.inFlight(), 0, 'settle() waited for every read started ahead');
  });

  test('a failed synchronous read rejects at its place too', async () => {
    const runs = Array.from({ length: 6 }, (_, i) => small(i, i === 3 ? { fails: true } : {}));
    const { reader } = readerOver(runs);
    const got: string[] = [];
    await assert.rejects(async () => {
      for (let data = reader.next(); data; data = reader.next()) got.push((await data).toString());
    }, /read 3 failed/);
    assert.deepEqual(got, names(runs.slice(0, 3)));
  });

  test('nothing to read: next() is undefined at once', () => {
    const { reader } = readerOver([]);
    assert.equal(reader.next(), undefined);
  });
});
