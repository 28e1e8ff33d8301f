/** STARTTLS: required and optional TLS, with real clients (nbdinfo nbds://, qemu-io tls-creds) and raw sockets. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import * as P from '../../src/nbd/protocol.js';
import { MemoryDevice } from './memory-device.js';
import { infoPayload, qemuIo, qemuIoFailed, RawClient, run, startServer, type TestServer } from './helpers.js';

describe('nbd server with TLS', () => {
  let dir: string;
  let key: Buffer;
  let cert: Buffer;
  let required: TestServer;
  let optional: TestServer;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nbd-tls-'));
    // Self-signed, so the certificate is its own CA: libnbd and QEMU read ca-cert.pem from the directory.
    const made = await run('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'ca-cert.pem'),
    ]);
    assert.equal(made.code, 0, made.stderr);
    key = await readFile(join(dir, 'key.pem'));
    cert = await readFile(join(dir, 'ca-cert.pem'));
    const disk = () => new MemoryDevice({ name: 'disk', sizeBytes: 1 << 20 });
    required = await startServer({ disk: disk() }, { tls: { key, cert, required: true } });
    optional = await startServer({ disk: disk() }, { tls: { key, cert, required: false } });
  });

  after(async () => {
    await required.close();
    await optional.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('nbdinfo connects with nbds:// and qemu-io writes and reads over TLS', async () => {
    const info = await run('nbdinfo', ['--json', `nbds://127.0.0.1:${required.port}/disk?tls-certificates=${dir}`]);
    assert.equal(info.code, 0, info.stderr);
    assert.equal(JSON.parse(info.stdout).TLS, true);
    const io = await run('qemu-io', [
      '--object', `tls-creds-x509,id=tls0,dir=${dir},endpoint=client`,
      '--image-opts', `driver=nbd,host=127.0.0.1,port=${required.port},export=disk,tls-creds=tls0`,
      '-c', 'write -P 0x5a 0 64k', '-c', 'read -P 0x5a 0 64k',
    ]);
    assert.equal(qemuIoFailed(io), false, io.stdout + io.stderr);
  });

  it('required TLS: plain clients are refused, raw options get TLS_REQD, EXPORT_NAME is cut', async () => {
    const plain = await run('nbdinfo', [required.uri('disk')]);
    assert.notEqual(plain.code, 0);
    const client = await RawClient.connect(required.port);
    await client.greet();
    for (const option of [P.NBD_OPT_LIST, P.NBD_OPT_GO, P.NBD_OPT_STRUCTURED_REPLY, 4242]) {
      client.sendOption(option, option === P.NBD_OPT_GO ? infoPayload('disk', []) : undefined);
      assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_TLS_REQD, `option ${option}`);
    }
    client.sendOption(P.NBD_OPT_STARTTLS, Buffer.from('x'));
    assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ERR_INVALID);
    client.sendOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    assert.equal(await client.waitClosed(), true);
  });

  it('STARTTLS upgrades a raw socket; a second STARTTLS is INVALID; state is reset', async () => {
    const client = await RawClient.connect(optional.port);
    await client.greet();
    client.sendOption(P.NBD_OPT_STRUCTURED_REPLY);
    assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ACK);
    client.sendOption(P.NBD_OPT_STARTTLS);
    assert.equal((await client.readOptionReply())?.type, P.NBD_REP_ACK);
    const secure = await new Promise<TLSSocket>((resolve, reject) => {
      const socket = tlsConnect({ socket: client.socket, rejectUnauthorized: false }, () => resolve(socket));
      socket.once('error', reject);
    });
    const over = RawClient.wrap(secure);
    over.sendOption(P.NBD_OPT_STARTTLS);
    assert.equal((await over.readOptionReply())?.type, P.NBD_REP_ERR_INVALID);
    over.sendOption(P.NBD_OPT_GO, infoPayload('disk', []));
    const replies = await over.readOptionReplies();
    assert.equal(replies.at(-1)!.type, P.NBD_REP_ACK);
    const exportInfo = replies.find((r) => r.type === P.NBD_REP_INFO && r.data.readUInt16BE(0) === P.NBD_INFO_EXPORT)!;
    assert.equal(exportInfo.data.readUInt16BE(10) & P.NBD_FLAG_SEND_DF, 0, 'structured replies did not survive STARTTLS');
    over.sendRequest(P.NBD_CMD_WRITE, 1n, 0, 4, 0, Buffer.from('abcd'));
    assert.equal((await over.readSimpleReply())?.errno, 0);
    over.sendRequest(P.NBD_CMD_READ, 2n, 0, 4);
    assert.equal((await over.readSimpleReply(4))?.data?.toString(), 'abcd');
    over.sendRequest(P.NBD_CMD_DISC, 3n, 0, 0);
    assert.equal(await over.waitClosed(), true);
  });

  it('optional TLS: plain clients still work', async () => {
    const io = await qemuIo(optional.uri('disk'), ['write -P 3 4k 4k', 'read -P 3 4k 4k']);
    assert.equal(qemuIoFailed(io), false, io.stdout + io.stderr);
  });
});
