/**
 * DirectFileWriter (src/backup/media/direct-file-writer.ts): page-aligned chunks at aligned
 * offsets go to the file with O_DIRECT, everything else through the page cache; either way the
 * file holds exactly the bytes handed over, in order. A full filesystem is NO_SPACE. Runs on the
 * test machine's /tmp (ext4 in CI), where O_DIRECT works; a small ext4 image, loop-mounted, fills up.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DirectFileWriter } from '../../src/backup/media/direct-file-writer.js';
import { acquireAlignedBuffer, isDirectIoReady, releaseAlignedBuffer } from '../../src/lib/aligned-buffers.js';
import { ThinError } from '../../src/lib/errors.js';

const KiB = 1024;
let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-direct-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Aligned buffers filled with random bytes (never given back: each test's data stays its own). */
function alignedRandom(count: number, bytesEach: number): Buffer[] {
  return Array.from({ length: count }, () => crypto.randomFillSync(acquireAlignedBuffer(bytesEach)));
}

async function openNew(name: string): Promise<DirectFileWriter> {
  return await DirectFileWriter.open(path.join(tmp, name), `file:${name}`, true);
}

describe('aligned buffers', () => {
  test('aligned buffers and aligned slices are recognised; ordinary buffers and unaligned slices are not', () => {
    const first = acquireAlignedBuffer(64 * KiB);
    const second = acquireAlignedBuffer(64 * KiB);
    assert.equal(first.length, 64 * KiB);
    assert.ok(isDirectIoReady(first) && isDirectIoReady(second));
    assert.ok(isDirectIoReady(first.subarray(4 * KiB, 12 * KiB)));
    assert.ok(!isDirectIoReady(first.subarray(512, 4608)), 'offset not a multiple of 4 KiB');
    assert.ok(!isDirectIoReady(first.subarray(0, 1000)), 'length not a multiple of 4 KiB');
    assert.ok(!isDirectIoReady(first.subarray(0, 0)), 'empty');
    assert.ok(!isDirectIoReady(Buffer.allocUnsafeSlow(64 * KiB)), 'an ordinary Buffer');
    assert.throws(() => acquireAlignedBuffer(1000), /64 KiB pages/);
    releaseAlignedBuffer(first);
    releaseAlignedBuffer(second);
  });

  test('buffers are recycled; a double release or a foreign buffer is refused', () => {
    const buffer = acquireAlignedBuffer(128 * KiB);
    releaseAlignedBuffer(buffer);
    const again = acquireAlignedBuffer(128 * KiB);
    assert.equal(again, buffer, 'the idle buffer is handed out again');
    assert.notEqual(acquireAlignedBuffer(128 * KiB), again, 'one in use is not');
    releaseAlignedBuffer(again);
    assert.throws(() => releaseAlignedBuffer(again), /released once/);
    assert.throws(() => releaseAlignedBuffer(Buffer.alloc(128 * KiB)), /only what was acquired/);
  });
});

