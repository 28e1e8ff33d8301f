/**
 * Backup and restore through the array: a backup streams only the used extents of the point in
 * time while the volume keeps changing; restore by remap into a new volume and by writeback into
 * a changed one both give the point in time bit for bit; a FIFO works end to end; a damaged
 * stream is caught by verify and by restore, which then leave the volume as it was or marked
 * incomplete; media outside the roots are refused.
 */
import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { openStorageArray, type StorageArray } from '../../src/array/array.js';
import { silentLogger } from '../../src/lib/log.js';
import type { ThinError } from '../../src/lib/errors.js';
import { KiB, MiB } from '../../src/lib/sizes.js';

const EXTENT = 64 * KiB;
const SIZE = 24 * MiB;

function pattern(lengthBytes: number, seed: number): Buffer {
  const buffer = Buffer.allocUnsafe(lengthBytes);
  for (let i = 0; i < lengthBytes; i++) buffer[i] = (seed * 131 + i * 7 + (i >> 11)) & 0xff;
  return buffer;
}

function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  const first = actual.findIndex((byte, i) => byte !== expected[i]);
  assert.equal(first, -1, `${what}: first difference at byte ${first}: ${actual[first]} instead of ${expected[first]}`);
}

describe('backup and restore', () => {
  let home: string;
  let media: string;
  let array: StorageArray;

  beforeEach(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-backup-'));
    media = path.join(home, 'media');
    fs.mkdirSync(media);
    array = await openStorageArray({ home, logger: silentLogger(), poolFileBytes: 512 * MiB, mediaRoots: [media] });
    array.startJobs();
  });
  afterEach(async () => {
    await array.close().catch(() => undefined);
    fs.rmSync(home, { recursive: true, force: true });
  });

  async function job(jobId: string): Promise<{ state: string; error?: { code: string; message: string }; result?: unknown; progress: { doneBytes: number; totalBytes: number } }> {
    return array.jobs.wait(jobId, 60_000);
  }

  /** Closes the array and opens it again with these options (a lower job limit, a longer commit interval). */
  async function reopen(options: { jobsRunningMax?: number; commitIntervalMs?: number } = {}): Promise<void> {
    await array.close();
    array = await openStorageArray({ home, logger: silentLogger(), poolFileBytes: 512 * MiB, mediaRoots: [media], ...options });
    array.startJobs();
  }

  /** A full backup of vm to media/full.tbk, waited for. */
  async function fullBackup(): Promise<{ id: string }> {
    const full = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'full.tbk')}` });
    assert.equal((await job(full.jobId!)).state, 'succeeded');
    return full;
  }

  async function makeSource(): Promise<Buffer> {
    await array.volumeCreate({ name: 'vm', sizeBytes: SIZE });
    const reference = Buffer.alloc(SIZE);
    for (const [offset, length, seed] of [[0, 3 * EXTENT, 1], [5 * MiB + 123, 70_000, 2], [20 * MiB, 2 * MiB, 3], [SIZE - 4096, 4096, 4]] as const) {
      const data = pattern(length, seed);
      await array.volume('vm').write(offset, data, { fua: false });
      data.copy(reference, offset);
    }
    return reference;
  }

  test('full backup to a file: only used extents, catalog entry, restore by remap and by writeback', async () => {
    const pointInTime = await makeSource();
    const entry = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'vm.tbk')}`, labels: ['nightly'], description: 'test' });
    // The volume stays online and writable; changes after the point in time are not in the backup.
    await array.volume('vm').write(20 * MiB, pattern(EXTENT, 9), { fua: false });
    const done = await job(entry.jobId!);
    assert.equal(done.state, 'succeeded', JSON.stringify(done.error));
    const shown = array.backups.show(entry.id);
    assert.equal(shown.state, 'complete');
    assert.equal(shown.extents, 3 + 2 + 32 + 1);
    assert.deepEqual(shown.labels, ['nightly']);
    const fileBytes = fs.statSync(path.join(media, 'vm.tbk')).size;
    assert.ok(fileBytes <= shown.dataBytes * 1.01 + 64 * KiB, `the medium (${fileBytes} bytes) follows the used data (${shown.dataBytes})`);
    assert.equal(array.volumeList().filter((v) => v.name.endsWith('-view')).length, 0, 'the view is gone');

    const remap = await array.backups.restore({ source: entry.id, to: 'restored', method: 'remap', create: true });
    assert.equal((await job(remap.jobId)).state, 'succeeded');
    assertSameBytes(await array.volume('restored').read(0, SIZE), pointInTime, 'remap');
    assert.equal(array.volumeShow('restored').mappedExtents, shown.extents);

    // Writeback into the changed original: changed extents come back, extents written since are trimmed.
    await array.volume('vm').write(10 * MiB, pattern(EXTENT, 10), { fua: false });
    const writeback = await array.backups.restore({ source: `file:${path.join(media, 'vm.tbk')}`, to: 'vm', method: 'writeback', create: false });
    assert.equal((await job(writeback.jobId)).state, 'succeeded');
    assertSameBytes(await array.volume('vm').read(0, SIZE), pointInTime, 'writeback');
    assert.equal(array.volumeShow('vm').mappedExtents, shown.extents);
    assert.equal((await array.check({ repair: false })).ok, true);
  });

  /**
   * The largest progress step one turn of the event loop saw while `jobId` ran: a job that lets the
   * loop turn between records moves by a record or two per turn; one that runs through a medium
   * chunk's records (1 MiB here) in a turn holds NBD requests of other volumes that long.
   */
  async function largestStepPerTurn(jobId: string): Promise<{ largestStepBytes: number; turns: number; state: string }> {
    let largestStepBytes = 0;
    let turns = 0;
    let seenBytes = 0;
    let running = true;
    const tick = (): void => {
      if (!running) return;
      const doneBytes = array.jobs.get(jobId).progress.doneBytes;
      largestStepBytes = Math.max(largestStepBytes, doneBytes - seenBytes);
      seenBytes = doneBytes;
      turns++;
      setImmediate(tick);
    };
    setImmediate(tick);
    const done = await job(jobId);
    running = false;
    return { largestStepBytes, turns, state: done.state };
  }

  test('remap and writeback restores and a verify let the event loop turn between records, so other volumes stay served', async () => {
    await makeSource();
    await array.volume('vm').write(8 * MiB, pattern(8 * MiB, 5), { fua: false }); // 128 more records: 8 medium chunks
    const full = await fullBackup();
    const records = array.backups.show(full.id).extents;
    assert.ok(records >= 160, `${records} records`);

    const remap = await array.backups.restore({ source: full.id, to: 'restored', method: 'remap', create: true });
    const remapTurns = await largestStepPerTurn(remap.jobId);
    assert.equal(remapTurns.state, 'succeeded');
    assert.ok(remapTurns.largestStepBytes <= 2 * EXTENT, `remap: ${remapTurns.largestStepBytes} bytes restored in one turn of the event loop (${remapTurns.turns} turns)`);

    const writeback = await array.backups.restore({ source: full.id, to: 'vm', method: 'writeback', create: false });
    const writebackTurns = await largestStepPerTurn(writeback.jobId);
    assert.equal(writebackTurns.state, 'succeeded');
    assert.ok(writebackTurns.largestStepBytes <= 2 * EXTENT, `writeback: ${writebackTurns.largestStepBytes} bytes restored in one turn of the event loop (${writebackTurns.turns} turns)`);

    const verify = await array.backups.verify(full.id);
    const verifyTurns = await largestStepPerTurn(verify.jobId);
    assert.equal(verifyTurns.state, 'succeeded');
    assert.ok(verifyTurns.largestStepBytes <= 2 * EXTENT, `verify: ${verifyTurns.largestStepBytes} bytes checked in one turn of the event loop (${verifyTurns.turns} turns)`);
  });

  test('a volume rewritten, partly overwritten and trimmed while its backup streams: the backup holds the point in time', async () => {
    // 96 MiB: the stream is 96 chunks for a ring of 16, so the mover waits for the medium while
    // the writes below (from the last extent back, ahead of it) hand extents over to the view.
    const size = 96 * MiB;
    await array.volumeCreate({ name: 'busy', sizeBytes: size });
    const pointInTime = pattern(size, 40);
    await array.volume('busy').write(0, pointInTime, { fua: false });
    const entry = await array.backups.create({ volume: 'busy', to: `file:${path.join(media, 'busy.tbk')}` });
    const volume = array.volume('busy');
    let writesWhileRunning = 0;
    for (let extent = size / EXTENT - 1; extent >= 0; extent--) {
      const offset = extent * EXTENT;
      if (extent % 3 === 0) await volume.write(offset, pattern(EXTENT, 41), { fua: false });
      else if (extent % 3 === 1) await volume.write(offset + 1000, pattern(100, 42), { fua: false });
      else await volume.trim(offset, EXTENT, { fua: false });
      if (array.jobs.get(entry.jobId!).state === 'running') writesWhileRunning++;
    }
    assert.equal((await job(entry.jobId!)).state, 'succeeded');
    assert.ok(writesWhileRunning > 0, 'some changes landed while the backup was streaming');
    const restore = await array.backups.restore({ source: entry.id, to: 'busy-restored', method: 'remap', create: true });
    assert.equal((await job(restore.jobId)).state, 'succeeded');
    assertSameBytes(await array.volume('busy-restored').read(0, size), pointInTime, 'restore of a backup taken under writes');
    assert.equal((await array.check({ repair: false })).ok, true);
  });

  test('incremental backups stream only changed extents and restore through their chain', async () => {
    await makeSource();
    const full = await fullBackup();
    const volume = array.volume('vm');
    await volume.write(MiB, pattern(2 * EXTENT, 20), { fua: false }); // new extents
    await volume.write(20 * MiB + 100, pattern(10, 21), { fua: false }); // a changed extent
    await volume.trim(20 * MiB + 8 * EXTENT, 2 * EXTENT, { fua: false }); // trimmed extents
    const pointInTime = await volume.read(0, SIZE);
    const incremental = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'inc1.tbk')}`, incremental: true });
    await volume.write(0, pattern(EXTENT, 22), { fua: false }); // after the point in time
    assert.equal((await job(incremental.jobId!)).state, 'succeeded');
    const entry = array.backups.show(incremental.id);
    assert.equal(entry.kind, 'incremental');
    assert.equal(entry.parentId, full.id);
    assert.equal(entry.extents, 3, 'two new extents and one changed; trimmed ones are in the map, not the data');
    const restore = await job((await array.backups.restore({ source: incremental.id, to: 'again', method: 'remap', create: true })).jobId);
    assert.equal(restore.state, 'succeeded', JSON.stringify(restore.error));
    assertSameBytes(await array.volume('again').read(0, SIZE), pointInTime, 'chain restore');
    const chainBytes = array.backups.show(full.id).dataBytes + entry.dataBytes;
    assert.deepEqual([restore.progress.doneBytes, restore.progress.totalBytes], [chainBytes, chainBytes], 'progress counts the whole chain');
    // Reopened, tracking continues from the incremental: the next one holds only the later change.
    await reopen();
    const second = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'inc2.tbk')}`, incremental: true });
    assert.equal((await job(second.jobId!)).state, 'succeeded');
    assert.equal(array.backups.show(second.id).extents, 1);
    assert.equal(array.backups.show(second.id).parentId, incremental.id);
  });

  test('a writeback restore into a tracked volume marks its extents in one commit, not one per extent', async () => {
    const pointInTime = await makeSource();
    const full = await fullBackup();
    const volume = array.volume('vm');
    await volume.write(10 * MiB, pattern(EXTENT, 30), { fua: false }); // to be trimmed by the restore
    await array.sync();
    const markCommitsBefore = array.committer.changeMarkCommitCount;
    const writeback = await array.backups.restore({ source: full.id, to: 'vm', method: 'writeback', create: false });
    assert.equal((await job(writeback.jobId)).state, 'succeeded');
    const markCommits = array.committer.changeMarkCommitCount - markCommitsBefore;
    const restoredExtents = array.backups.show(full.id).extents!;
    assert.equal(restoredExtents, 38);
    assert.ok(markCommits <= 2, `${markCommits} commits of change marks for a restore of ${restoredExtents} extents (one per first write would be ${restoredExtents})`);
    assertSameBytes(await volume.read(0, SIZE), pointInTime, 'writeback');
    // The marks are all there: the next incremental holds every extent the restore wrote.
    const incremental = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'inc.tbk')}`, incremental: true });
    assert.equal((await job(incremental.jobId!)).state, 'succeeded');
    assert.equal(array.backups.show(incremental.id).extents, restoredExtents);
  });

  test('a first write after a backup waits for its mark alone: in the metadata before the write returns, no data sync', async () => {
    // No background commit in the middle of the counts.
    await reopen({ commitIntervalMs: 3_600_000 });
    await makeSource();
    await fullBackup();
    await array.sync();
    const volume = array.volume('vm');
    const reader = new Database(path.join(home, 'meta.db'), { readonly: true });
    try {
      const markedExtents = (): number[] => {
        const rows = reader.prepare("SELECT page_index, bits FROM change_pages WHERE volume_id = ? AND slot = 'current'").all(volume.row.id) as Array<{ page_index: number; bits: Buffer }>;
        const extents: number[] = [];
        for (const { page_index: pageIndex, bits } of rows) {
          for (let bit = 0; bit < bits.length * 8; bit++) if ((bits[bit >> 3]! >> (bit & 7)) & 1) extents.push(pageIndex * bits.length * 8 + bit);
        }
        return extents;
      };
      assert.deepEqual(markedExtents(), []);
      const commitsBefore = array.committer.commitCount;
      const markCommitsBefore = array.committer.changeMarkCommitCount;
      await volume.write(7 * EXTENT + 100, pattern(10, 40), { fua: false });
      assert.deepEqual(markedExtents(), [7], 'the mark was committed before the write returned');
      assert.equal(array.committer.changeMarkCommitCount - markCommitsBefore, 1);
      assert.equal(array.committer.commitCount, commitsBefore, 'no full commit (no fdatasync of the pool) for a mark');
      // A second write to the same extent needs nothing more.
      await volume.write(7 * EXTENT + 200, pattern(10, 41), { fua: false });
      assert.equal(array.committer.changeMarkCommitCount - markCommitsBefore, 1);
      // Marks of writes issued together share one commit (the first one's, or the one queued after it).
      await Promise.all([8, 9, 10, 11].map((extent) => volume.write(extent * EXTENT, pattern(10, extent), { fua: false })));
      assert.deepEqual(markedExtents(), [7, 8, 9, 10, 11]);
      assert.ok(array.committer.changeMarkCommitCount - markCommitsBefore <= 3);
      // A FLUSH (full sync) asked for while a mark commit runs still gets a full commit.
      const marking = volume.write(12 * EXTENT, pattern(10, 12), { fua: false });
      await Promise.all([marking, array.sync()]);
      assert.equal(array.committer.commitCount, commitsBefore + 1);
    } finally {
      reader.close();
    }
  });

  test('a backup cancelled while queued leaves nothing behind: entry failed, view dropped, its changes go to the next incremental', async () => {
    // One job at a time, so the second backup waits queued behind one blocked on a FIFO with no reader.
    await reopen({ jobsRunningMax: 1 });
    await makeSource();
    const full = await fullBackup();
    await array.volume('vm').write(MiB, pattern(2 * EXTENT, 30), { fua: false }); // two changed extents

    await array.volumeCreate({ name: 'other', sizeBytes: SIZE });
    await array.volume('other').write(0, pattern(EXTENT, 31), { fua: false });
    const fifo = path.join(media, 'blocked');
    execFileSync('mkfifo', [fifo]);
    const blocker = await array.backups.create({ volume: 'other', to: `file:${fifo}` });
    // The blocker's open of the FIFO holds a thread-pool thread until a reader comes: whatever
    // happens in between, one comes (a failed assertion would otherwise leave the test run hanging).
    try {
      const queued = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'never.tbk')}`, incremental: true });
      assert.equal(array.jobs.get(queued.jobId!).state, 'queued');
      assert.equal(array.volumeList().filter((v) => v.name.endsWith('-view')).length, 2, 'both backups hold a point-in-time view');

      array.jobs.cancel(queued.jobId!);
      assert.equal((await job(queued.jobId!)).state, 'cancelled');
      const failed = array.backups.show(queued.id);
      assert.equal(failed.state, 'failed');
      assert.match(failed.error ?? '', /ended before it ran/);
      assert.equal(fs.existsSync(path.join(media, 'never.tbk')), false, 'no medium was written');
      assert.equal(array.volumeList().filter((v) => v.name.endsWith('-view')).length, 1, "the cancelled backup's view is gone");
    } finally {
      spawn('cat', [fifo], { stdio: ['ignore', 'ignore', 'inherit'] });
    }

    // The blocked backup got through (a reader on the FIFO); the next incremental of vm still
    // builds on the full backup and holds the two extents the cancelled one had set aside.
    assert.equal((await job(blocker.jobId!)).state, 'succeeded');
    const next = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'next.tbk')}`, incremental: true });
    assert.equal((await job(next.jobId!)).state, 'succeeded');
    assert.equal(array.backups.show(next.id).parentId, full.id);
    assert.equal(array.backups.show(next.id).extents, 2);
    assert.equal(array.volumeList().filter((v) => v.name.endsWith('-view')).length, 0);
  });

  test('candidates name the media roots with room; a backup copy keeps its management information', async () => {
    await makeSource();
    const [candidate] = await array.backups.candidates('vm');
    assert.equal(candidate!.root, media);
    assert.ok(candidate!.freeBytes > 0 && candidate!.fitsFull);
    assert.ok(candidate!.fullBytes >= array.volumeShow('vm').allocatedBytes);
    assert.equal(candidate!.incrementalBytes, null, 'no backup yet: no incremental');
    const full = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'a.tbk')}`, labels: ['weekly'], description: 'kept' });
    assert.equal((await job(full.jobId!)).state, 'succeeded');
    fs.mkdirSync(path.join(media, 'vault'));
    const copy = await array.backups.copy(full.id, `dir:${path.join(media, 'vault')}`, 2 * MiB);
    const copied = await job(copy.jobId!);
    assert.equal(copied.state, 'succeeded', JSON.stringify(copied.error));
    const entry = array.backups.show(copy.id);
    assert.equal(entry.copiedFrom, full.id);
    assert.equal(entry.digest, array.backups.show(full.id).digest);
    assert.deepEqual(entry.labels, ['weekly']);
    assert.ok(fs.readdirSync(path.join(media, 'vault')).length >= 2, 'spread over cartridges');
    const restore = await job((await array.backups.restore({ source: copy.id, to: 'fromcopy', method: 'remap', create: true })).jobId);
    assert.equal(restore.state, 'succeeded', JSON.stringify(restore.error));
    assertSameBytes(await array.volume('fromcopy').read(0, SIZE), await array.volume('vm').read(0, SIZE), 'restore from the copy');
    assert.equal((await array.backups.candidates('vm'))[0]!.incrementalBytes !== null, true);
  });

  test('a base of incrementals is kept until a copy stands in for it; purges take only their own stream', async () => {
    await makeSource();
    const full = await fullBackup();
    await array.volume('vm').write(MiB, pattern(EXTENT, 30), { fua: false });
    const pointInTime = await array.volume('vm').read(0, SIZE);
    const incremental = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'inc.tbk')}`, incremental: true });
    assert.equal((await job(incremental.jobId!)).state, 'succeeded');

    // The base of an incremental: refused, naming it, nothing changed.
    await assert.rejects(array.backups.delete(full.id, true), (error: ThinError) => error.code === 'CONFLICT' && error.message.includes(`base of ${incremental.id} (incremental)`));
    assert.equal(array.backups.show(full.id).state, 'complete');
    assert.ok(fs.existsSync(path.join(media, 'full.tbk')));

    // A copy on cartridges stands in: the original may go, the chain restores through the copy.
    fs.mkdirSync(path.join(media, 'vault'));
    const copy = await array.backups.copy(full.id, `dir:${path.join(media, 'vault')}`, 1 * MiB);
    assert.equal((await job(copy.jobId!)).state, 'succeeded');
    await array.backups.delete(full.id, true);
    assert.equal(fs.existsSync(path.join(media, 'full.tbk')), false, 'purged');
    const restore = await job((await array.backups.restore({ source: incremental.id, to: 'through-copy', method: 'remap', create: true })).jobId);
    assert.equal(restore.state, 'succeeded', JSON.stringify(restore.error));
    assert.deepEqual(restore.result, { volume: 'through-copy', method: 'remap', backups: [copy.id, incremental.id] });
    assertSameBytes(await array.volume('through-copy').read(0, SIZE), pointInTime, 'the chain through the copy');
    // Now the copy is the last holder of the base: refused in turn.
    await assert.rejects(array.backups.delete(copy.id, true), (error: ThinError) => error.code === 'CONFLICT');
    // A copy of that copy, its original gone: read from the copy, and named after the original stream.
    const copy2 = await array.backups.copy(copy.id, `file:${path.join(media, 'copy2.tbk')}`);
    const copied2 = await job(copy2.jobId!);
    assert.equal(copied2.state, 'succeeded', JSON.stringify(copied2.error));
    assert.deepEqual([array.backups.show(copy2.id).copiedFrom, array.backups.show(copy2.id).digest], [full.id, array.backups.show(copy.id).digest]);
    // Two holders deleted at once: one delete wins, the other is refused, so one holder remains.
    fs.writeFileSync(path.join(media, 'vault', `${full.id}.notes`), 'not a cartridge');
    const outcomes = await Promise.allSettled([array.backups.delete(copy.id, true), array.backups.delete(copy2.id, true)]);
    assert.deepEqual(outcomes.map((outcome) => outcome.status).sort(), ['fulfilled', 'rejected'], JSON.stringify(outcomes));
    const survivor = outcomes[0]!.status === 'fulfilled' ? copy2 : copy;
    const again = await job((await array.backups.restore({ source: incremental.id, to: 'through-survivor', method: 'remap', create: true })).jobId);
    assert.equal(again.state, 'succeeded', JSON.stringify(again.error));
    assertSameBytes(await array.volume('through-survivor').read(0, SIZE), pointInTime, 'the chain through the remaining copy');
    // Without dependents, purging a copy on cartridges removes its cartridges (named after the
    // original's id), and only those.
    await array.backups.delete(incremental.id, true);
    assert.equal((await array.backups.candidates('vm'))[0]!.incrementalBytes, null, 'the tracking base is gone: the next backup is a full one, as candidates say');
    await array.backups.delete(survivor.id, true);
    assert.deepEqual(fs.readdirSync(path.join(media, 'vault')), [`${full.id}.notes`], 'cartridges purged, the look-alike kept');
    assert.equal(fs.existsSync(path.join(media, 'copy2.tbk')), false);

    // A failed copy holds nothing: it does not stand in for its original.
    const base = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'base.tbk')}` });
    assert.equal((await job(base.jobId!)).state, 'succeeded');
    await array.volume('vm').write(2 * MiB, pattern(EXTENT, 31), { fua: false });
    const onBase = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'onbase.tbk')}`, incremental: true });
    assert.equal((await job(onBase.jobId!)).state, 'succeeded');
    execFileSync('mkfifo', [path.join(media, 'nobody.fifo')]);
    const doomed = await array.backups.copy(base.id, `file:${path.join(media, 'nobody.fifo')}`);
    while (array.jobs.get(doomed.jobId!)?.state !== 'running') await new Promise((resolve) => setTimeout(resolve, 20));
    await new Promise((resolve) => setTimeout(resolve, 200)); // waiting for a reader by now
    // Meanwhile the copy job holds its source: no delete may take it away under the job.
    await assert.rejects(array.backups.delete(base.id, true), (error: ThinError) => error.code === 'BUSY' && /being read by a restore, verify or copy job/.test(error.message));
    assert.ok(fs.existsSync(path.join(media, 'base.tbk')));
    array.jobs.cancel(doomed.jobId!);
    assert.equal((await job(doomed.jobId!)).state, 'cancelled', 'a copy waiting on a FIFO cancels');
    assert.equal(array.backups.show(doomed.id).state, 'failed');
    await assert.rejects(array.backups.delete(base.id, false), (error: ThinError) => error.code === 'CONFLICT' && error.message.includes(onBase.id));

    // Two entries naming one file (the first's file moved away, a second backup made there):
    // purging the first would take the second's stream, so it is refused.
    const first = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'same.tbk')}` });
    assert.equal((await job(first.jobId!)).state, 'succeeded');
    fs.renameSync(path.join(media, 'same.tbk'), path.join(media, 'moved.tbk'));
    const second = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'same.tbk')}` });
    assert.equal((await job(second.jobId!)).state, 'succeeded');
    await assert.rejects(array.backups.delete(first.id, true), (error: ThinError) => error.code === 'CONFLICT' && error.message.includes(second.id));
    await array.backups.delete(first.id, false);
    const verify = await job((await array.backups.verify(second.id)).jobId);
    assert.equal(verify.state, 'succeeded', 'the second backup\'s stream is intact');
  });

  test('a FIFO carries a backup straight into a restore', async () => {
    const pointInTime = await makeSource();
    const fifo = path.join(media, 'pipe');
    execFileSync('mkfifo', [fifo]);
    const backup = await array.backups.create({ volume: 'vm', to: `file:${fifo}` });
    const restore = await array.backups.restore({ source: `file:${fifo}`, to: 'copy', method: 'remap', create: true });
    const [b, r] = await Promise.all([job(backup.jobId!), job(restore.jobId)]);
    assert.equal(b.state, 'succeeded', JSON.stringify(b.error));
    assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
    assertSameBytes(await array.volume('copy').read(0, SIZE), pointInTime, 'FIFO remap');
  });

  test('damage is caught by verify and restore; the target is left as it was or marked incomplete', async () => {
    await makeSource();
    const file = path.join(media, 'vm.tbk');
    const entry = await array.backups.create({ volume: 'vm', to: `file:${file}` });
    assert.equal((await job(entry.jobId!)).state, 'succeeded');
    const good = await job((await array.backups.verify(entry.id)).jobId);
    assert.equal(good.state, 'succeeded', JSON.stringify(good.error));

    const bytes = fs.readFileSync(file);
    bytes[Math.floor(bytes.length / 2)] ^= 0x40;
    fs.writeFileSync(path.join(media, 'flipped.tbk'), bytes);
    fs.writeFileSync(path.join(media, 'short.tbk'), bytes.subarray(0, bytes.length - 1000));
    for (const damaged of ['flipped.tbk', 'short.tbk']) {
      const verify = await job((await array.backups.verify(`file:${path.join(media, damaged)}`)).jobId);
      assert.equal(verify.state, 'failed', damaged);
      assert.equal(verify.error?.code, 'CORRUPT', `${damaged}: ${verify.error?.message}`);
    }
    const before = await array.volume('vm').read(0, SIZE);
    await array.volume('vm').write(0, pattern(EXTENT, 11), { fua: false });
    const changed = await array.volume('vm').read(0, SIZE);
    const remapInto = await job((await array.backups.restore({ source: `file:${path.join(media, 'flipped.tbk')}`, to: 'vm', method: 'remap', create: false })).jobId);
    assert.equal(remapInto.state, 'failed');
    assertSameBytes(await array.volume('vm').read(0, SIZE), changed, 'remap of a damaged stream leaves the volume as it was');
    assert.equal(array.volumeShow('vm').state, 'ready');
    const writeback = await job((await array.backups.restore({ source: `file:${path.join(media, 'short.tbk')}`, to: 'vm', method: 'writeback', create: false })).jobId);
    assert.equal(writeback.state, 'failed');
    assert.equal(array.volumeShow('vm').state, 'incomplete', 'a failed writeback never looks good');
    void before;
  });

  test('media outside the roots, unknown ids and bad methods are refused', async () => {
    await makeSource();
    await assert.rejects(async () => array.backups.create({ volume: 'vm', to: 'file:/etc/passwd-backup' }), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(async () => array.backups.create({ volume: 'vm', to: `file:${media}/../escape.tbk` }), { code: 'INVALID_ARGUMENT' });
    fs.symlinkSync('/tmp', path.join(media, 'link'));
    await assert.rejects(async () => array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'link', 'x.tbk')}` }), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(async () => array.backups.create({ volume: 'vm', to: 'tape0' }), { code: 'INVALID_ARGUMENT' });
    assert.throws(() => array.backups.show('bk-999999'), { code: 'NOT_FOUND' });
    await assert.rejects(async () => array.backups.restore({ source: 'bk-000001', to: 'x', method: 'remap', create: true }), { code: 'NOT_FOUND' });
    await assert.rejects(async () => array.backups.restore({ source: `file:${media}/a`, to: 'vm', method: 'sideways' as 'remap', create: false }), { code: 'INVALID_ARGUMENT' });
    assert.equal(array.backups.list().length, 0, 'nothing half-made');
  });
});
