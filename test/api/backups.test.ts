/**
 * The backup routes in-process against the real array: 202 answers with the catalog entry or the
 * job id, sizes as text, the list filter, delete with and without purgeMedia, candidates, copies,
 * and validation errors that name the field and record nothing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
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
    const created = await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'a.tbk')}`, via: 'compact', labels: ['l1'], description: 'd' });
    assert.equal(created.status, 202, JSON.stringify(created.json));
    assert.match(created.json.id, /^bk-\d+$/);
    assert.match(created.json.jobId, /^job-/);
    assert.equal((await jobEnd(created.json.jobId)).state, 'succeeded');
    const shown = await call('GET', `/backups/${created.json.id}`);
    assert.equal(shown.json.state, 'complete');
    assert.equal(shown.json.extents, 3);
    assert.deepEqual(shown.json.labels, ['l1']);
    assert.equal(shown.json.method, 'compact');

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

  test('candidates size the next backup per media root; a copy is its own entry with the original\'s management information', async () => {
    const candidates = await call('GET', '/volumes/vm/backup-candidates');
    assert.equal(candidates.status, 200, JSON.stringify(candidates.json));
    assert.equal(candidates.json.volume, 'vm');
    const [first] = candidates.json.candidates;
    assert.equal(candidates.json.candidates.length, 1);
    assert.equal(first.root, media);
    assert.equal(first.medium, `file:${path.join(media, 'vm-<id>.tbk')}`);
    assert.ok(first.freeBytes > 0 && first.fitsFull, JSON.stringify(first));
    assert.ok(first.fullBytes >= 3 * 65536, 'a full backup holds at least the used data');

    const original = await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'orig.tbk')}`, labels: ['monthly'], description: 'keep' });
    assert.equal((await jobEnd(original.json.jobId)).state, 'succeeded');
    fs.mkdirSync(path.join(media, 'vault'));
    const copy = await call('POST', `/backups/${original.json.id}/copy`, { to: `dir:${path.join(media, 'vault')}`, mediaSizeBytes: '64K' });
    assert.equal(copy.status, 202, JSON.stringify(copy.json));
    assert.equal(copy.json.copiedFrom, original.json.id);
    assert.equal(copy.json.state, 'running');
    assert.equal((await jobEnd(copy.json.jobId)).state, 'succeeded');
    const copied = (await call('GET', `/backups/${copy.json.id}`)).json;
    const first1 = (await call('GET', `/backups/${original.json.id}`)).json;
    assert.equal(copied.state, 'complete');
    assert.equal(copied.digest, first1.digest);
    assert.deepEqual([copied.volumeUuid, copied.pointInTime, copied.labels, copied.description], [first1.volumeUuid, first1.pointInTime, ['monthly'], 'keep']);
    assert.ok(fs.readdirSync(path.join(media, 'vault')).length >= 3, 'several 64 KiB cartridges');
    // The copy restores on its own, and the original's base status is unchanged: an incremental is possible.
    const verify = await call('POST', '/backups/verify', { source: copy.json.id });
    assert.equal((await jobEnd(verify.json.jobId)).state, 'succeeded');
    const after = (await call('GET', '/volumes/vm/backup-candidates')).json.candidates;
    assert.notEqual(after[0].incrementalBytes, null);
    assert.deepEqual(after.map((c: { medium: string }) => c.medium), [`file:${path.join(media, 'vm-<id>.tbk')}`, `dir:${path.join(media, 'vault')}`], 'the vault now holds cartridges: a cartridge set');

    const before = await catalogIds();
    assertRefused(await call('POST', `/backups/${original.json.id}/copy`, {}), 400, 'to');
    assertRefused(await call('POST', `/backups/${original.json.id}/copy`, { to: `file:${path.join(media, 'orig.tbk')}` }), 400, 'to');
    assertRefused(await call('POST', `/backups/${original.json.id}/copy`, { to: `dir:${path.join(media, 'vault')}` }), 400, 'mediaSizeBytes');
    assertRefused(await call('POST', `/backups/${original.json.id}/copy`, { to: `file:${path.join(media, 'missing', 'c.tbk')}` }), 404, 'to');
    assertRefused(await call('POST', `/backups/${original.json.id}/copy`, { to: `dir:${path.join(media, 'missing')}`, mediaSizeBytes: '1M' }), 404, 'to');
    fs.writeFileSync(path.join(media, 'taken.tbk'), 'not to be overwritten');
    assertRefused(await call('POST', `/backups/${original.json.id}/copy`, { to: `file:${path.join(media, 'taken.tbk')}` }), 409, 'to');
    assert.equal(fs.readFileSync(path.join(media, 'taken.tbk'), 'utf8'), 'not to be overwritten');
    assertOutsideRoots(await call('POST', `/backups/${original.json.id}/copy`, { to: 'file:/etc/c.tbk' }));
    assert.equal((await call('POST', '/backups/bk-999999/copy', { to: `file:${path.join(media, 'c.tbk')}` })).status, 404);
    assertRefused(await call('POST', '/backups/nope/copy', { to: `file:${path.join(media, 'c.tbk')}` }), 400, 'id');
    assert.equal((await call('GET', '/volumes/nope/backup-candidates')).status, 404);
    assertRefused(await call('GET', '/volumes/..%2Fx/backup-candidates'), 400, 'name');
    assert.deepEqual(await catalogIds(), before);
    assert.equal(fs.existsSync(path.join(media, 'missing')), false, 'a missing directory is not created');
  });

  test('a backup region (volume:NAME): held read-only while it holds the backup, restored from by id and by medium, emptied by purge or failure', async () => {
    await array.volumeCreate({ name: 'vault', sizeBytes: 4 * MiB });
    await array.volumeCreate({ name: 'tiny', sizeBytes: MiB + 64 * 1024 });
    const candidates = (await call('GET', '/volumes/vm/backup-candidates')).json.candidates as { medium: string; freeBytes: number; fitsFull: boolean }[];
    const vaultCandidate = candidates.find((candidate) => candidate.medium === 'volume:vault');
    assert.ok(vaultCandidate?.fitsFull, JSON.stringify(candidates));
    assert.equal(vaultCandidate.freeBytes, 4 * MiB - MiB, 'the region less the megabyte before the stream');
    assert.equal(candidates.some((candidate) => candidate.medium === 'volume:vm'), false, 'not the volume backed up');

    const created = await call('POST', '/backups', { volume: 'vm', to: 'volume:vault' });
    assert.equal(created.status, 202, JSON.stringify(created.json));
    assert.equal((await jobEnd(created.json.jobId)).state, 'succeeded');
    const entry = (await call('GET', `/backups/${created.json.id}`)).json;
    assert.equal(entry.state, 'complete');
    assert.equal(entry.medium, 'volume:vault');
    const vault = (await call('GET', '/volumes/vault')).json;
    assert.equal(vault.holdsBackup, entry.id);
    assert.ok(vault.allocatedBytes >= entry.streamBytes, 'the stream is in the region');
    assert.equal(array.openExport('vault')?.readOnly, true, 'exported read-only while it holds the backup');
    await assert.rejects(array.openExport('vault')!.write(0, Buffer.alloc(4096), { fua: false }), /holds backup/);

    // Held: not deleted, resized or restored into; no second backup into it.
    assert.equal((await call('DELETE', '/volumes/vault')).status, 409);
    assert.equal((await call('PATCH', '/volumes/vault', { sizeBytes: 8 * MiB })).status, 409);
    assert.equal((await call('POST', '/restores', { source: entry.id, to: 'vault', method: 'writeback' })).status, 409);
    const again = await call('POST', '/backups', { volume: 'vm', to: 'volume:vault' });
    assert.equal(again.status, 409);
    assert.match(again.json.error.message, /already holds backup/);

    // Restores from the region, by catalog id and by medium, are bit-exact.
    for (const [source, target] of [[entry.id, 'from-id'], ['volume:vault', 'from-medium']] as const) {
      const restore = await call('POST', '/restores', { source, to: target, create: true });
      assert.equal(restore.status, 202, JSON.stringify(restore.json));
      assert.equal((await jobEnd(restore.json.jobId)).state, 'succeeded');
      assert.deepEqual(await array.volume(target).read(0, 8 * MiB), await array.volume('vm').read(0, 8 * MiB), `${source} restores equal`);
    }
    assert.equal((await jobEnd((await call('POST', '/backups/verify', { source: 'volume:vault' })).json.jobId)).state, 'succeeded');

    // A region too small for the stream (or a pool without room for it) is refused before anything is recorded.
    const before = await catalogIds();
    const tooSmall = await call('POST', '/backups', { volume: 'vm', to: 'volume:tiny' });
    assertRefused(tooSmall, 507, 'to');
    assert.match(tooSmall.json.error.message, /holds a stream of at most 65536 bytes/);
    assert.deepEqual(await catalogIds(), before);

    // Purging the backup empties the region, which is then free again.
    assert.equal((await call('DELETE', `/backups/${entry.id}?purgeMedia=true`)).status, 204);
    const emptied = (await call('GET', '/volumes/vault')).json;
    assert.equal(emptied.allocatedBytes, 0);
    assert.equal(emptied.holdsBackup, null);
    assert.equal(array.openExport('vault')?.readOnly, false);
    assert.equal((await call('DELETE', '/volumes/vault')).status, 204);
    for (const name of ['tiny', 'from-id', 'from-medium']) assert.equal((await call('DELETE', `/volumes/${name}`)).status, 204);
  });

  test('a backup into a region cancelled mid-stream leaves it empty; purging that failed entry later leaves the volume alone', async () => {
    await array.volumeCreate({ name: 'big', sizeBytes: 64 * MiB });
    for (let offset = 0; offset < 48 * MiB; offset += 4 * MiB) await array.volume('big').write(offset, Buffer.alloc(4 * MiB, 0x40 + offset / (4 * MiB)), { fua: false });
    await array.volumeCreate({ name: 'vault2', sizeBytes: 64 * MiB });
    const started = await call('POST', '/backups', { volume: 'big', to: 'volume:vault2' });
    assert.equal(started.status, 202, JSON.stringify(started.json));
    // Cancelled once part of the stream is in the region.
    while (array.jobs.get(started.json.jobId).progress.doneBytes === 0) await new Promise((resolve) => setImmediate(resolve));
    // Cancelled in the same turn of the event loop: the job cannot move on in between.
    assert.equal(array.jobs.cancel(started.json.jobId).state, 'running', 'the backup ended before the cancel: make the source larger');
    assert.equal((await jobEnd(started.json.jobId)).state, 'cancelled');
    assert.equal((await call('GET', `/backups/${started.json.id}`)).json.state, 'failed');
    const region = (await call('GET', '/volumes/vault2')).json;
    assert.deepEqual([region.allocatedBytes, region.holdsBackup], [0, null], 'the partial stream is gone');
    assert.equal(array.openExport('vault2')?.readOnly, false);

    // The volume is then an ordinary one again; purging the failed entry must not touch its data.
    await array.volume('vault2').write(0, Buffer.alloc(MiB, 0x77), { fua: false });
    assert.equal((await call('DELETE', `/backups/${started.json.id}?purgeMedia=true`)).status, 204);
    assert.deepEqual(await array.volume('vault2').read(0, MiB), Buffer.alloc(MiB, 0x77), 'the volume kept its data');
    for (const name of ['big', 'vault2']) assert.equal((await call('DELETE', `/volumes/${name}`)).status, 204);
  });

  test('a volume named by a restore that has not ended (waiting on a FIFO) is no backup region until the restore ends', async () => {
    await array.volumeCreate({ name: 'rt', sizeBytes: 4 * MiB });
    const fifo = path.join(media, 'restore-wait.fifo');
    execFileSync('mkfifo', [fifo]);
    const restore = await call('POST', '/restores', { source: `file:${fifo}`, to: 'rt', method: 'writeback' });
    assert.equal(restore.status, 202, JSON.stringify(restore.json));
    const refused = await call('POST', '/backups', { volume: 'vm', to: 'volume:rt' });
    assertRefused(refused, 409, 'to');
    assert.match(refused.json.error.message, /target of a restore/);
    assert.equal((await call('POST', `/jobs/${restore.json.jobId}/cancel`)).status, 200);
    assert.equal((await jobEnd(restore.json.jobId)).state, 'cancelled');
    const accepted = await call('POST', '/backups', { volume: 'vm', to: 'volume:rt' });
    assert.equal(accepted.status, 202, JSON.stringify(accepted.json));
    assert.equal((await jobEnd(accepted.json.jobId)).state, 'succeeded');
    assert.equal((await call('DELETE', `/backups/${accepted.json.id}?purgeMedia=true`)).status, 204);
    assert.equal((await call('DELETE', '/volumes/rt')).status, 204);
    fs.rmSync(fifo);
  });

  test('refused requests name the field and record nothing', async () => {
    const before = await catalogIds();
    assertRefused(await call('POST', '/backups', { to: `file:${path.join(media, 'x.tbk')}` }), 400, 'volume');
    assertRefused(await call('POST', '/backups', { volume: 'vm' }), 400, 'to');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: 'file:relative.tbk' }), 400, 'to');
    assertOutsideRoots(await call('POST', '/backups', { volume: 'vm', to: 'file:/etc/x.tbk' }));
    assertOutsideRoots(await call('POST', '/backups', { volume: 'vm', to: `file:${media}/../x.tbk` }));
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'missing', 'x.tbk')}` }), 404, 'to');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'a.tbk')}` }), 409, 'to'); // kept by the first test
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `dir:${media}` }), 400, 'mediaSizeBytes');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `dir:${media}`, mediaSizeBytes: 'big' }), 400, 'mediaSizeBytes');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'y.tbk')}`, labels: 'one' }), 400, 'labels');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'y.tbk')}`, extra: 1 }), 400, 'extra');
    // The spec's other ways of taking the point in time are refused by name until they exist.
    for (const via of ['cow', 'pair:p1']) {
      const reply = await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'y.tbk')}`, via });
      assertRefused(reply, 400, 'via');
      assert.equal(reply.json.error.code, 'UNSUPPORTED');
    }
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'y.tbk')}`, via: 'snapshot' }), 400, 'via');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: `file:${path.join(media, 'y.tbk')}`, via: 'pair:' }), 400, 'via');
    // Backup regions: a volume that exists, is not the one backed up, and is empty.
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: 'volume:nowhere' }), 404, 'to');
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: 'volume:vm' }), 400, 'to');
    await array.volumeCreate({ name: 'used', sizeBytes: MiB });
    await array.volume('used').write(0, Buffer.alloc(4096, 1), { fua: false });
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: 'volume:used' }), 409, 'to');
    await array.volumeCreate({ name: 'odd', sizeBytes: MiB + 512 });
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: 'volume:odd' }), 400, 'to'); // not whole extents
    await array.volumeCreate({ name: 'locked', sizeBytes: 2 * MiB, readOnly: true });
    assertRefused(await call('POST', '/backups', { volume: 'vm', to: 'volume:locked' }), 400, 'to');
    const notRegion = await jobEnd((await call('POST', '/backups/verify', { source: 'volume:used' })).json.jobId);
    assert.equal(notRegion.state, 'failed');
    assert.match(notRegion.error.message, /volume:used is not a backup region/);
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
