/**
 * The copy routes in-process against the real array: 202 with the copy and its job, list, show by
 * id or target name with and without the table, and the validation errors naming the field —
 * after each refusal the volume and copy lists are unchanged.
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
import { KiB, MiB } from '../../src/lib/sizes.js';

const TOKEN = 'test-token-copies-0123456789';
const EXTENT_BYTES = 64 * KiB;

describe('HTTP API: copies', () => {
  let home: string;
  let array: StorageArray;
  let server: ApiServer;
  let baseUrl: string;

  before(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-api-copies-'));
    array = await openStorageArray({ home, logger: silentLogger(), poolFileBytes: 256 * MiB });
    array.startJobs();
    server = new ApiServer({ array, token: TOKEN, logger: silentLogger(), metrics: undefined, version: thinarrayVersion() });
    baseUrl = (await server.listen('127.0.0.1', 0)).url;
    await array.volumeCreate({ name: 'src', sizeBytes: 16 * MiB });
    await array.volume('src').write(0, Buffer.alloc(2 * EXTENT_BYTES, 7), { fua: false });
    await array.volume('src').write(100 * EXTENT_BYTES, Buffer.alloc(EXTENT_BYTES, 9), { fua: false });
  });

  after(async () => {
    await server.close();
    await array.close();
    fs.rmSync(home, { recursive: true, force: true });
  });

  async function call(method: string, route: string, body?: unknown): Promise<{ status: number; json: any }> {
    const headers: Record<string, string> = { authorization: `Bearer ${TOKEN}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch(`${baseUrl}/api/v1${route}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    const text = await response.text();
    return { status: response.status, json: text === '' ? undefined : JSON.parse(text) };
  }

  const names = (): string[] => array.volumeList().map((volume) => volume.name);

  test('POST /copies: 202 with the copy and its job; GET by id and by target, with the table', async () => {
    const created = await call('POST', '/copies', { source: 'src', target: 'packed', mode: 'compact' });
    assert.equal(created.status, 202, JSON.stringify(created.json));
    assert.equal(created.json.mode, 'compact');
    assert.equal(created.json.extentCount, 3);
    assert.equal(created.json.metadataExtents, 1);
    assert.equal(created.json.targetCapacityBytes, 4 * EXTENT_BYTES);
    assert.match(created.json.jobId, /^job-/);
    assert.equal((await array.jobs.wait(created.json.jobId, 30_000)).state, 'succeeded');

    const byId = await call('GET', `/copies/${created.json.id}`);
    assert.equal(byId.status, 200);
    assert.equal(byId.json.state, 'complete');
    assert.equal(byId.json.correspondence, undefined, 'no table unless asked');
    const withTable = await call('GET', '/copies/packed?table=true');
    assert.equal(withTable.status, 200);
    assert.deepEqual(withTable.json.correspondence, [
      { x: 1, sourceExtent: 0, sourceOffsetBytes: 0 },
      { x: 2, sourceExtent: 1, sourceOffsetBytes: EXTENT_BYTES },
      { x: 3, sourceExtent: 100, sourceOffsetBytes: 100 * EXTENT_BYTES },
    ]);
    assert.equal((await call('GET', '/copies/packed?table=false')).json.correspondence, undefined);

    const defaultMode = await call('POST', '/copies', { source: 'src', target: 'snap' });
    assert.equal(defaultMode.status, 202);
    assert.equal(defaultMode.json.mode, 'instant', 'mode defaults to instant');
    assert.equal(defaultMode.json.targetCapacityBytes, 16 * MiB);
    await array.jobs.wait(defaultMode.json.jobId, 30_000);
    const list = await call('GET', '/copies');
    assert.deepEqual(list.json.copies.map((copy: { target: string }) => copy.target), ['packed', 'snap']);
  });

  const invalid: Array<[string, unknown, string]> = [
    ['a bad mode', { source: 'src', target: 'x', mode: 'fast' }, 'mode'],
    ['a bad target name', { source: 'src', target: 'a/b' }, 'target'],
    ['a missing source', { target: 'x' }, 'source'],
    ['an unknown field', { source: 'src', target: 'x', speed: 1 }, ''],
  ];
  for (const [title, body, field] of invalid) {
    test(`POST /copies with ${title}: 400${field ? ` naming ${field}` : ''}, nothing made`, async () => {
      const before = names();
      const reply = await call('POST', '/copies', body);
      assert.equal(reply.status, 400, JSON.stringify(reply.json));
      assert.equal(reply.json.error.code, 'INVALID_ARGUMENT');
      if (field) assert.equal(reply.json.error.field, field);
      assert.deepEqual(names(), before);
    });
  }

  test('refusals: existing target 409, unknown source 404, unknown copy 404, bad query 400', async () => {
    const copiesBefore = array.copyList().length;
    const exists = await call('POST', '/copies', { source: 'src', target: 'snap' });
    assert.equal(exists.status, 409);
    assert.equal(exists.json.error.code, 'ALREADY_EXISTS');
    assert.equal(exists.json.error.field, 'target');
    const noSource = await call('POST', '/copies', { source: 'nope', target: 'y' });
    assert.equal(noSource.status, 404);
    assert.equal((await call('GET', '/copies/999')).status, 404);
    assert.equal((await call('GET', '/copies/no-such-target')).status, 404);
    const badQuery = await call('GET', '/copies/snap?table=yes');
    assert.equal(badQuery.status, 400);
    assert.equal(badQuery.json.error.field, 'table');
    assert.equal(array.copyList().length, copiesBefore);
  });
});
