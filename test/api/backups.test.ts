/**
 * The backup routes in-process against the real array: 202 answers with the catalog entry or the
 * job id, sizes as text, the list filter, delete with and without purgeMedia, and validation
 * errors that name the field and record nothing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openStorageArray, type StorageArray } from '../../src/array/array.js';
import { ApiServer } from '../../src/api/server.js';
import { thinarrayVersion } from '../../src/daemon/version.js';
import { silentLogger } from '../../src/lib/log.js';
import { MiB } from '../../src/lib/sizes.js';

const TOKEN = 'test-token-backups-0123456789';

interface Reply {
  status: number;
  json: any;
}

describe('backup API routes', () => {
  let home: string;
  let media: string;
  let array: StorageArray;
  let server: ApiServer;
  let baseUrl: string;

  before(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-api-backups-'));
    media = path.join(home, 'media');
    fs.mkdirSync(media);
    array = await openStorageArray({ home, logger: silentLogger(), poolFileBytes: 256 * MiB, mediaRoots: [media] });
    array.startJobs();
    server = new ApiServer({ array, token: TOKEN, logger: silentLogger(), version: thinarrayVersion() });
    baseUrl = (await server.listen('127.0.0.1', 0)).url;
    await array.volumeCreate({ name: 'vm', sizeBytes: 8 * MiB });
    await array.volume('vm').write(0, Buffer.alloc(3 * 65536, 7), { fua: false });
  });

  after(async () => {
    await server.close();
    await array.close();
    fs.rmSync(home, { recursive: true, force: true });
  });

  async function call(method: string, route: string, body?: unknown): Promise<Reply> {
    const headers: Record<string, string> = { authorization: `Bearer ${TOKEN}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch(`${baseUrl}/api/v1${route}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    const text = await response.text();
    return { status: response.status, json: text === '' ? undefined : JSON.parse(text) };
  }

  async function jobEnd(jobId: string): Promise<any> {
    return (await call('GET', `/jobs/${jobId}?waitMs=30000`)).json;
  }

  async function catalogIds(): Promise<string[]> {
    return ((await call('GET', '/backups')).json.backups as { id: string }[]).map((entry) => entry.id);
  }

  function assertRefused(reply: Reply, status: number, field: string): void {
    assert.equal(reply.status, status, JSON.stringify(reply.json));
    assert.equal(reply.json.error.field, field, JSON.stringify(reply.json));
    assert.match(reply.json.error.message, new RegExp(`^${field}: `));
  }

  /** Refused by the daemon's media-root guard (the array, not the schema, knows the roots). */
  function assertOutsideRoots(reply: Reply): void {
    assert.equal(reply.status, 400, JSON.stringify(reply.json));
    assert.equal(reply.json.error.code, 'INVALID_ARGUMENT');
    assert.match(reply.json.error.message, /outside the media roots/);
  }

  test('create (file: and dir: with a text size), list with a filter, show, verify, restore, delete', async () => {
    const created = await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'a.tbk')}`, labels: ['l1'], description: 'd' });
    assert.equal(created.status, 202, JSON.stringify(created.json));
    assert.match(created.json.id, /^bk-\d+$/);
    assert.match(created.json.jobId, /^job-/);
    assert.equal((await jobEnd(created.json.jobId)).state, 'succeeded');
    const shown = await call('GET', `/backups/${created.json.id}`);
    assert.equal(shown.json.state, 'complete');
    assert.equal(shown.json.extents, 3);
    assert.deepEqual(shown.json.labels, ['l1']);

    const carts = await call('POST', '/backups', { volume: 'vm', to: `dir:${media}`, mediaSizeBytes: '64K' });
    assert.equal(carts.status, 202, JSON.stringify(carts.json));
    assert.equal((await jobEnd(carts.json.jobId)).state, 'succeeded');
    assert.ok(fs.readdirSync(media).filter((name) => name.startsWith(`${carts.json.id}.`)).length >= 3, 'several 64 KiB cartridges');

    assert.equal((await call('GET', '/backups?volume=vm')).json.backups.length, 2);
    assert.equal((await call('GET', '/backups?volume=other')).json.backups.length, 0);

    const verify = await call('POST', '/backups/verify', { source: created.json.id });
    assert.equal(verify.status, 202);
    assert.equal((await jobEnd(verify.json.jobId)).state, 'succeeded');
    const restore = await call('POST', '/restores', { source: carts.json.id, to: 'vm-copy', create: true });
    assert.equal(restore.status, 202, JSON.stringify(restore.json));
    const restored = await jobEnd(restore.json.jobId);
    assert.equal(restored.state, 'succeeded', JSON.stringify(restored.error));
    assert.equal(restored.params.method, 'remap', 'remap is the default method');

    assert.equal((await call('DELETE', `/backups/${created.json.id}`)).status, 204);
    assert.ok(fs.existsSync(path.join(media, 'a.tbk')), 'kept without purgeMedia');
    assert.equal((await call('DELETE', `/backups/${carts.json.id}?purgeMedia=true`)).status, 204);
    assert.equal(fs.readdirSync(media).filter((name) => name.startsWith(`${carts.json.id}.`)).length, 0, 'cartridges purged');
    assert.equal((await call('GET', `/backups/${carts.json.id}`)).status, 404);
  });

  test('refused requests name the field and record nothing', async () => {
    const before = await catalogIds();
    assertRefused(await call('POST', '/backups', { to: `file:${path.join(media, 'x.tbk')}` }), 400, 'volume');
    assertRefused(await call('POST', '/backups', { volume: 'vm' }), 400, 'to');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: 'file:relative.tbk' }), 400, 'to');
    assertOutsideRoots(await call('POST', '/backups', { volume: 'vm', to: 'file:/etc/x.tbk' }));
    assertOutsideRoots(await call('POST', '/backups', { volume: 'vm', to: `file:${media}/../x.tbk` }));
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `dir:${media}` }), 400, 'mediaSizeBytes');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `dir:${media}`, mediaSizeBytes: 'big' }), 400, 'mediaSizeBytes');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'y.tbk')}`, labels: 'one' }), 400, 'labels');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'y.tbk')}`, extra: 1 }), 400, 'extra');
    assert.equal((await call('POST', '/backups', { volume: 'nope', to: `file:${path.join(media, 'y.tbk')}` })).status, 404);
    assertRefused(await call('GET', '/backups/not-an-id'), 400, 'id');
    assert.equal((await call('GET', '/backups/bk-999999')).status, 404);
    assert.equal((await call('DELETE', '/backups/bk-999999')).status, 404);
    assertRefused(await call('DELETE', '/backups/bk-000001?purgeMedia=yes'), 400, 'purgeMedia');
    assertRefused(await call('GET', '/backups?volume=../x'), 400, 'volume');
    assertRefused(await call('POST', '/backups/verify', {}), 400, 'source');
    assertOutsideRoots(await call('POST', '/backups/verify', { source: 'file:/etc/passwd' }));
    assertRefused(await call('POST', '/restores', { source: 'bk-000001', to: 'z', method: 'copy' }), 400, 'method');
    assertRefused(await call('POST', '/restores', { source: 'bk-000001', to: '../z' }), 400, 'to');
    assertRefused(await call('POST', '/restores', { source: 'bk-000001', to: 'z', create: 'yes' }), 400, 'create');
    assert.equal((await call('POST', '/restores', { source: 'bk-999999', to: 'z', create: true })).status, 404);
    assert.equal((await call('POST', '/restores', { source: `file:${path.join(media, 'a.tbk')}`, to: 'absent' })).status, 404, 'no --create, no volume');
    assert.deepEqual(await catalogIds(), before);
    assert.equal(array.volumeList().some((volume) => volume.name === 'z' || volume.name === 'absent'), false);
  });
});