describe('DirectFileWriter', () => {
  test('aligned chunks go direct, the unaligned tail through the cache; the file is exact', async () => {
    const writer = await openNew('a.tbk');
    // 40 chunks: gathered into writes of up to 4 MiB, two at a time.
    const chunks = [...alignedRandom(40, 256 * KiB), crypto.randomBytes(1234)];
    // Handed over all at once: the writer keeps them in order.
    await Promise.all(chunks.map((chunk) => writer.write(chunk)));
    await writer.close();
    const expected = Buffer.concat(chunks);
    assert.deepEqual(fs.readFileSync(path.join(tmp, 'a.tbk')), expected);
    assert.equal(writer.bytesWritten, expected.length);
    assert.equal(writer.directBytes, 40 * 256 * KiB);
  });

  test('after an unaligned offset chunks go through the cache until an aligned offset comes back', async () => {
    const writer = await openNew('b.tbk');
    const [a, b, c] = alignedRandom(3, 64 * KiB);
    const odd = crypto.randomBytes(4 * KiB - 100); // leaves the offset 100 bytes short of a page
    const pad = crypto.randomBytes(100); // back on a page boundary
    const chunks = [a!, odd, b!, pad, c!];
    for (const chunk of chunks) await writer.write(chunk);
    await writer.close();
    assert.deepEqual(fs.readFileSync(path.join(tmp, 'b.tbk')), Buffer.concat(chunks));
    // a and c are direct: c starts at 64K + (4K - 100) + 64K + 100 = 132 KiB. b, aligned memory at an unaligned offset, is not.
    assert.equal(writer.directBytes, 2 * 64 * KiB);
  });

  test('without O_DIRECT (a filesystem that refuses it) every chunk goes through the cache, exactly', async () => {
    const writer = await DirectFileWriter.open(path.join(tmp, 'f.tbk'), 'file:f.tbk', true, { directIo: false });
    const chunks = [...alignedRandom(12, 1024 * KiB), crypto.randomBytes(777)];
    await Promise.all(chunks.map((chunk) => writer.write(chunk)));
    await writer.close();
    assert.deepEqual(fs.readFileSync(path.join(tmp, 'f.tbk')), Buffer.concat(chunks));
    assert.equal(writer.directBytes, 0);
    assert.equal(writer.bytesWritten, 12 * 1024 * KiB + 777);
  });

  test('ordinary Buffers are written through the cache, exactly', async () => {
    const writer = await openNew('c.tbk');
    const chunks = [crypto.randomBytes(64 * KiB), crypto.randomBytes(64 * KiB), crypto.randomBytes(5)];
    for (const chunk of chunks) await writer.write(chunk);
    await writer.close();
    assert.deepEqual(fs.readFileSync(path.join(tmp, 'c.tbk')), Buffer.concat(chunks));
    assert.equal(writer.directBytes, 0);
  });

  test('one write at a time on a memory filesystem (tmpfs), two elsewhere; the file is exact either way', async () => {
    const shm = fs.mkdtempSync('/dev/shm/thinarray-direct-');
    try {
      const chunks = alignedRandom(12, 1024 * KiB);
      const writer = await DirectFileWriter.open(path.join(shm, 'in-memory.tbk'), 'file:in-memory.tbk', true);
      assert.equal(writer.writesInFlightMax, 1);
      await Promise.all(chunks.map((chunk) => writer.write(chunk)));
      await writer.close();
      assert.ok(fs.readFileSync(path.join(shm, 'in-memory.tbk')).equals(Buffer.concat(chunks)));
    } finally {
      fs.rmSync(shm, { recursive: true, force: true });
    }
    const memoryTypes = [0x01021994, 0x858458f6];
    if (!memoryTypes.includes(fs.statfsSync(tmp).type)) {
      const onDisk = await openNew('on-disk.tbk');
      assert.equal(onDisk.writesInFlightMax, 2);
      await onDisk.close();
    }
  });

  test('create refuses an existing file; otherwise the file is truncated first', async () => {
    const file = path.join(tmp, 'd.tbk');
    fs.writeFileSync(file, Buffer.alloc(300 * KiB, 7));
    await assert.rejects(DirectFileWriter.open(file, 'file:d.tbk', true), (error: unknown) => error instanceof ThinError && error.code === 'ALREADY_EXISTS');
    const writer = await DirectFileWriter.open(file, 'file:d.tbk', false);
    const [chunk] = alignedRandom(1, 64 * KiB);
    await writer.write(chunk!);
    await writer.close();
    assert.deepEqual(fs.readFileSync(file), chunk);
  });

  test('a write after close is refused; abort after close does nothing', async () => {
    const writer = await openNew('e.tbk');
    await writer.write(crypto.randomBytes(10));
    await writer.close();
    await assert.rejects(writer.write(crypto.randomBytes(10)), /write after close/);
    await writer.close(); // a second close does nothing (no fdatasync of a descriptor closed already)
    await writer.abort();
    assert.equal(fs.statSync(path.join(tmp, 'e.tbk')).size, 10);
  });

  test('a full filesystem is NO_SPACE, for direct and for cached writes, and close reports it', async () => {
    assert.equal(process.getuid?.(), 0, 'this test mounts a filesystem and must run as root (CI does)');
    const image = path.join(tmp, 'small.img');
    const mountPoint = path.join(tmp, 'small');
    fs.mkdirSync(mountPoint);
    execFileSync('truncate', ['-s', '8M', image]);
    execFileSync('mkfs.ext4', ['-q', '-F', image]);
    execFileSync('mount', ['-o', 'loop', image, mountPoint]);
    try {
      for (const [name, chunks] of [['direct', alignedRandom(16, 1024 * KiB)], ['cached', Array.from({ length: 16 }, () => crypto.randomBytes(1024 * KiB))]] as const) {
        const writer = await DirectFileWriter.open(path.join(mountPoint, name), name, true);
        let failure: unknown = null;
        for (const chunk of chunks) {
          try {
            await writer.write(chunk);
          } catch (error) {
            failure = error;
            break;
          }
        }
        // A cached write may only fail at the flush: close must say so then.
        if (failure === null) failure = await writer.close().then(() => null, (error: unknown) => error);
        else await writer.abort();
        assert.ok(failure instanceof ThinError, `${name}: ${String(failure)}`);
        assert.equal(failure.code, 'NO_SPACE', `${name}: ${failure.message}`);
        assert.match(failure.message, /the medium is full/);
        fs.unlinkSync(path.join(mountPoint, name));
      }
    } finally {
      execFileSync('umount', [mountPoint]);
    }
  });
});
