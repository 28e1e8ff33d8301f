/** Malformed and hostile input over raw sockets; after each case a clean qemu-io session must still work. */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import { ThinError } from '../../src/lib/errors.js';
import { LIMITS } from '../../src/lib/limits.js';
import { KiB, MiB } from '../../src/lib/sizes.js';
import * as P from '../../src/nbd/protocol.js';
import { MemoryDevice } from './memory-device.js';
import { infoPayload, metaContextPayload, patternBytes, qemuIo, qemuIoFailed, RawClient, startServer, type TestServer } from './helpers.js';

const SIZE = 4 * MiB;

describe('nbd protocol edge cases and malformed input', () => {
  let server: TestServer;
  let disk: MemoryDevice;
  let slow: MemoryDevice;
  let sessions = 0;
  const clients: RawClient[] = [];
  const open = async () => {
    const client = await RawClient.connect(server.port);
    clients.push(client);
    return client;
  };

  before(async () => {
    disk = new MemoryDevice({ name: 'disk', sizeBytes: SIZE });
    slow = new MemoryDevice({ name: 'slow', sizeBytes: SIZE, delayMs: 30 });
    server = await startServer({ disk, slow, ro: new MemoryDevice({ name: 'ro', sizeBytes: SIZE, readOnly: true }) });
  });

  after(async () => {
    for (const client of clients) client.destroy();
    await server.close();
  });

  /** After every case: a real client still writes and reads back on the same server. */
  afterEach(async () => {
    const seed = 1 + (sessions++ % 250);
    const offset = seed * 8 * KiB;
    const result = await qemuIo(server.uri('disk'), [`write -P ${seed} ${offset} 8k`, `read -P ${seed} ${offset} 8k`]);
    assert.equal(qemuIoFailed(result), false, result.stdout + result.stderr);
  });

  describe('handshake', () => {
    it('disconnects a client without FIXED_NEWSTYLE', async () => {
      const client = await open();
      await client.greet(0);
      assert.equal(await client.waitClosed(), true);
    });

    it('disconnects a client with unknown flags', async () => {
      const client = await open();
      await client.greet(P.NBD_FLAG_C_FIXED_NEWSTYLE | 0x80);
      assert.equal(await client.waitClosed(), true);
    });

    it('disconnects on a bad option magic', async () => {
      const client = await open();
      await client.greet();
      client.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
      assert.equal(await client.waitClosed(), true);
    });

    it('answers an oversized option TOO_BIG and keeps the session', async () => {
      const client = await open();
      await client.greet();
      client.sendOption(P.NBD_OPT_INFO, Buffer.alloc(LIMITS.nbdOptionBytesMax + 1, 0x41));
      const reply = await client.readOptionReply();
      assert.equal(reply?.type, P.NBD_REP_ERR_TOO_BIG);
      client.sendOption(P.NBD_OPT_LIST);
      const replies = await client.readOptionReplies();
      assert.equal(replies.at(-1)!.type, P.NBD_REP_ACK);
    });

    it('disconnects on an absurd option length', async () => {
      const client = await open();
      await client.greet();
      client.sendOption(P.NBD_OPT_INFO, Buffer.alloc(0), 0xffff_fff0);
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_TOO_BIG);
      assert.equal(await client.waitClosed(), true);
    });

    it('refuses an INFO whose length covers more than it parses (INVALID, never the next option)', async () => {
      const client = await open();
      await client.greet();
      // The surplus looks like an ABORT option: it must not be acted on.
      const surplus = Buffer.alloc(16);
      surplus.writeBigUInt64BE(P.NBD_IHAVEOPT, 0);
      surplus.writeUInt32BE(P.NBD_OPT_ABORT, 8);
      client.sendOption(P.NBD_OPT_INFO, Buffer.concat([infoPayload('disk', []), surplus]));
      const replies = await client.readOptionReplies();
      assert.equal(replies.length, 1);
      assert.equal(replies[0]!.type, P.NBD_REP_ERR_INVALID);
      client.sendOption(P.NBD_OPT_GO, infoPayload('disk', [P.NBD_INFO_NAME, P.NBD_INFO_DESCRIPTION, P.NBD_INFO_BLOCK_SIZE]));
      const go = await client.readOptionReplies();
      assert.equal(go.at(-1)!.type, P.NBD_REP_ACK);
      const infoTypes = go.filter((r) => r.type === P.NBD_REP_INFO).map((r) => r.data.readUInt16BE(0)).sort();
      assert.deepEqual(infoTypes, [P.NBD_INFO_EXPORT, P.NBD_INFO_NAME, P.NBD_INFO_DESCRIPTION, P.NBD_INFO_BLOCK_SIZE]);
      const blockSize = go.find((r) => r.type === P.NBD_REP_INFO && r.data.readUInt16BE(0) === P.NBD_INFO_BLOCK_SIZE)!.data;
      assert.deepEqual([blockSize.readUInt32BE(2), blockSize.readUInt32BE(6), blockSize.readUInt32BE(10)], [1, 4096, LIMITS.nbdPayloadBytesMax]);
      client.sendRequest(P.NBD_CMD_DISC, 1n, 0, 0);
      assert.equal(await client.waitClosed(), true);
    });

    it('refuses INFO whose name length runs past the option, and short INFO', async () => {
      const client = await open();
      await client.greet();
      const lying = infoPayload('disk', []);
      lying.writeUInt32BE(1000, 0);
      client.sendOption(P.NBD_OPT_INFO, lying);
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_INVALID);
      client.sendOption(P.NBD_OPT_GO, Buffer.alloc(3));
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_INVALID);
      client.sendOption(P.NBD_OPT_GO, infoPayload('', []));
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_UNKNOWN);
      client.sendOption(P.NBD_OPT_GO, infoPayload('nope', []));
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_UNKNOWN);
    });

    it('refuses SET_META_CONTEXT whose lengths lie, then accepts an honest one', async () => {
      const client = await open();
      await client.greet();
      client.sendOption(P.NBD_OPT_SET_META_CONTEXT, metaContextPayload('disk', ['base:allocation']));
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_INVALID, 'needs structured replies first');
      client.sendOption(P.NBD_OPT_STRUCTURED_REPLY);
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ACK);

      const countLies = metaContextPayload('disk', ['base:allocation']);
      countLies.writeUInt32BE(2, 8);
      const queryLengthLies = metaContextPayload('disk', ['base:allocation']);
      queryLengthLies.writeUInt32BE(400, 12);
      const surplus = Buffer.concat([metaContextPayload('disk', ['base:allocation']), Buffer.from('IHAVEOPT')]);
      const hugeCount = metaContextPayload('disk', []);
      hugeCount.writeUInt32BE(0xffff_ffff, 8);
      for (const payload of [countLies, queryLengthLies, surplus, hugeCount]) {
        client.sendOption(P.NBD_OPT_SET_META_CONTEXT, payload);
        const replies = await client.readOptionReplies();
        assert.equal(replies.length, 1);
        assert.equal(replies[0]!.type, P.NBD_REP_ERR_INVALID);
      }
      client.sendOption(P.NBD_OPT_SET_META_CONTEXT, metaContextPayload('disk', ['base:allocation', 'x-other:thing']));
      const ok = await client.readOptionReplies();
      assert.deepEqual(ok.map((r) => r.type), [P.NBD_REP_META_CONTEXT, P.NBD_REP_ACK]);
      assert.equal(ok[0]!.data.subarray(4).toString(), 'base:allocation');
      client.sendOption(P.NBD_OPT_GO, infoPayload('disk', []));
      assert.equal((await client.readOptionReplies()).at(-1)!.type, P.NBD_REP_ACK);
      client.sendRequest(P.NBD_CMD_BLOCK_STATUS, 7n, 0, 64 * KiB);
      const chunk = await client.readChunk();
      assert.equal(chunk?.type, P.NBD_REPLY_TYPE_BLOCK_STATUS);
    });

    it('lists meta contexts for the empty query and base:, ignores unknown namespaces, selects nothing with base:', async () => {
      const client = await open();
      await client.greet();
      client.sendOption(P.NBD_OPT_STRUCTURED_REPLY);
      await client.readOptionReplies();
      const names = async (option: number, queries: string[]) => {
        client.sendOption(option, metaContextPayload('disk', queries));
        const replies = await client.readOptionReplies();
        assert.equal(replies.at(-1)!.type, P.NBD_REP_ACK);
        return replies.filter((r) => r.type === P.NBD_REP_META_CONTEXT).map((r) => r.data.subarray(4).toString());
      };
      assert.deepEqual(await names(P.NBD_OPT_LIST_META_CONTEXT, []), ['base:allocation']);
      assert.deepEqual(await names(P.NBD_OPT_LIST_META_CONTEXT, ['base:']), ['base:allocation']);
      assert.deepEqual(await names(P.NBD_OPT_LIST_META_CONTEXT, ['x-unknown:foo']), []);
      assert.deepEqual(await names(P.NBD_OPT_SET_META_CONTEXT, ['base:']), []);
      client.sendOption(P.NBD_OPT_LIST_META_CONTEXT, metaContextPayload('disk', ['no-colon']));
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_INVALID);
      const tooMany = Array.from({ length: LIMITS.nbdMetaContextQueriesMax + 1 }, () => 'base:allocation');
      client.sendOption(P.NBD_OPT_SET_META_CONTEXT, metaContextPayload('disk', tooMany));
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_TOO_BIG);
    });

    it('answers unknown options, EXTENDED_HEADERS and STARTTLS (no TLS configured) with UNSUP', async () => {
      const client = await open();
      await client.greet();
      for (const option of [4242, P.NBD_OPT_EXTENDED_HEADERS, P.NBD_OPT_STARTTLS, P.NBD_OPT_PEEK_EXPORT]) {
        client.sendOption(option, Buffer.from('xyz'));
        const reply = await client.readOptionReply();
        assert.equal(reply?.type, P.NBD_REP_ERR_UNSUP, `option ${option}`);
        assert.equal(reply?.option, option);
      }
      client.sendOption(P.NBD_OPT_LIST, Buffer.from('x'));
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_INVALID);
      client.sendOption(P.NBD_OPT_STRUCTURED_REPLY, Buffer.from('x'));
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_INVALID);
      client.sendOption(P.NBD_OPT_ABORT);
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ACK);
      assert.equal(await client.waitClosed(), true);
    });

    it('EXPORT_NAME: unknown or empty name closes; a known one honours NO_ZEROES', async () => {
      for (const name of ['nope', '']) {
        const client = await open();
        await client.greet();
        client.sendOption(P.NBD_OPT_EXPORT_NAME, Buffer.from(name));
        assert.equal(await client.waitClosed(), true);
      }
      for (const noZeroes of [true, false]) {
        const client = await open();
        await client.greet(P.NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? P.NBD_FLAG_C_NO_ZEROES : 0));
        client.sendOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
        const reply = await client.read(noZeroes ? 10 : 134);
        assert.equal(Number(reply!.readBigUInt64BE(0)), SIZE);
        assert.ok((reply!.readUInt16BE(8) & P.NBD_FLAG_HAS_FLAGS) !== 0);
        client.sendRequest(P.NBD_CMD_READ, 5n, 0, 512);
        const read = await client.readSimpleReply(512);
        assert.equal(read?.errno, 0);
        assert.equal(read?.handle, 5n);
        assert.equal(read?.data?.length, 512);
        assert.equal(client.socket.readableLength, 0);
      }
    });

    it('cuts a handshake that goes on too long', async () => {
      const quick = await startServer({ disk }, { handshakeTimeoutMs: 100 });
      try {
        const client = await RawClient.connect(quick.port);
        await client.greet();
        assert.equal(await client.waitClosed(2000), true);
      } finally {
        await quick.close();
      }
    });
  });

  describe('transmission', () => {
    it('simple replies: errors for out-of-range, oversize, empty, unknown command and bad flags', async () => {
      const client = await open();
      await client.go('disk');
      const cases: [number, number, number, number, number][] = [
        // type, offset, length, flags, expected errno
        [P.NBD_CMD_READ, SIZE - 512, 1024, 0, P.NBD_EINVAL],
        [P.NBD_CMD_READ, 2 ** 53, 512, 0, P.NBD_EINVAL],
        [P.NBD_CMD_READ, 0, LIMITS.nbdPayloadBytesMax + 1, 0, P.NBD_EINVAL],
        [P.NBD_CMD_READ, 0, 0, 0, P.NBD_EINVAL],
        [P.NBD_CMD_READ, 0, 512, P.NBD_CMD_FLAG_DF, P.NBD_EINVAL], // DF without structured replies
        [P.NBD_CMD_READ, 0, 512, P.NBD_CMD_FLAG_REQ_ONE, P.NBD_EINVAL],
        [P.NBD_CMD_TRIM, SIZE, 1, 0, P.NBD_EINVAL],
        [P.NBD_CMD_WRITE_ZEROES, SIZE - 1, 2, 0, P.NBD_ENOSPC],
        [P.NBD_CMD_CACHE, SIZE + 1, 1, 0, P.NBD_EINVAL],
        [P.NBD_CMD_FLUSH, 1, 0, 0, P.NBD_EINVAL],
        [P.NBD_CMD_BLOCK_STATUS, 0, 512, 0, P.NBD_EINVAL], // no meta context
        [P.NBD_CMD_RESIZE, 0, 0, 0, P.NBD_EINVAL],
        [42, 0, 512, 0, P.NBD_EINVAL],
        [P.NBD_CMD_FLUSH, 0, 0, 0, 0],
        [P.NBD_CMD_CACHE, 0, 4096, P.NBD_CMD_FLAG_FUA, 0],
      ];
      let handle = 100n;
      for (const [type, offset, length, flags, errno] of cases) {
        client.sendRequest(type, ++handle, offset, length, flags);
        const reply = await client.readSimpleReply();
        assert.equal(reply?.handle, handle);
        assert.equal(reply?.errno, errno, `type ${type} offset ${offset} length ${length} flags ${flags}`);
      }
    });

    it('writes past the end get ENOSPC, oversize writes EINVAL, and their payloads are consumed', async () => {
      const client = await open();
      await client.go('disk');
      client.sendRequest(P.NBD_CMD_WRITE, 1n, SIZE - 100, 200, 0, Buffer.alloc(200, 0xee));
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_ENOSPC);
      const oversize = LIMITS.nbdPayloadBytesMax + 4096;
      client.sendRequest(P.NBD_CMD_WRITE, 2n, 0, oversize, 0, Buffer.alloc(oversize, 0xee));
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_EINVAL);
      client.sendRequest(P.NBD_CMD_WRITE, 3n, 0, 0);
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_EINVAL);
      const data = patternBytes(3000, 9);
      client.sendRequest(P.NBD_CMD_WRITE, 4n, SIZE - 3000, 3000, P.NBD_CMD_FLAG_FUA, data);
      assert.equal((await client.readSimpleReply())?.errno, 0);
      client.sendRequest(P.NBD_CMD_READ, 5n, SIZE - 3000, 3000);
      const read = await client.readSimpleReply(3000);
      assert.deepEqual(read?.data, data);
      const write = disk.log.filter((r) => r.op === 'write').at(-1)!;
      assert.deepEqual(write.options, { fua: true });
      assert.equal(disk.log.filter((r) => r.op === 'write' && r.offsetBytes === 0 && r.lengthBytes === oversize).length, 0);
    });

    it('disconnects a write whose payload is not worth reading', async () => {
      const client = await open();
      await client.go('disk');
      client.sendRequest(P.NBD_CMD_WRITE, 1n, 0, 0xffff_ffff);
      assert.equal(await client.waitClosed(), true);
    });

    it('disconnects on a bad request magic', async () => {
      const client = await open();
      await client.go('disk');
      client.sendRequest(P.NBD_CMD_READ, 1n, 0, 512, 0, undefined, 0x12345678);
      assert.equal(await client.waitClosed(), true);
    });

    it('a read-only export answers EPERM to write, trim and write_zeroes', async () => {
      const client = await open();
      await client.go('ro');
      client.sendRequest(P.NBD_CMD_WRITE, 1n, 0, 512, 0, Buffer.alloc(512));
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_EPERM);
      client.sendRequest(P.NBD_CMD_TRIM, 2n, 0, 512);
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_EPERM);
      client.sendRequest(P.NBD_CMD_WRITE_ZEROES, 3n, 0, 512);
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_EPERM);
      client.sendRequest(P.NBD_CMD_READ, 4n, 0, 512);
      assert.equal((await client.readSimpleReply(512))?.errno, 0);
    });

    it('structured replies: READ as one OFFSET_DATA chunk, errors as ERROR chunks with a message', async () => {
      const client = await open();
      const { flags } = await client.go('disk', { structured: true });
      assert.ok((flags & P.NBD_FLAG_SEND_DF) !== 0);
      const data = patternBytes(5000, 3);
      client.sendRequest(P.NBD_CMD_WRITE, 1n, 70_000, 5000, 0, data);
      assert.equal((await client.readChunk())?.errno, 0);
      client.sendRequest(P.NBD_CMD_READ, 2n, 70_000, 5000, P.NBD_CMD_FLAG_DF);
      const chunk = (await client.readChunk())!;
      assert.equal(chunk.type, P.NBD_REPLY_TYPE_OFFSET_DATA);
      assert.equal(chunk.flags, P.NBD_REPLY_FLAG_DONE);
      assert.equal(chunk.handle, 2n);
      assert.equal(Number(chunk.payload.readBigUInt64BE(0)), 70_000);
      assert.deepEqual(chunk.payload.subarray(8), data);
      client.sendRequest(P.NBD_CMD_READ, 3n, SIZE, 1);
      const error = (await client.readChunk())!;
      assert.equal(error.type, P.NBD_REPLY_TYPE_ERROR);
      assert.equal(error.flags, P.NBD_REPLY_FLAG_DONE);
      assert.equal(error.errno, P.NBD_EINVAL);
      const messageLength = error.payload.readUInt16BE(4);
      assert.ok(messageLength > 0 && messageLength === error.payload.length - 6);
    });

    it('block status: extents from the device, REQ_ONE, and out-of-range', async () => {
      const device = new MemoryDevice({ name: 'bs', sizeBytes: SIZE });
      server.exports.set('bs', device);
      await device.write(64 * KiB, Buffer.alloc(10), { fua: false });
      await device.write(3 * 64 * KiB, Buffer.alloc(10), { fua: false });
      const client = await open();
      await client.go('bs', { structured: true, metaContexts: ['base:allocation'] });
      const descriptors = (chunk: { payload: Buffer }) => {
        const out: [number, number][] = [];
        for (let at = 4; at < chunk.payload.length; at += 8) out.push([chunk.payload.readUInt32BE(at), chunk.payload.readUInt32BE(at + 4)]);
        return out;
      };
      const HZ = P.NBD_STATE_HOLE | P.NBD_STATE_ZERO;
      client.sendRequest(P.NBD_CMD_BLOCK_STATUS, 1n, 1000, 5 * 64 * KiB);
      const all = (await client.readChunk())!;
      assert.equal(all.type, P.NBD_REPLY_TYPE_BLOCK_STATUS);
      assert.equal(all.flags, P.NBD_REPLY_FLAG_DONE);
      assert.equal(all.payload.readUInt32BE(0), 1, 'context id from SET_META_CONTEXT');
      assert.deepEqual(descriptors(all), [
        [64 * KiB - 1000, HZ],
        [64 * KiB, 0],
        [64 * KiB, HZ],
        [64 * KiB, 0],
        [64 * KiB + 1000, HZ],
      ]);
      client.sendRequest(P.NBD_CMD_BLOCK_STATUS, 2n, 0, 4 * 64 * KiB, P.NBD_CMD_FLAG_REQ_ONE);
      assert.deepEqual(descriptors((await client.readChunk())!), [[64 * KiB, HZ]]);
      client.sendRequest(P.NBD_CMD_BLOCK_STATUS, 3n, 0, 100, P.NBD_CMD_FLAG_REQ_ONE);
      assert.deepEqual(descriptors((await client.readChunk())!), [[100, HZ]]);
      client.sendRequest(P.NBD_CMD_BLOCK_STATUS, 4n, SIZE - 10, 11);
      assert.equal((await client.readChunk())?.errno, P.NBD_EINVAL);
    });

    it('maps device errors: UNSUPPORTED fast zero → ENOTSUP, NO_SPACE → ENOSPC, anything else → EIO', async () => {
      const device = new MemoryDevice({ name: 'errors', sizeBytes: SIZE });
      server.exports.set('errors', device);
      await device.write(0, Buffer.alloc(100, 1), { fua: false });
      const client = await open();
      await client.go('errors');
      client.sendRequest(P.NBD_CMD_WRITE_ZEROES, 1n, 0, 4096, P.NBD_CMD_FLAG_FAST_ZERO);
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_ENOTSUP);
      assert.deepEqual(device.mappedExtents, [0], 'a refused fast zero changes nothing');
      client.sendRequest(P.NBD_CMD_WRITE_ZEROES, 2n, 0, 64 * KiB, P.NBD_CMD_FLAG_FAST_ZERO);
      assert.equal((await client.readSimpleReply())?.errno, 0);
      assert.deepEqual(device.mappedExtents, []);
      const zero = device.log.filter((r) => r.op === 'writeZeroes').at(-1)!;
      assert.deepEqual(zero.options, { fua: false, mayUnmap: true, fastOnly: true });
      client.sendRequest(P.NBD_CMD_WRITE_ZEROES, 3n, 0, 4096, P.NBD_CMD_FLAG_NO_HOLE | P.NBD_CMD_FLAG_FUA);
      assert.equal((await client.readSimpleReply())?.errno, 0);
      assert.deepEqual(device.log.filter((r) => r.op === 'writeZeroes').at(-1)!.options, { fua: true, mayUnmap: false, fastOnly: false });
      device.failWith = new ThinError('NO_SPACE', 'pool full');
      client.sendRequest(P.NBD_CMD_WRITE, 4n, 0, 512, 0, Buffer.alloc(512));
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_ENOSPC);
      device.failWith = new Error('disk on fire');
      client.sendRequest(P.NBD_CMD_READ, 5n, 0, 512);
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_EIO);
      client.sendRequest(P.NBD_CMD_FLUSH, 6n, 0, 0);
      assert.equal((await client.readSimpleReply())?.errno, P.NBD_EIO);
    });

    it('hands a large WRITE payload to the device as one buffer (the socket reads into it), data intact', async () => {
      const client = await open();
      await client.go('disk');
      const data = patternBytes(2 * MiB, 4);
      client.sendRequest(P.NBD_CMD_WRITE, 1n, MiB, data.length, 0, data);
      assert.equal((await client.readSimpleReply())?.errno, 0);
      const write = disk.log.filter((r) => r.op === 'write' && r.offsetBytes === MiB).at(-1)!;
      assert.equal(write.parts, 1, `parts: ${write.parts}`);
      client.sendRequest(P.NBD_CMD_READ, 2n, MiB, data.length);
      assert.deepEqual((await client.readSimpleReply(data.length))?.data, data);
    });

    it('WRITEs cut at awkward places and sent slowly (split headers, payloads in pieces, a header sharing a segment with a payload end) land intact', async () => {
      const client = await open();
      await client.go('disk');
      const header = (handle: number, offset: number, length: number): Buffer => {
        const bytes = Buffer.alloc(28);
        bytes.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0);
        bytes.writeUInt16BE(P.NBD_CMD_WRITE, 6);
        bytes.writeBigUInt64BE(BigInt(handle), 8);
        bytes.writeBigUInt64BE(BigInt(offset), 16);
        bytes.writeUInt32BE(length, 24);
        return bytes;
      };
      const big = patternBytes(MiB + 123, 7);
      const small = patternBytes(3000, 9);
      const tail = patternBytes(70_000, 11);
      const stream = Buffer.concat([header(1, 0, big.length), big, header(2, 2 * MiB, small.length), small, header(3, 3 * MiB + 5, tail.length), tail]);
      // Cuts: inside the first header, inside the big payload several times, 7 bytes before its end
      // so that the next header follows in the same piece, inside the second header, and so on.
      const cuts = [10, 28 + 5, 28 + 65_536, 28 + 65_537, 28 + 400_000, 28 + big.length - 7, 28 + big.length + 20, 28 + big.length + 28 + 1500, stream.length - 70_000 + 3];
      let from = 0;
      for (const cut of [...cuts, stream.length]) {
        client.write(stream.subarray(from, cut));
        from = cut;
        await new Promise((resolve) => setTimeout(resolve, 15)); // each piece arrives in its own read
      }
      const handles = new Set<bigint>();
      for (let i = 0; i < 3; i++) {
        const reply = await client.readSimpleReply();
        assert.equal(reply?.errno, 0);
        handles.add(reply!.handle);
      }
      assert.deepEqual([...handles].sort(), [1n, 2n, 3n]);
      for (const [offset, data] of [[0, big], [2 * MiB, small], [3 * MiB + 5, tail]] as const) {
        client.sendRequest(P.NBD_CMD_READ, 9n, offset, data.length);
        const read = await client.readSimpleReply(data.length);
        assert.ok(read?.data?.equals(data), `data at ${offset} intact`);
      }
    });

    it('answers requests out of order as they finish, bounded in flight, every handle once', async () => {
      const client = await open();
      await client.go('slow');
      slow.maxActive = 0;
      const count = LIMITS.nbdInflightRequestsMax * 2 + 7;
      const requests: Buffer[] = [];
      for (let i = 0; i < count; i++) {
        const header = Buffer.alloc(28);
        header.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0);
        header.writeUInt16BE(P.NBD_CMD_READ, 6);
        header.writeBigUInt64BE(BigInt(i), 8);
        header.writeBigUInt64BE(BigInt(i * 512), 16);
        header.writeUInt32BE(512, 24);
        requests.push(header);
      }
      client.write(Buffer.concat(requests)); // one pipelined burst, split however TCP likes
      const seen = new Set<bigint>();
      for (let i = 0; i < count; i++) {
        const reply = await client.readSimpleReply(512);
        assert.equal(reply?.errno, 0);
        seen.add(reply!.handle);
      }
      assert.equal(seen.size, count);
      assert.ok(slow.maxActive > 1, 'requests ran concurrently');
      assert.ok(slow.maxActive <= LIMITS.nbdInflightRequestsMax, `max in flight ${slow.maxActive}`);
    });

    it('DISC: requests in flight are answered before the server closes', async () => {
      const client = await open();
      await client.go('slow');
      const burst: Buffer[] = [];
      const header = (type: number, handle: number, offset: number, length: number) => {
        const h = Buffer.alloc(28);
        h.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0);
        h.writeUInt16BE(type, 6);
        h.writeBigUInt64BE(BigInt(handle), 8);
        h.writeBigUInt64BE(BigInt(offset), 16);
        h.writeUInt32BE(length, 24);
        return h;
      };
      for (let i = 0; i < 10; i++) burst.push(header(P.NBD_CMD_READ, i, i * 4096, 4096));
      burst.push(header(P.NBD_CMD_WRITE, 10, 0, 4), Buffer.from([1, 2, 3, 4]), header(P.NBD_CMD_FLUSH, 11, 0, 0));
      burst.push(header(P.NBD_CMD_DISC, 12, 0, 0));
      burst.push(header(P.NBD_CMD_READ, 13, 0, 4096)); // after DISC: must be ignored
      client.write(Buffer.concat(burst));
      const handles: bigint[] = [];
      for (let i = 0; i < 12; i++) {
        // Replies come in completion order: whether data follows depends on the handle (0-9 are reads).
        const reply = await client.readSimpleReply(0);
        if (reply === undefined) break;
        assert.equal(reply.errno, 0);
        if (reply.handle < 10n) assert.equal((await client.read(4096))?.length, 4096);
        handles.push(reply.handle);
      }
      assert.equal(await client.waitClosed(), true);
      assert.deepEqual([...handles].sort((a, b) => Number(a - b)), Array.from({ length: 12 }, (_, i) => BigInt(i)));
    });

    it('survives pipelined requests followed by an abrupt reset', async () => {
      for (let round = 0; round < 5; round++) {
        const client = await open();
        await client.go(round % 2 === 0 ? 'slow' : 'disk', { structured: round % 2 === 1 });
        const parts: Buffer[] = [];
        for (let i = 0; i < 200; i++) {
          const h = Buffer.alloc(28);
          h.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0);
          h.writeUInt16BE(i % 3 === 0 ? P.NBD_CMD_WRITE : P.NBD_CMD_READ, 6);
          h.writeBigUInt64BE(BigInt(i), 8);
          h.writeBigUInt64BE(BigInt((i % 64) * 4096), 16);
          h.writeUInt32BE(4096, 24);
          parts.push(h);
          if (i % 3 === 0) parts.push(Buffer.alloc(4096, i));
        }
        client.write(Buffer.concat(parts).subarray(0, 300_000)); // cut mid-request
        client.socket.resetAndDestroy();
      }
      await new Promise((resolve) => setTimeout(resolve, 300));
    });

    it('survives seeded garbage at every stage of a session', async () => {
      let seed = 12345;
      const random = () => {
        seed = (seed * 1103515245 + 12345) & 0x7fffffff;
        return seed / 0x7fffffff;
      };
      for (let round = 0; round < 40; round++) {
        const client = await open();
        const stage = round % 3;
        if (stage >= 1) await client.greet();
        if (stage === 2) {
          client.sendOption(P.NBD_OPT_GO, infoPayload('disk', []));
          await client.readOptionReplies();
        }
        const garbage = Buffer.alloc(1 + Math.floor(random() * 300));
        for (let i = 0; i < garbage.length; i++) garbage[i] = Math.floor(random() * 256);
        // Sometimes a valid magic, so parsing goes further before failing.
        if (stage === 2 && random() < 0.5) garbage.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0);
        if (stage === 1 && random() < 0.5 && garbage.length >= 8) garbage.writeBigUInt64BE(P.NBD_IHAVEOPT, 0);
        client.write(garbage);
        await new Promise((resolve) => setTimeout(resolve, 5));
        client.destroy();
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    });

    it('a client that half-closes after pipelining still gets every reply', async () => {
      const client = await open();
      await client.go('slow');
      for (let i = 0; i < 5; i++) client.sendRequest(P.NBD_CMD_READ, BigInt(i), i * 512, 512);
      client.socket.end(); // shutdown(SHUT_WR), as some clients do after DISC
      for (let i = 0; i < 5; i++) assert.equal((await client.readSimpleReply(512))?.errno, 0);
      assert.equal(await client.waitClosed(), true);
    });

    it('a client that half-closes in the middle of a WRITE payload is closed, not waited for', async () => {
      const client = await open();
      await client.go('disk');
      client.sendRequest(P.NBD_CMD_WRITE, 1n, 0, 4096, 0, Buffer.alloc(1000));
      client.socket.end();
      assert.equal(await client.waitClosed(), true);
    });

    it('close() cuts a connection that does not read its replies once the grace period is over', async () => {
      const device = new MemoryDevice({ name: 'stuck', sizeBytes: 64 * MiB });
      const own = await startServer({ stuck: device }, { closeGraceMs: 300 });
      const client = await RawClient.connect(own.port);
      await client.go('stuck');
      client.socket.pause();
      for (let i = 0; i < 64; i++) client.sendRequest(P.NBD_CMD_READ, BigInt(i), i * MiB, MiB);
      while (device.log.length < 8) await new Promise((resolve) => setTimeout(resolve, 5));
      const started = Date.now();
      await own.close();
      const tookMs = Date.now() - started;
      assert.ok(tookMs >= 250 && tookMs < 5000, `close took ${tookMs} ms`);
      assert.equal(own.server.connectionCount, 0);
      client.destroy();
    });

    it('close() lets in-flight requests finish, then closes every connection', async () => {
      const device = new MemoryDevice({ name: 'closing', sizeBytes: SIZE, delayMs: 100 });
      const own = await startServer({ closing: device });
      const client = await RawClient.connect(own.port);
      await client.go('closing');
      client.sendRequest(P.NBD_CMD_READ, 1n, 0, 4096);
      client.sendRequest(P.NBD_CMD_READ, 2n, 4096, 4096);
      while (device.log.length < 2) await new Promise((resolve) => setTimeout(resolve, 5));
      assert.equal(own.server.connectionCount, 1);
      const closing = own.close();
      const first = await client.readSimpleReply(4096);
      const second = await client.readSimpleReply(4096);
      assert.deepEqual([first?.errno, second?.errno], [0, 0]);
      await closing;
      assert.equal(await client.waitClosed(), true);
      assert.equal(own.server.connectionCount, 0);
    });
  });
});
