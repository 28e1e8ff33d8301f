/**
 * A failed fdatasync of a pool disk is sticky: Linux reports a writeback error to a descriptor
 * once, so a later fdatasync that succeeds proves nothing about the pages that failed. After one
 * failure — in a background write-behind sync nobody waits on, or in a commit's own sync — every
 * later sync (FLUSH, FUA, commit) fails until the daemon restarts.
 */
import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openStorageArray, type StorageArray } from '../../src/array/array.js';
import { silentLogger } from '../../src/lib/log.js';
import { MiB } from '../../src/lib/sizes.js';
import type { PoolDisk } from '../../src/pool/pool.js';

/** No descriptor has this number: fdatasync on it fails with EBADF, standing in for an EIO. */
const BAD_FD = 1_000_000;

describe('pool sync failures', () => {
  let home: string;
  let array: StorageArray;

  beforeEach(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-sync-failure-'));
    array = await openStorageArray({ home, logger: silentLogger(), poolFileBytes: 64 * MiB });
    await array.volumeCreate({ name: 'v', sizeBytes: 8 * MiB });
  });
  afterEach(async () => {
    await array.close().catch(() => undefined);
    fs.rmSync(home, { recursive: true, force: true });
  });

  /** Runs `during` with the volume's disk descriptor replaced by a bad one, then puts the real one back. */
  async function withFailingDisk(during: () => Promise<void>): Promise<void> {
    await array.volume('v').write(0, Buffer.alloc(64 * 1024, 7), { fua: false });
    const disk = array.pool.locate(array.volume('v').map.lookup(0)).disk as PoolDisk & { fd: number };
    const realFd = disk.fd;
    disk.fd = BAD_FD;
    try {
      await during();
    } finally {
      disk.fd = realFd;
    }
  }

  test('a failed write-behind sync is not thrown there, but every later sync fails with it', async () => {
    await withFailingDisk(() => array.pool.syncBehind());
    // The descriptor is good again and its fdatasync would succeed: the earlier failure still counts.
    await assert.rejects(array.pool.syncDisks(), /earlier fdatasync of pool disk .* failed/);
    await assert.rejects(array.pool.syncDisks(), /earlier fdatasync/, 'sticky: not reported once only');
    await assert.rejects(array.volume('v').write(0, Buffer.alloc(4096, 1), { fua: true }), /fdatasync/, 'a FUA write cannot be acknowledged');
  });

  test("a commit's own failed sync fails it, and the next sync too", async () => {
    await withFailingDisk(async () => {
      await assert.rejects(array.pool.syncDisks(), /fdatasync of a pool disk/);
    });
    await assert.rejects(array.pool.syncDisks(), /earlier fdatasync/);
  });

  test('without a failure, syncs succeed (the check itself does not fail)', async () => {
    await array.volume('v').write(0, Buffer.alloc(64 * 1024, 7), { fua: false });
    await array.pool.syncBehind();
    await array.pool.syncDisks();
    await array.volume('v').write(0, Buffer.alloc(4096, 1), { fua: true });
  });
});
