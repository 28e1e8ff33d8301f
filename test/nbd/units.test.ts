/** Unit tests of the NBD building blocks: meta-context registry, byte queue, metrics hook, the test device. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KiB } from '../../src/lib/sizes.js';
import { ByteQueue } from '../../src/nbd/byte-queue.js';
import { baseAllocation, MetaContextRegistry, type MetaContext } from '../../src/nbd/meta-contexts.js';
import * as P from '../../src/nbd/protocol.js';
import { MemoryDevice } from './memory-device.js';
import { RawClient, startServer } from './helpers.js';

const dirty: MetaContext = {
  name: 'thinarray:dirty',
  isAvailable: (device) => !device.readOnly,
  describe: (_device, _offset, length) => [{ lengthBytes: length, flags: 1 }],
};

describe('MetaContextRegistry', () => {
  const rw = new MemoryDevice({ sizeBytes: 1 << 20 });
  const ro = new MemoryDevice({ sizeBytes: 1 << 20, readOnly: true });
  const registry = new MetaContextRegistry([baseAllocation, dirty]);

  it('matches exact names, namespace wildcards in LIST only, and ignores unknown names', () => {
    const names = (contexts: MetaContext[]) => contexts.map((c) => c.name);
    assert.deepEqual(names(registry.all(rw)), ['base:allocation', 'thinarray:dirty']);
    assert.deepEqual(names(registry.all(ro)), ['base:allocation'], 'availability is per device');
    assert.deepEqual(names(registry.match(rw, ['thinarray:'], true)), ['thinarray:dirty']);
    assert.deepEqual(names(registry.match(rw, ['thinarray:'], false)), []);
    assert.deepEqual(names(registry.match(rw, ['thinarray:dirty', 'base:allocation', 'base:allocation'], false)), ['base:allocation', 'thinarray:dirty']);
    assert.deepEqual(names(registry.match(rw, ['base:nothing', 'qemu:dirty-bitmap:x'], true)), []);
  });

  it('refuses duplicate and malformed names', () => {
    assert.throws(() => registry.register(dirty));
    assert.throws(() => registry.register({ ...dirty, name: 'nocolon' }));
    assert.throws(() => registry.register({ ...dirty, name: 'leafless:' }));
  });

  it('base:allocation maps hole/zero to NBD state flags and honours the descriptor cap', async () => {
    const device = new MemoryDevice({ sizeBytes: 8 * 64 * KiB });
    await device.write(64 * KiB, Buffer.alloc(1), { fua: false });
    await device.write(3 * 64 * KiB, Buffer.alloc(1), { fua: false });
    const all = baseAllocation.describe(device, 0, 8 * 64 * KiB, 100);
    assert.deepEqual(all.map((d) => d.flags), [3, 0, 3, 0, 3]);
    assert.equal(all.reduce((sum, d) => sum + d.lengthBytes, 0), 8 * 64 * KiB);
    assert.equal(baseAllocation.describe(device, 0, 8 * 64 * KiB, 2).length, 2);
  });

  it('a registered context is offered by the server and answers BLOCK_STATUS next to base:allocation', async () => {
    const device = new MemoryDevice({ sizeBytes: 1 << 20 });
    const server = await startServer({ disk: device }, { metaContexts: new MetaContextRegistry([baseAllocation, dirty]) });
    try {
      const client = await RawClient.connect(server.port);
      await client.go('disk', { structured: true, metaContexts: ['base:allocation', 'thinarray:dirty'] });
      client.sendRequest(P.NBD_CMD_BLOCK_STATUS, 1n, 0, 4096);
      const first = (await client.readChunk())!;
      const second = (await client.readChunk())!;
      assert.deepEqual([first.flags, second.flags], [0, P.NBD_REPLY_FLAG_DONE], 'only the last chunk is DONE');
      assert.deepEqual([first.payload.readUInt32BE(0), second.payload.readUInt32BE(0)], [1, 2]);
      assert.deepEqual([second.payload.readUInt32BE(4), second.payload.readUInt32BE(8)], [4096, 1]);
      client.destroy();
    } finally {
      await server.close();
    }
  });
});

describe('ByteQueue', () => {
  it('takes across chunk boundaries, skips, and drains the rest', () => {
    const queue = new ByteQueue();
    queue.push(Buffer.from('abc'));
    queue.push(Buffer.from('defgh'));
    queue.push(Buffer.from('ij'));
    assert.equal(queue.take(2).toString(), 'ab');
    assert.equal(queue.take(4).toString(), 'cdef');
    assert.equal(queue.skip(1), 1);
    assert.deepEqual(queue.drain().map((b) => b.toString()), ['h', 'ij']);
    assert.equal(queue.length, 0);
    assert.equal(queue.skip(5), 0);
    assert.throws(() => queue.take(1));
  });
});

describe('metrics hook', () => {
  it('observes every request with its command, bytes and errno; a throwing observer breaks nothing', async () => {
    const seen: [string, number, number][] = [];
    const device = new MemoryDevice({ sizeBytes: 1 << 20 });
    const server = await startServer(
      { disk: device },
      {
        metrics: {
          observeRequest: (command, bytes, seconds, errno) => {
            assert.ok(seconds >= 0);
            seen.push([command, bytes, errno]);
            if (command === 'flush') throw new Error('observer bug');
          },
        },
      },
    );
    try {
      const client = await RawClient.connect(server.port);
      await client.go('disk');
      client.sendRequest(P.NBD_CMD_WRITE, 1n, 0, 512, 0, Buffer.alloc(512, 1));
      assert.equal((await client.readSimpleReply())?.errno, 0);
      client.sendRequest(P.NBD_CMD_READ, 2n, 0, 4096);
      assert.equal((await client.readSimpleReply(4096))?.errno, 0);
      client.sendRequest(P.NBD_CMD_FLUSH, 3n, 0, 0);
      assert.equal((await client.readSimpleReply())?.errno, 0);
      client.sendRequest(P.NBD_CMD_READ, 4n, 1 << 20, 1);
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_EINVAL);
      assert.deepEqual(seen, [['write', 512, 0], ['read', 4096, 0], ['flush', 0, 0], ['read', 0, P.NBD_EINVAL]]);
      client.destroy();
    } finally {
      await server.close();
    }
  });
});

describe('MemoryDevice (the test double itself)', () => {
  it('trims only whole extents, zeroes with and without unmap, and refuses slow fast-zeroes', async () => {
    const device = new MemoryDevice({ sizeBytes: 4 * 64 * KiB + 100 });
    await device.write(0, [Buffer.alloc(64 * KiB, 1), Buffer.alloc(3 * 64 * KiB + 100, 2)], { fua: false });
    assert.deepEqual(device.mappedExtents, [0, 1, 2, 3, 4]);
    await device.trim(100, 2 * 64 * KiB, { fua: false });
    assert.deepEqual(device.mappedExtents, [0, 2, 3, 4], 'only extent 1 is wholly inside');
    await assert.rejects(device.writeZeroes(0, 10, { fua: false, mayUnmap: true, fastOnly: true }), /zeroing/);
    await device.writeZeroes(4 * 64 * KiB, 100, { fua: false, mayUnmap: true, fastOnly: true });
    assert.deepEqual(device.mappedExtents, [0, 2, 3], 'the short last extent is whole');
    await device.writeZeroes(64 * KiB, 64 * KiB, { fua: false, mayUnmap: false, fastOnly: false });
    assert.deepEqual(device.mappedExtents, [0, 1, 2, 3], 'NO_HOLE allocates');
    assert.ok((await device.read(64 * KiB - 1, 2)).equals(Buffer.from([1, 0])));
    assert.deepEqual(device.blockStatus(0, 4 * 64 * KiB + 100), [
      { lengthBytes: 4 * 64 * KiB, hole: false, zero: false },
      { lengthBytes: 100, hole: true, zero: true },
    ]);
  });
});
