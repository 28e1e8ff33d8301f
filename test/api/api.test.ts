/**
 * The HTTP API in-process against the real array (a temporary home): auth, every route, the
 * validation errors naming the field, and "nothing half-applied" — after each refused call the
 * volume list is unchanged.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openStorageArray, type StorageArray } from '../../src/array/array.js';
import { ApiServer } from '../../src/api/server.js';
import { buildOpenApiDocument } from '../../src/api/openapi.js';
import { ROUTES } from '../../src/api/routes.js';
import { DaemonMetrics } from '../../src/daemon/metrics.js';
import { thinarrayVersion } from '../../src/daemon/version.js';
import { LIMITS } from '../../src/lib/limits.js';
import { silentLogger } from '../../src/lib/log.js';
import { GiB, MiB } from '../../src/lib/sizes.js';

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const TOKEN = 'test-token-0123456789abcdef';

interface Reply {
  status: number;
  headers: Headers;
  text: string;
  json: any;
}

describe('HTTP API against the real array', () => {
  let home: string;
  let array: StorageArray;
  let metrics: DaemonMetrics;
  let server: ApiServer;
  let baseUrl: string;

  before(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-api-'));
    array = await openStorageArray({ home, logger: silentLogger(), poolFileBytes: 256 * MiB });
    metrics = new DaemonMetrics(array, () => 0);
    server = new ApiServer({ array, token: TOKEN, logger: silentLogger(), metrics, version: thinarrayVersion() });
    baseUrl = (await server.listen('127.0.0.1', 0)).url;
  });

  after(async () => {
    await server.close();
    await array.close();
    fs.rmSync(home, { recursive: true, force: true });
  });

  async function call(method: string, route: string, options: { body?: unknown; rawBody?: string; token?: string | null } = {}): Promise<Reply> {
    const headers: Record<string, string> = {};
    const token = options.token === undefined ? TOKEN : options.token;
    if (token !== null) headers['authorization'] = `Bearer ${token}`;
    let body: string | undefined = options.rawBody;
    if (options.body !== undefined) body = JSON.stringify(options.body);
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch(baseUrl + '/api/v1' + route, { method, headers, ...(body === undefined ? {} : { body }) });
    const text = await response.text();
    let json: unknown;
    try {
      json = text === '' ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: response.status, headers: response.headers, text, json };
  }

  async function volumeNames(): Promise<string[]> {
    const reply = await call('GET', '/volumes');
    assert.equal(reply.status, 200);
    return (reply.json.volumes as { name: string }[]).map((volume) => volume.name).sort();
  }

  function assertError(reply: Reply, status: number, code: string, field?: string): void {
    assert.equal(reply.status, status, `expected ${status}, got ${reply.status}: ${reply.text}`);
    assert.equal(reply.json?.error?.code, code, reply.text);
    assert.equal(typeof reply.json.error.message, 'string');
    if (field !== undefined) {
      assert.equal(reply.json.error.field, field, reply.text);
      assert.match(reply.json.error.message, new RegExp(`^${field.replace('.', '\\.')}: `), 'the message names the field');
    }
  }

  describe('auth', () => {
    test('health needs no token', async () => {
      const reply = await call('GET', '/health', { token: null });
      assert.equal(reply.status, 200);
      assert.deepEqual(reply.json, { status: 'ok', version: thinarrayVersion() });
    });

    for (const [method, route] of [
      ['GET', '/pool'],
      ['GET', '/volumes'],
      ['POST', '/volumes'],
      ['DELETE', '/volumes/x'],
      ['GET', '/metrics'],
      ['GET', '/openapi.json'],
      ['GET', '/no-such-route'],
    ] as const) {
      test(`${method} ${route}: 401 without a token and with a wrong one`, async () => {
        const missing = await call(method, route, { token: null });
        assertError(missing, 401, 'UNAUTHORIZED');
        assert.equal(missing.headers.get('www-authenticate'), 'Bearer');
        assertError(await call(method, route, { token: 'wrong' }), 401, 'UNAUTHORIZED');
        assertError(await call(method, route, { token: TOKEN + 'x' }), 401, 'UNAUTHORIZED');
      });
    }

    test('a refused create changes nothing', async () => {
      await call('POST', '/volumes', { token: 'wrong', body: { name: 'sneaky', sizeBytes: '1G' } });
      assert.deepEqual(await volumeNames(), []);
    });
  });

  describe('volumes', () => {
    test('create with a size string, then list, show, map', async () => {
      const created = await call('POST', '/volumes', { body: { name: 'vm1', sizeBytes: '10G' } });
      assert.equal(created.status, 201, created.text);
      assert.equal(created.json.name, 'vm1');
      assert.equal(created.json.capacityBytes, 10 * GiB);
      assert.equal(created.json.allocatedBytes, 0);
      assert.equal(created.json.attr, 'user');
      assert.equal(created.json.readOnly, false);

      assert.deepEqual(await volumeNames(), ['vm1']);
      const shown = await call('GET', '/volumes/vm1');
      assert.equal(shown.status, 200);
      assert.equal(shown.json.uuid, created.json.uuid);

      const map = await call('GET', '/volumes/vm1/map');
      assert.equal(map.status, 200);
      assert.equal(map.json.name, 'vm1');
      assert.equal(map.json.extentBytes, array.poolShow().extentBytes);
      assert.deepEqual(map.json.runs, [{ offsetBytes: 0, lengthBytes: 10 * GiB, mapped: false }]);
    });

    test('create with a number of bytes, read-only and work attribute', async () => {
      const created = await call('POST', '/volumes', { body: { name: 'scratch.0', sizeBytes: 64 * MiB, readOnly: true, attr: 'work' } });
      assert.equal(created.status, 201, created.text);
      assert.equal(created.json.readOnly, true);
      assert.equal(created.json.attr, 'work');
      assert.deepEqual(await volumeNames(), ['scratch.0', 'vm1']);
    });

    test('PATCH grows, changes attr and read-only', async () => {
      const grown = await call('PATCH', '/volumes/vm1', { body: { sizeBytes: '20G' } });
      assert.equal(grown.status, 200, grown.text);
      assert.equal(grown.json.capacityBytes, 20 * GiB);
      const changed = await call('PATCH', '/volumes/scratch.0', { body: { attr: 'user', readOnly: false } });
      assert.equal(changed.status, 200, changed.text);
      assert.equal(changed.json.attr, 'user');
      assert.equal(changed.json.readOnly, false);
      const same = await call('PATCH', '/volumes/vm1', { body: { sizeBytes: 20 * GiB } });
      assert.equal(same.status, 200, 'resizing to the same size is a no-op');
    });

    test('duplicate name: 409 ALREADY_EXISTS, nothing changed', async () => {
      const before = (await call('GET', '/volumes/vm1')).json;
      assertError(await call('POST', '/volumes', { body: { name: 'vm1', sizeBytes: '1G' } }), 409, 'ALREADY_EXISTS');
      assert.deepEqual((await call('GET', '/volumes/vm1')).json, before);
    });

    test('shrink refused naming sizeBytes; a PATCH that fails applies none of its changes', async () => {
      const before = (await call('GET', '/volumes/vm1')).json;
      assertError(await call('PATCH', '/volumes/vm1', { body: { sizeBytes: '1G' } }), 400, 'INVALID_ARGUMENT', 'sizeBytes');
      assertError(await call('PATCH', '/volumes/vm1', { body: { sizeBytes: '1G', attr: 'work', readOnly: true } }), 400, 'INVALID_ARGUMENT', 'sizeBytes');
      assertError(await call('PATCH', '/volumes/vm1', { body: { attr: 'admin', readOnly: true } }), 400, 'INVALID_ARGUMENT', 'attr');
      assertError(await call('PATCH', '/volumes/vm1', { body: {} }), 400, 'INVALID_ARGUMENT');
      assert.deepEqual((await call('GET', '/volumes/vm1')).json, before);
    });

    test('unknown volume: 404 on show, map, patch and delete', async () => {
      assertError(await call('GET', '/volumes/nope'), 404, 'NOT_FOUND');
      assertError(await call('GET', '/volumes/nope/map'), 404, 'NOT_FOUND');
      assertError(await call('PATCH', '/volumes/nope', { body: { sizeBytes: '1G' } }), 404, 'NOT_FOUND');
      assertError(await call('DELETE', '/volumes/nope'), 404, 'NOT_FOUND');
      assert.deepEqual(await volumeNames(), ['scratch.0', 'vm1']);
    });

    test('a bad name in the path is a 400 naming "name"', async () => {
      for (const encoded of ['a%20b', '..%2Fx', '.hidden', '-x', 'x'.repeat(129)]) {
        assertError(await call('GET', `/volumes/${encoded}`), 400, 'INVALID_ARGUMENT', 'name');
        assertError(await call('DELETE', `/volumes/${encoded}`), 400, 'INVALID_ARGUMENT', 'name');
      }
    });

    test('delete: 204, then gone', async () => {
      const deleted = await call('DELETE', '/volumes/scratch.0');
      assert.equal(deleted.status, 204);
      assert.equal(deleted.text, '');
      assert.deepEqual(await volumeNames(), ['vm1']);
      assertError(await call('DELETE', '/volumes/scratch.0'), 404, 'NOT_FOUND');
    });
  });

  describe('validation of POST /volumes', () => {
    const cases: [string, unknown, string][] = [
      ['negative size', { name: 'v', sizeBytes: -1 }, 'sizeBytes'],
      ['size "12Q"', { name: 'v', sizeBytes: '12Q' }, 'sizeBytes'],
      ['size "-5G"', { name: 'v', sizeBytes: '-5G' }, 'sizeBytes'],
      ['fractional bytes', { name: 'v', sizeBytes: 1.5 }, 'sizeBytes'],
      ['zero size', { name: 'v', sizeBytes: 0 }, 'sizeBytes'],
      ['size beyond the limit', { name: 'v', sizeBytes: '8P' }, 'sizeBytes'],
      ['size not a multiple of 512', { name: 'v', sizeBytes: 1000 }, 'sizeBytes'],
      ['missing size', { name: 'v' }, 'sizeBytes'],
      ['missing name', { sizeBytes: '1G' }, 'name'],
      ['name "../x"', { name: '../x', sizeBytes: '1G' }, 'name'],
      ['name with a space', { name: 'a b', sizeBytes: '1G' }, 'name'],
      ['name with a slash', { name: 'a/b', sizeBytes: '1G' }, 'name'],
      ['empty name', { name: '', sizeBytes: '1G' }, 'name'],
      ['name starting with a dot', { name: '.v', sizeBytes: '1G' }, 'name'],
      ['name of 129 characters', { name: 'v'.repeat(129), sizeBytes: '1G' }, 'name'],
      ['name not a string', { name: 7, sizeBytes: '1G' }, 'name'],
      ['readOnly not a boolean', { name: 'v', sizeBytes: '1G', readOnly: 'yes' }, 'readOnly'],
      ['unknown attr', { name: 'v', sizeBytes: '1G', attr: 'admin' }, 'attr'],
      ['unknown field', { name: 'v', sizeBytes: '1G', colour: 'blue' }, 'colour'],
    ];
    for (const [title, body, field] of cases) {
      test(`${title}: 400 naming ${field}, nothing created`, async () => {
        const namesBefore = await volumeNames();
        assertError(await call('POST', '/volumes', { body }), 400, 'INVALID_ARGUMENT', field);
        assert.deepEqual(await volumeNames(), namesBefore);
      });
    }

    test('missing name says "is required"', async () => {
      const reply = await call('POST', '/volumes', { body: { sizeBytes: '1G' } });
      assert.equal(reply.json.error.message, 'name: is required');
    });

    test('a body that is not an object: 400', async () => {
      assertError(await call('POST', '/volumes', { body: [1, 2] }), 400, 'INVALID_ARGUMENT');
      assertError(await call('POST', '/volumes', { body: 'vm2' }), 400, 'INVALID_ARGUMENT');
    });

    test('malformed JSON: 400, nothing created', async () => {
      const namesBefore = await volumeNames();
      const reply = await call('POST', '/volumes', { rawBody: '{"name": "vm2", "sizeBytes": ' });
      assertError(reply, 400, 'INVALID_ARGUMENT');
      assert.match(reply.json.error.message, /not valid JSON/);
      assert.deepEqual(await volumeNames(), namesBefore);
    });

    test('a body over the limit: 413, nothing created', async () => {
      const namesBefore = await volumeNames();
      const padding = 'x'.repeat(LIMITS.apiBodyBytesMax + 1);
      const reply = await call('POST', '/volumes', { rawBody: JSON.stringify({ name: 'big', sizeBytes: '1G', padding }) });
      assertError(reply, 413, 'BODY_TOO_LARGE');
      assert.deepEqual(await volumeNames(), namesBefore);
    });
  });

  describe('routing', () => {
    test('unknown route: 404', async () => {
      assertError(await call('GET', '/nope'), 404, 'NOT_FOUND');
      assertError(await call('GET', '/volumes/vm1/map/extra'), 404, 'NOT_FOUND');
      const outside = await fetch(baseUrl + '/other', { headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(outside.status, 404);
    });

    test('wrong method: 405 with Allow', async () => {
      const reply = await call('PUT', '/volumes/vm1', { body: {} });
      assertError(reply, 405, 'METHOD_NOT_ALLOWED');
      assert.equal(reply.headers.get('allow'), 'GET, PATCH, DELETE');
      assertError(await call('DELETE', '/pool'), 405, 'METHOD_NOT_ALLOWED');
    });
  });

  describe('pool and check', () => {
    test('GET /pool', async () => {
      const reply = await call('GET', '/pool');
      assert.equal(reply.status, 200);
      assert.equal(reply.json.disks.length, 1);
      assert.equal(reply.json.disks[0].sizeBytes, 256 * MiB);
      assert.ok(reply.json.sizeBytes > 255 * MiB && reply.json.sizeBytes <= 256 * MiB, 'the pool is the disk less its header');
      assert.equal(reply.json.usedBytes, 0);
      assert.equal(reply.json.provisionedBytes, 20 * GiB);
      assert.ok(reply.json.overcommitRatio > 1);
    });

    test('POST /pool/disks adds a sparse file; a relative path or bad size is refused', async () => {
      assertError(await call('POST', '/pool/disks', { body: { path: 'relative.img', sizeBytes: '64M' } }), 400, 'INVALID_ARGUMENT', 'path');
      assertError(await call('POST', '/pool/disks', { body: { path: path.join(home, 'x.img'), sizeBytes: '64Z' } }), 400, 'INVALID_ARGUMENT', 'sizeBytes');
      assertError(await call('POST', '/pool/disks', { body: {} }), 400, 'INVALID_ARGUMENT', 'path');
      const poolBefore = (await call('GET', '/pool')).json;
      assert.equal(poolBefore.disks.length, 1, 'nothing added by refused calls');
      const added = await call('POST', '/pool/disks', { body: { path: path.join(home, 'disk1.img'), sizeBytes: '64M' } });
      assert.equal(added.status, 201, added.text);
      assert.equal(added.json.sizeBytes, 64 * MiB);
      assert.equal(added.json.kind, 'file');
      const poolAfter = (await call('GET', '/pool')).json;
      assert.equal(poolAfter.disks.length, 2);
      assert.equal(poolAfter.sizeBytes, poolBefore.sizeBytes + added.json.extents * poolBefore.extentBytes);
    });

    test('POST /check, with and without repair; repair must be a boolean', async () => {
      for (const body of [{ repair: false }, { repair: true }, undefined]) {
        const reply = await call('POST', '/check', body === undefined ? {} : { body });
        assert.equal(reply.status, 200, reply.text);
        assert.equal(reply.json.ok, true);
        assert.deepEqual(reply.json.problems, []);
      }
      assertError(await call('POST', '/check', { body: { repair: 'yes' } }), 400, 'INVALID_ARGUMENT', 'repair');
    });
  });

  describe('documents', () => {
    test('GET /openapi.json is OpenAPI 3.1 and lists every route of the table', async () => {
      const reply = await call('GET', '/openapi.json');
      assert.equal(reply.status, 200);
      assert.equal(reply.json.openapi, '3.1.0');
      for (const route of ROUTES) {
        const documentPath = '/api/v1' + route.path.replace(/:([A-Za-z]+)/g, '{$1}');
        const operation = reply.json.paths[documentPath]?.[route.method.toLowerCase()];
        assert.ok(operation, `${route.method} ${documentPath} documented`);
        assert.equal(operation.operationId, route.operationId);
        if (!route.public) assert.ok(operation.responses['401'], `${route.operationId} documents 401`);
      }
      const createBody = reply.json.paths['/api/v1/volumes'].post.requestBody.content['application/json'].schema;
      assert.deepEqual(createBody.required, ['name', 'sizeBytes']);
      assert.equal(createBody.properties.name.pattern, '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$');
    });

    test('docs/openapi.json is current (regenerate: node dist/src/cli/main.js openapi > docs/openapi.json)', () => {
      const committedPath = path.join(REPO_ROOT, 'docs', 'openapi.json');
      const current = JSON.stringify(buildOpenApiDocument(ROUTES, thinarrayVersion()), null, 2) + '\n';
      assert.ok(fs.existsSync(committedPath), `${committedPath} missing`);
      assert.equal(fs.readFileSync(committedPath, 'utf8'), current);
    });

    test('GET /metrics: Prometheus text with pool, volume and NBD series', async () => {
      metrics.observeRequest('read', 4096, 0.0004, 0);
      metrics.observeRequest('write', 65536, 0.002, 0);
      metrics.observeRequest('write', 4096, 0.001, 28);
      const reply = await call('GET', '/metrics');
      assert.equal(reply.status, 200);
      assert.match(reply.headers.get('content-type') ?? '', /^text\/plain/);
      assert.match(reply.text, new RegExp(`^thinarray_pool_size_bytes ${array.poolShow().sizeBytes}$`, 'm'));
      assert.match(reply.text, /^thinarray_pool_used_bytes 0$/m);
      assert.match(reply.text, new RegExp(`^thinarray_volume_capacity_bytes\\{volume="vm1"\\} ${20 * GiB}$`, 'm'));
      assert.match(reply.text, /^thinarray_volume_allocated_bytes\{volume="vm1"\} 0$/m);
      assert.doesNotMatch(reply.text, /volume="scratch\.0"/, 'deleted volumes leave the scrape');
      assert.match(reply.text, /^thinarray_nbd_requests_total\{command="write",errno="28"\} 1$/m);
      assert.match(reply.text, /^thinarray_nbd_bytes_total\{command="write"\} 69632$/m);
      assert.match(reply.text, /^thinarray_nbd_request_duration_seconds_count\{command="read"\} 1$/m);
      assert.match(reply.text, /^thinarray_nbd_connections 0$/m);
    });
  });
});
