/** The NBD server driven by real clients (qemu-io, qemu-img, nbdinfo, nbdcopy) against in-memory exports. */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { KiB, MiB } from '../../src/lib/sizes.js';
import { MemoryDevice } from './memory-device.js';
import { patternBytes, qemuIo, qemuIoFailed, run, startServer, type TestServer } from './helpers.js';

/** Not a multiple of the extent size, so the short last extent is exercised. */
const SIZE = 4 * MiB + 1000;

describe('nbd server with real clients', () => {
  let server: TestServer;
  let dir: string;
  const device = (name: string, options: { readOnly?: boolean; sizeBytes?: number } = {}) => {
    const d = new MemoryDevice({ name, sizeBytes: options.sizeBytes ?? SIZE, readOnly: options.readOnly ?? false });
    server.exports.set(name, d);
    return d;
  };

  before(async () => {
    server = await startServer({});
    dir = await mkdtemp(join(tmpdir(), 'nbd-interop-'));
  });
  after(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('qemu-io writes a pattern and reads it back', async () => {
    const d = device('basic');
    const result = await qemuIo(server.uri('basic'), ['write -P 0xab 0 64k', 'read -P 0xab 0 64k']);
    assert.equal(qemuIoFailed(result), false, result.stdout + result.stderr);
    assert.deepEqual(d.mappedExtents, [0]);
    const verify = await qemuIo(server.uri('basic'), ['read -P 0xac 0 64k']);
    assert.match(verify.stdout, /Pattern verification failed/, 'a wrong pattern must be detected');
  });

  it('unaligned writes across extent boundaries and at the end match a reference file (qemu-img compare)', async () => {
    device('unaligned');
    const reference = join(dir, 'reference.raw');
    await writeFile(reference, Buffer.alloc(0));
    await run('truncate', ['-s', String(SIZE), reference]);
    const writes = [
      'write -P 0x11 65000 1000', // crosses the first extent boundary
      'write -P 0x22 131071 3',
      'write -P 0x33 200000 300000', // spans several extents, unaligned both ends
      'write -P 0x44 4194304 1000', // exactly the short last extent
      `write -P 0x55 ${SIZE - 1} 1`, // last byte
    ];
    const onExport = await qemuIo(server.uri('unaligned'), writes);
    assert.equal(qemuIoFailed(onExport), false, onExport.stdout + onExport.stderr);
    const onFile = await run('qemu-io', ['-f', 'raw', reference, ...writes.flatMap((w) => ['-c', w])]);
    assert.equal(onFile.code, 0, onFile.stderr);
    const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', reference, server.uri('unaligned')]);
    assert.equal(compare.code, 0, compare.stdout + compare.stderr);
    const reads = await qemuIo(server.uri('unaligned'), ['read -P 0x11 65000 1000', 'read -P 0x33 200000 300000', `read -P 0x55 ${SIZE - 1} 1`, 'read -P 0 0 65000']);
    assert.equal(qemuIoFailed(reads), false, reads.stdout);
  });

  it('refuses a write past the end of the export', async () => {
    const d = device('end');
    const result = await qemuIo(server.uri('end'), [`write -P 0x66 ${SIZE - 512} 1024`]);
    assert.equal(qemuIoFailed(result), true, 'write past the end must fail');
    assert.equal(d.log.filter((r) => r.op === 'write').length, 0);
  });

  it('nbdinfo --json reports size, flags and block sizes', async () => {
    device('info');
    const result = await run('nbdinfo', ['--json', server.uri('info')]);
    assert.equal(result.code, 0, result.stderr);
    const info = JSON.parse(result.stdout);
    const e = info.exports[0];
    assert.equal(info.protocol, 'newstyle-fixed');
    assert.equal(info.structured, true);
    assert.equal(e['export-size'], SIZE);
    assert.equal(e.is_read_only, false);
    for (const flag of ['can_cache', 'can_df', 'can_fast_zero', 'can_flush', 'can_fua', 'can_multi_conn', 'can_trim', 'can_zero']) {
      assert.equal(e[flag], true, flag);
    }
    assert.equal(e.block_size_minimum, 1);
    assert.equal(e.block_size_preferred, 4096);
    assert.equal(e.block_size_maximum, 32 * MiB);
    assert.equal(e.description, 'test export info');
    assert.deepEqual(e.contexts, ['base:allocation']);
  });

  it('nbdinfo --map shows exactly the written extents as data', async () => {
    device('map');
    const result = await qemuIo(server.uri('map'), ['write -P 1 64k 4k', 'write -P 2 1m 128k', 'write -P 3 4194304 1000']);
    assert.equal(qemuIoFailed(result), false);
    const map = await run('nbdinfo', ['--map', '--json', server.uri('map')]);
    assert.equal(map.code, 0, map.stderr);
    const extents = JSON.parse(map.stdout).map((e: { offset: number; length: number; description: string }) => [e.offset, e.length, e.description]);
    assert.deepEqual(extents, [
      [0, 64 * KiB, 'hole,zero'],
      [64 * KiB, 64 * KiB, 'data'],
      [128 * KiB, MiB - 128 * KiB, 'hole,zero'],
      [MiB, 128 * KiB, 'data'],
      [MiB + 128 * KiB, 4 * MiB - MiB - 128 * KiB, 'hole,zero'],
      [4 * MiB, 1000, 'data'],
    ]);
  });

  it('nbdinfo --list lists the exports', async () => {
    device('listed-a');
    device('listed-b');
    const result = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${server.port}`]);
    assert.equal(result.code, 0, result.stderr);
    const names = JSON.parse(result.stdout).exports.map((e: { 'export-name': string }) => e['export-name']);
    assert.ok(names.includes('listed-a') && names.includes('listed-b'), names.join(','));
  });

  it('discard unmaps whole extents and the range reads back as zeros', async () => {
    const d = device('discard');
    const result = await qemuIo(server.uri('discard'), ['write -P 0x77 0 256k', 'discard 64k 128k', 'read -P 0 64k 128k', 'read -P 0x77 0 64k', 'read -P 0x77 192k 64k']);
    assert.equal(qemuIoFailed(result), false, result.stdout + result.stderr);
    assert.deepEqual(d.mappedExtents, [0, 3]);
    assert.ok(d.log.some((r) => r.op === 'trim' && r.offsetBytes === 64 * KiB && r.lengthBytes === 128 * KiB));
  });

  it('write_zeroes without unmap keeps extents (NO_HOLE); with -u unmaps them', async () => {
    const d = device('zeroes');
    const write = await qemuIo(server.uri('zeroes'), ['write -P 0x88 0 512k']);
    assert.equal(qemuIoFailed(write), false);
    const noUnmap = await qemuIo(server.uri('zeroes'), ['write -z 0 128k', 'read -P 0 0 128k']);
    assert.equal(qemuIoFailed(noUnmap), false, noUnmap.stdout + noUnmap.stderr);
    const zeroNoHole = d.log.find((r) => r.op === 'writeZeroes')!;
    assert.equal((zeroNoHole.options as { mayUnmap: boolean }).mayUnmap, false);
    assert.deepEqual(d.mappedExtents, [0, 1, 2, 3, 4, 5, 6, 7]);
    const unmap = await qemuIo(server.uri('zeroes'), ['write -z -u 256k 128k', 'read -P 0 256k 128k', 'read -P 0x88 128k 128k']);
    assert.equal(qemuIoFailed(unmap), false, unmap.stdout + unmap.stderr);
    const zeroUnmap = d.log.filter((r) => r.op === 'writeZeroes').at(-1)!;
    assert.equal((zeroUnmap.options as { mayUnmap: boolean }).mayUnmap, true);
    assert.deepEqual(d.mappedExtents, [0, 1, 2, 3, 6, 7]);
  });

  it('nbdcopy round trip file → export → file keeps the checksum', async () => {
    device('copy');
    const source = join(dir, 'source.raw');
    const target = join(dir, 'target.raw');
    // Data, a hole, more data, unaligned tail.
    const content = Buffer.concat([patternBytes(MiB + 123, 1), Buffer.alloc(MiB), patternBytes(2 * MiB - 123 + 1000, 2)]);
    assert.equal(content.length, SIZE);
    await writeFile(source, content);
    const toExport = await run('nbdcopy', ['--connections=4', source, server.uri('copy')]);
    assert.equal(toExport.code, 0, toExport.stderr);
    const toFile = await run('nbdcopy', [server.uri('copy'), target]);
    assert.equal(toFile.code, 0, toFile.stderr);
    const digest = (data: Buffer) => createHash('sha256').update(data).digest('hex');
    assert.equal(digest(await readFile(target)), digest(content));
  });

  it('a read-only export refuses writes and still serves reads', async () => {
    const d = device('readonly', { readOnly: true });
    const info = JSON.parse((await run('nbdinfo', ['--json', server.uri('readonly')])).stdout).exports[0];
    assert.equal(info.is_read_only, true);
    const write = await qemuIo(server.uri('readonly'), ['write -P 1 0 4k']);
    assert.equal(qemuIoFailed(write), true, 'a write to a read-only export must fail');
    const read = await qemuIo(server.uri('readonly'), ['read -P 0 0 64k'], ['-r']);
    assert.equal(qemuIoFailed(read), false, read.stdout + read.stderr);
    assert.equal(d.log.filter((r) => r.op === 'write').length, 0);
  });

  it('refuses an unknown export name and the empty name', async () => {
    const unknown = await run('nbdinfo', [server.uri('no-such-export')]);
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /no-such-export|unknown|not available/i);
    const qemu = await qemuIo(server.uri('no-such-export'), ['read 0 4k']);
    assert.equal(qemuIoFailed(qemu), true);
    const empty = await run('nbdinfo', [`nbd://127.0.0.1:${server.port}/`]);
    assert.notEqual(empty.code, 0);
  });

  it('serves two connections at once (multi-conn)', async () => {
    device('multi');
    const [a, b] = await Promise.all([
      qemuIo(server.uri('multi'), ['write -P 0xa1 0 1m', 'flush', 'read -P 0xa1 0 1m']),
      qemuIo(server.uri('multi'), ['write -P 0xb2 2m 1m', 'flush', 'read -P 0xb2 2m 1m']),
    ]);
    assert.equal(qemuIoFailed(a), false, a.stdout + a.stderr);
    assert.equal(qemuIoFailed(b), false, b.stdout + b.stderr);
    const cross = await qemuIo(server.uri('multi'), ['read -P 0xa1 0 1m', 'read -P 0xb2 2m 1m']);
    assert.equal(qemuIoFailed(cross), false, cross.stdout);
  });

  it('fio with the nbd engine runs random reads at queue depth 32', async () => {
    device('fio');
    const result = await run('fio', [
      '--name=check', '--ioengine=nbd', `--uri=${server.uri('fio')}`, '--rw=randrw', '--bs=4k', '--iodepth=32',
      '--size=4m', '--io_size=8m', '--output-format=json',
    ], 60_000);
    assert.equal(result.code, 0, result.stderr);
    const job = JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))).jobs[0];
    assert.equal(job.error, 0);
    assert.ok(job.read.io_bytes > 0 && job.write.io_bytes > 0);
  });
});
