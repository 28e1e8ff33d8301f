/**
 * Extent allocation is first fit: freed space is taken before space never written, so a pool
 * disk that is a sparse file grows only as far as the data it held at its peak. A freed extent
 * is still never handed out before its free is committed (quarantine).
 */
import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openStorageArray, type StorageArray } from '../../src/array/array.js';
import { Bitmap } from '../../src/lib/bitmap.js';
import { silentLogger } from '../../src/lib/log.js';
import { KiB, MiB } from '../../src/lib/sizes.js';

const EXTENT_BYTES = 64 * KiB;

describe('Bitmap.findClear', () => {
  test('finds the first clear bit at or after fromBit, also inside the start word', () => {
    const bitmap = new Bitmap(100);
    for (const bit of [0, 1, 2, 3, 4, 5, 40]) bitmap.set(bit);
    assert.equal(bitmap.findClear(0), 6);
    // Bits 6..9 are clear but below fromBit: not returned (they were, when the start word was scanned whole).
    assert.equal(bitmap.findClear(10), 10);
    assert.equal(bitmap.findClear(40), 41);
  });

  test('wraps around once to the clear bits below fromBit', () => {
    const bitmap = new Bitmap(64);
    for (let bit = 0; bit < 64; bit++) if (bit !== 3) bitmap.set(bit);
    assert.equal(bitmap.findClear(10), 3);
    assert.equal(bitmap.findClear(63), 3);
    bitmap.set(3);
    assert.equal(bitmap.findClear(10), -1);
  });

  test('from the end or past it, starts again at bit 0', () => {
    const bitmap = new Bitmap(100);
    for (let bit = 0; bit < 100; bit++) if (bit !== 5 && bit !== 97) bitmap.set(bit);
    assert.equal(bitmap.findClear(100), 5);
    assert.equal(bitmap.findClear(128), 5);
    const full64 = new Bitmap(64);
    for (let bit = 0; bit < 64; bit++) if (bit !== 5 && bit !== 40) full64.set(bit);
    assert.equal(full64.findClear(64), 5);
  });
});

describe('pool allocation', () => {
  let home: string;
  let array: StorageArray;
  const poolFile = (): string => path.join(home, 'pool', 'disk0.img');

  beforeEach(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-allocation-'));
    // No background commits: a test decides when frees are committed.
    array = await openStorageArray({ home, logger: silentLogger(), poolFileBytes: 256 * MiB, commitIntervalMs: 3_600_000 });
  });
  afterEach(async () => {
    await array.close().catch(() => undefined);
    fs.rmSync(home, { recursive: true, force: true });
  });

  /** What fill() wrote, per volume and extent. */
  const written = new Map<string, Buffer[]>();

  /**
   * Creates `name` with `count` extents of random data (nothing a compressing filesystem could
   * shrink) and returns the physical extents behind them.
   */
  async function fill(name: string, count: number): Promise<number[]> {
    await array.volumeCreate({ name, sizeBytes: count * EXTENT_BYTES });
    const volume = array.volume(name);
    const data = Array.from({ length: count }, () => randomBytes(EXTENT_BYTES));
    written.set(name, data);
    for (let extent = 0; extent < count; extent++) await volume.write(extent * EXTENT_BYTES, data[extent]!, { fua: false });
    return Array.from({ length: count }, (_, extent) => volume.map.lookup(extent));
  }

  const sorted = (extents: readonly number[]): number[] => [...extents].sort((a, b) => a - b);

  test('extents freed and committed are handed out again before new ones', async () => {
    // More than one bitmap word (32 extents) each, so that a search from a word's start cannot pass for first fit.
    const first = await fill('a', 80);
    await fill('keep', 40); // allocated after a's: a's extents are the lowest
    await array.volumeDelete('a'); // frees and commits
    const second = await fill('b', 80);
    assert.deepEqual(sorted(second), sorted(first));
    // b reads its own data, not a's: every extent was written whole.
    const volume = array.volume('b');
    for (let extent = 0; extent < 80; extent++) assert.ok((await volume.read(extent * EXTENT_BYTES, EXTENT_BYTES)).equals(written.get('b')![extent]!), `extent ${extent}`);
  });

  test('a freed extent is not handed out while its free is being committed, nor while I/O still pins it', async () => {
    const low = await fill('low', 40);
    const first = await fill('a', 80);
    await array.volumeDelete('low'); // free space below a's: the search runs across a's extents
    const pinned = first[0]!;
    array.pool.pin(pinned); // as an I/O issued before the free would
    await array.volume('a').trim(0, 80 * EXTENT_BYTES, { fua: false });
    // The commit captures the frees at once (bits cleared, extents quarantined) and persists them later.
    const commit = array.sync();
    const during = array.pool.allocate(120);
    assert.deepEqual(during.filter((extent) => first.includes(extent)), [], 'none reused while their free is being committed');
    assert.deepEqual(sorted(during.slice(0, 40)), sorted(low), "low's extents first, then past a's");
    await commit;
    const afterCommit = array.pool.allocate(79);
    assert.deepEqual(sorted(afterCommit), sorted(first.slice(1)), 'then they are the first taken, all but the pinned one');
    assert.notDeepEqual(array.pool.allocate(1), [pinned], 'the pinned one is not handed out');
    array.pool.unpin(pinned);
    assert.deepEqual(array.pool.allocate(1), [pinned], 'once unpinned it is the lowest free extent');
  });

  test('a sparse pool file grows only as far as its peak data, through repeated delete and rewrite', async () => {
    const rounds = 6;
    const extentsPerRound = 64; // 4 MiB
    for (let round = 0; round < rounds; round++) {
      await fill(`v${round}`, extentsPerRound);
      await array.sync();
      await array.volumeDelete(`v${round}`);
    }
    const allocatedBytes = fs.statSync(poolFile()).blocks * 512;
    // Next fit put every round on new extents: 6 × 4 MiB. First fit reuses the first round's.
    assert.ok(allocatedBytes < 2 * extentsPerRound * EXTENT_BYTES, `pool file holds ${allocatedBytes} bytes after ${rounds} rounds of ${extentsPerRound * EXTENT_BYTES}`);
    assert.ok(allocatedBytes >= extentsPerRound * EXTENT_BYTES, `pool file holds ${allocatedBytes} bytes: less than one round's data`);
  });
});
