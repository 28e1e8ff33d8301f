/**
 * JobManager against a real metadata store on a temporary file: progress with a moving-window
 * rate and ETA, cancel, failure codes, wait with a timeout, list order and the finished-job cap,
 * checkpoints surviving close() and kill -9, and non-resumable jobs ending INTERRUPTED.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { MetaStore } from '../../src/meta/store.js';
import { JobAbortError, JobManager, type JobManagerOptions } from '../../src/jobs/job-manager.js';
import { JobStore } from '../../src/jobs/job-store.js';
import { ThinError } from '../../src/lib/errors.js';
import { silentLogger, type Logger } from '../../src/lib/log.js';
import { countingKind, ManualKind, type CountParams } from './kinds.js';

const CRASH_CHILD = fileURLToPath(new URL('./crash-child.js', import.meta.url));

let tempDir: string;
before(() => {
  tempDir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-jobs-'));
});
after(() => {
  fs.rmSync(tempDir, { recursive: true, force: true });
});

let storeCount = 0;
function newStorePath(): string {
  storeCount += 1;
  return path.join(tempDir, `meta-${storeCount}.db`);
}

/** A logger whose lines the test can read. */
function capturingLogger(): { logger: Logger; lines: () => Array<Record<string, unknown>> } {
  const chunks: string[] = [];
  const logger = pino({ level: 'info' }, { write: (chunk: string) => chunks.push(chunk) });
  return { logger, lines: () => chunks.map((chunk) => JSON.parse(chunk) as Record<string, unknown>) };
}

async function eventually(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

function open(storePath = newStorePath(), options: JobManagerOptions = {}, logger: Logger = silentLogger()): { store: MetaStore; manager: JobManager; storePath: string } {
  const store = new MetaStore(storePath);
  return { store, manager: new JobManager(store, logger, { persistIntervalMs: 20, ...options }), storePath };
}

const quick = (steps: number, extra: Partial<CountParams> = {}): CountParams => ({ steps, stepBytes: 1000, sleepMs: 2, ...extra });

describe('JobManager', () => {
  test('a job runs to success: ids, timestamps, progress and result kept in the store', async () => {
    const { store, manager } = open();
    manager.register(countingKind());
    const first = manager.start('count', quick(5), 'count to 5');
    assert.equal(first.id, 'job-000001');
    assert.equal(first.kind, 'count');
    assert.ok(first.state === 'queued' || first.state === 'running');
    assert.deepEqual(first.params, quick(5));
    const done = await manager.wait(first.id, 10_000);
    assert.equal(done.state, 'succeeded');
    assert.deepEqual(done.result, { counted: 5 });
    assert.equal(done.progress.doneBytes, 5000);
    assert.equal(done.progress.totalBytes, 5000);
    assert.equal(done.error, undefined);
    assert.ok(Date.parse(done.createdAt) <= Date.parse(done.startedAt!) && Date.parse(done.startedAt!) <= Date.parse(done.finishedAt!));
    assert.equal(manager.start('count', quick(1), 'again').id, 'job-000002');
    await manager.close();
    // Another manager on the same store sees the finished job as it was.
    const reopened = new JobManager(store, silentLogger());
    assert.deepEqual(reopened.get(first.id), done);
    await reopened.close();
    store.close();
  });

  test('progress: moving-window rate and ETA, falling to 0 / unknown when the job stalls', async () => {
    let nowMs = 1_000_000;
    const { store, manager } = open(undefined, { nowMs: () => nowMs });
    const kind = new ManualKind();
    manager.register(kind);
    const { id } = manager.start('manual', {}, 'driven by the test');
    const ctx = await kind.started();
    ctx.setTotal(10_000);
    assert.deepEqual(manager.get(id).progress, { doneBytes: 0, totalBytes: 10_000, rateBytesPerSec: 0, etaSeconds: null });
    for (let second = 1; second <= 4; second++) {
      nowMs += 1000;
      ctx.addDone(500); // 500 B/s
    }
    assert.deepEqual(manager.get(id).progress, { doneBytes: 2000, totalBytes: 10_000, rateBytesPerSec: 500, etaSeconds: 16 });
    for (let second = 1; second <= 10; second++) {
      nowMs += 1000;
      ctx.addDone(2000); // faster: the 10 s window forgets the slow start
    }
    const fast = manager.get(id).progress;
    assert.equal(fast.doneBytes, 22_000);
    assert.equal(fast.rateBytesPerSec, 2000);
    assert.equal(fast.etaSeconds, 0, 'done beyond the total: nothing left');
    ctx.setTotal(40_000);
    assert.equal(manager.get(id).progress.etaSeconds, 9);
    nowMs += 20_000; // stalled longer than the window
    assert.equal(manager.get(id).progress.rateBytesPerSec, 0);
    assert.equal(manager.get(id).progress.etaSeconds, null);
    kind.finish(0, { ok: true });
    const done = await manager.wait(id, 10_000);
    assert.equal(done.state, 'succeeded');
    assert.equal(done.progress.rateBytesPerSec, 0, 'a finished job has no rate');
    await manager.close();
    store.close();
  });

  test('progress rows are written each interval without an fsync of their own; the start and the end are durable', async () => {
    const { store, manager } = open();
    const transactions = { durable: 0, lazy: 0 };
    const durable = store.transaction.bind(store);
    const lazy = store.lazyTransaction.bind(store);
    store.transaction = <T>(work: () => T): T => {
      transactions.durable++;
      return durable(work);
    };
    store.lazyTransaction = <T>(work: () => T): T => {
      transactions.lazy++;
      return lazy(work);
    };
    const storedProgress = store.prepare<[string], { progress: string }>('SELECT progress FROM jobs WHERE id = ?');
    const kind = new ManualKind();
    manager.register(kind);
    const { id } = manager.start('manual', {}, 'progress rows');
    const ctx = await kind.started();
    const durableWhenRunning = transactions.durable;
    assert.ok(durableWhenRunning >= 2, 'the row and its running state were written durably');
    for (let step = 1; step <= 3; step++) {
      ctx.addDone(1000);
      await eventually(() => (JSON.parse(storedProgress.get(id)!.progress) as { doneBytes: number }).doneBytes === step * 1000, `progress ${step * 1000} in the store`);
    }
    assert.equal(transactions.durable, durableWhenRunning, 'no progress row was fsync\'ed on its own');
    assert.ok(transactions.lazy >= 3, `${transactions.lazy} lazy progress writes`);
    kind.finish(0, { ok: true });
    assert.equal((await manager.wait(id, 10_000)).state, 'succeeded');
    assert.ok(transactions.durable > durableWhenRunning, 'the end of the job is durable');
    await manager.close();
    store.close();
  });

  test('cancel: the running handler sees the abort and the job ends cancelled; cancelling it again is a conflict', async () => {
    const { store, manager } = open();
    const kind = countingKind();
    manager.register(kind);
    const { id } = manager.start('count', quick(100_000), 'long count');
    await eventually(() => manager.get(id).progress.doneBytes > 0, 'progress');
    const answer = manager.cancel(id);
    assert.equal(answer.state, 'running');
    assert.equal(answer.cancelling, true);
    assert.equal(manager.cancel(id).cancelling, true, 'a second request while winding down is harmless');
    const done = await manager.wait(id, 10_000);
    assert.equal(done.state, 'cancelled');
    assert.deepEqual(done.error, { code: 'CANCELLED', message: `job ${id} was cancelled` });
    assert.ok(done.progress.doneBytes < 100_000_000);
    assert.equal(kind.seen.abortReasons.length, 1);
    assert.ok(kind.seen.abortReasons[0] instanceof JobAbortError);
    assert.equal((kind.seen.abortReasons[0] as JobAbortError).why, 'cancel');
    assert.throws(() => manager.cancel(id), (error: unknown) => error instanceof ThinError && error.code === 'CONFLICT' && /already been cancelled/.test(error.message));
    assert.throws(() => manager.cancel('job-999999'), (error: unknown) => error instanceof ThinError && error.code === 'NOT_FOUND');
    assert.throws(() => manager.get('nope'), (error: unknown) => error instanceof ThinError && error.code === 'NOT_FOUND' && error.message === 'no job "nope"');
    await manager.close();
    store.close();
  });

  test('a queued job waits for a run slot, and cancelling it ends it at once without running it', async () => {
    const { store, manager } = open(undefined, { runningMax: 1 });
    const kind = new ManualKind();
    manager.register(kind);
    const first = manager.start('manual', {}, 'first');
    const second = manager.start('manual', {}, 'second');
    const third = manager.start('manual', {}, 'third');
    await kind.started(1);
    assert.equal(manager.get(second.id).state, 'queued');
    const cancelled = manager.cancel(second.id);
    assert.equal(cancelled.state, 'cancelled');
    assert.equal(cancelled.startedAt, undefined);
    kind.finish(0, 'one');
    await kind.started(2); // the third, not the cancelled second
    assert.equal(kind.contexts[1]!.id, third.id);
    kind.finish(1, 'three');
    assert.equal((await manager.wait(third.id, 10_000)).state, 'succeeded');
    assert.equal(manager.get(first.id).result, 'one');
    assert.throws(() => manager.cancel(first.id), (error: unknown) => error instanceof ThinError && error.code === 'CONFLICT' && /already succeeded/.test(error.message));
    await manager.close();
    store.close();
  });

  test('the finished hook runs once per job in every end state, also for a job cancelled while queued (run never called)', async () => {
    const { store, manager } = open(undefined, { runningMax: 1 });
    const ended: Array<{ params: unknown; state: string }> = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const ran: string[] = [];
    manager.register({
      name: 'hooked',
      resumable: false,
      run: async (_ctx, params) => {
        const { tag, fail } = params as { tag: string; fail: boolean };
        ran.push(tag);
        await gate;
        if (fail) throw new ThinError('IO_ERROR', 'medium gone');
        return tag;
      },
      finished: (params, info) => ended.push({ params, state: info.state }),
    });
    const ok = manager.start('hooked', { tag: 'ok', fail: false }, 'ok');
    const queued = manager.start('hooked', { tag: 'queued', fail: false }, 'queued');
    const bad = manager.start('hooked', { tag: 'bad', fail: true }, 'bad');
    await eventually(() => ran.length === 1, 'the first job to run');
    manager.cancel(queued.id);
    assert.deepEqual(ended, [{ params: { tag: 'queued', fail: false }, state: 'cancelled' }], 'the hook sees a job that never ran');
    release();
    assert.equal((await manager.wait(ok.id, 10_000)).state, 'succeeded');
    assert.equal((await manager.wait(bad.id, 10_000)).state, 'failed');
    assert.deepEqual(ran, ['ok', 'bad']);
    assert.deepEqual(ended.map((end) => `${(end.params as { tag: string }).tag}:${end.state}`).sort(), ['bad:failed', 'ok:succeeded', 'queued:cancelled']);
    await manager.close();
    store.close();
  });

  test('failures: a ThinError keeps its code; any other error is INTERNAL and logged', async () => {
    const { logger, lines } = capturingLogger();
    const { store, manager } = open(undefined, {}, logger);
    manager.register(countingKind({ name: 'full', failure: () => new ThinError('NO_SPACE', 'the pool is full') }));
    manager.register(countingKind({ name: 'buggy', failure: () => new TypeError('cannot read properties of undefined') }));
    const full = await manager.wait(manager.start('full', quick(10, { failAtStep: 3 }), 'fills the pool').id, 10_000);
    assert.equal(full.state, 'failed');
    assert.deepEqual(full.error, { code: 'NO_SPACE', message: 'the pool is full' });
    assert.equal(full.progress.doneBytes, 3000, 'progress up to the failure is kept');
    const buggy = await manager.wait(manager.start('buggy', quick(10, { failAtStep: 0 }), 'has a bug').id, 10_000);
    assert.equal(buggy.state, 'failed');
    assert.equal(buggy.error?.code, 'INTERNAL');
    assert.match(buggy.error!.message, /cannot read properties of undefined/);
    const logged = lines().find((line) => line['msg'] === 'job failed with an unexpected error');
    assert.ok(logged, 'the unexpected error is logged');
    assert.equal(logged['job'], buggy.id);
    assert.match(JSON.stringify(logged['err']), /TypeError/);
    await manager.close();
    store.close();
  });

  test('bad input: unknown kind, params that are not JSON, a checkpoint that is not JSON', async () => {
    const { store, manager } = open();
    manager.register({
      name: 'bad-checkpoint',
      resumable: true,
      async run(ctx) {
        ctx.save({ big: 1n });
        await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
        throw ctx.signal.reason;
      },
    });
    assert.throws(() => manager.start('nope', {}, 'x'), (error: unknown) => error instanceof ThinError && error.code === 'INVALID_ARGUMENT' && error.field === 'kind');
    assert.throws(() => manager.start('bad-checkpoint', { n: 1n }, 'x'), (error: unknown) => error instanceof ThinError && error.code === 'INVALID_ARGUMENT' && error.field === 'params');
    assert.deepEqual(manager.list(), [], 'nothing was stored for refused starts');
    const failed = await manager.wait(manager.start('bad-checkpoint', {}, 'x').id, 10_000);
    assert.equal(failed.state, 'failed');
    assert.equal(failed.error?.code, 'INTERNAL');
    assert.match(failed.error!.message, /checkpoint that cannot be kept/);
    assert.throws(() => manager.register({ name: 'bad-checkpoint', resumable: false, run: async () => undefined }), /registered twice/);
    await manager.close();
    store.close();
  });

  test('wait: resolves at the timeout with the current state, at once for a finished job, early when the job ends or the signal aborts', async () => {
    const { store, manager } = open();
    const kind = new ManualKind();
    manager.register(kind);
    const { id } = manager.start('manual', {}, 'waited on');
    await kind.started();
    let startedMs = Date.now();
    const timedOut = await manager.wait(id, 100);
    assert.equal(timedOut.state, 'running');
    assert.ok(Date.now() - startedMs >= 90, 'waited about the timeout');

    const controller = new AbortController();
    const released = manager.wait(id, 10_000, controller.signal);
    controller.abort();
    assert.equal((await released).state, 'running');

    startedMs = Date.now();
    const finishing = manager.wait(id, 10_000);
    setTimeout(() => kind.finish(0, 42), 50);
    const finished = await finishing;
    assert.equal(finished.state, 'succeeded');
    assert.equal(finished.result, 42);
    assert.ok(Date.now() - startedMs < 5000, 'resolved when the job ended, not at the timeout');
    startedMs = Date.now();
    assert.equal((await manager.wait(id, 10_000)).state, 'succeeded');
    assert.ok(Date.now() - startedMs < 100);
    await assert.rejects(manager.wait('job-424242', 10), (error: unknown) => error instanceof ThinError && error.code === 'NOT_FOUND');
    await manager.close();
    store.close();
  });

  test('list: newest first, finished jobs capped (oldest pruned), ids keep increasing after pruning and reopening', async () => {
    const storePath = newStorePath();
    const { store, manager } = open(storePath, { finishedKeptMax: 3 });
    manager.register(countingKind());
    const running = new ManualKind();
    manager.register(running);
    const longJob = manager.start('manual', {}, 'still running');
    for (let index = 0; index < 5; index++) await manager.wait(manager.start('count', quick(1), `count ${index}`).id, 10_000);
    const listed = manager.list();
    assert.deepEqual(
      listed.map((job) => [job.id, job.state]),
      [
        ['job-000006', 'succeeded'],
        ['job-000005', 'succeeded'],
        ['job-000004', 'succeeded'],
        [longJob.id, 'running'],
      ],
      'three newest finished jobs kept; a running job is never pruned',
    );
    assert.throws(() => manager.get('job-000002'), (error: unknown) => error instanceof ThinError && error.code === 'NOT_FOUND');
    await running.started();
    running.finish(0, null);
    await manager.wait(longJob.id, 10_000);
    await manager.close();
    store.close();
    const again = open(storePath, { finishedKeptMax: 3 });
    again.manager.register(countingKind());
    assert.equal(again.manager.start('count', quick(1), 'after reopening').id, 'job-000007');
    await again.manager.close();
    again.store.close();
  });

  test('close(): running handlers are aborted for shutdown, rows stay running with their checkpoint, and the next start resumes them', async () => {
    const storePath = newStorePath();
    const first = open(storePath);
    const kind = countingKind();
    first.manager.register(kind);
    const { id } = first.manager.start('count', quick(300, { sleepMs: 5 }), 'interrupted by a restart');
    await eventually(() => first.manager.get(id).progress.doneBytes >= 10_000, 'ten steps');
    const waiting = first.manager.wait(id, 60_000);
    await first.manager.close();
    assert.equal((await waiting).state, 'running', 'waiters are released by close');
    assert.equal((kind.seen.abortReasons[0] as JobAbortError).why, 'shutdown');
    assert.throws(() => first.manager.start('count', quick(1), 'too late'), (error: unknown) => error instanceof ThinError && error.code === 'BUSY');
    const row = new JobStore(first.store).get(id)!;
    assert.equal(row.state, 'running');
    const savedStep = (JSON.parse(row.checkpointJson!) as { step: number }).step;
    assert.ok(savedStep >= 10, `checkpoint at step ${savedStep}`);
    assert.equal(JSON.parse(row.progressJson).checkpointDoneBytes, savedStep * 1000, 'progress saved with the checkpoint');
    first.store.close();

    const second = open(storePath);
    const resumedKind = countingKind();
    second.manager.register(resumedKind);
    assert.equal(second.manager.get(id).state, 'running', 'shown as the store has it before resumeAll');
    second.manager.resumeAll();
    const info = second.manager.get(id);
    assert.equal(info.progress.doneBytes, savedStep * 1000, 'progress continues from the checkpoint');
    const done = await second.manager.wait(id, 30_000);
    assert.equal(done.state, 'succeeded');
    assert.deepEqual(resumedKind.seen.resumedFrom, [savedStep]);
    assert.equal(done.progress.doneBytes, 300_000, 'every step counted once');
    assert.throws(() => second.manager.resumeAll(), /runs once/);
    await second.manager.close();
    second.store.close();
  });

  test('kill -9 mid-job: the next start resumes it from the last persisted checkpoint', async () => {
    const storePath = newStorePath();
    new MetaStore(storePath).close(); // migrated before the child and this process read it
    const child = spawn(process.execPath, [CRASH_CHILD, storePath], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    let childOutput = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (childOutput += text));
    try {
      await eventually(() => childOutput.includes('\n'), 'the child to start its job');
      const id = childOutput.trim();
      const reader = new MetaStore(storePath);
      const readerStore = new JobStore(reader);
      await eventually(() => (JSON.parse(readerStore.get(id)?.checkpointJson ?? '{"step":0}') as { step: number }).step >= 20, 'twenty persisted steps');
      reader.close();
      child.kill('SIGKILL');
      await exited;

      const { store, manager } = open(storePath);
      const row = new JobStore(store).get(id)!;
      assert.equal(row.state, 'running', 'a killed daemon leaves the job running');
      const savedStep = (JSON.parse(row.checkpointJson!) as { step: number }).step;
      const kind = countingKind();
      manager.register(kind);
      manager.resumeAll();
      assert.deepEqual(kind.seen.resumedFrom, [], 'the handler runs a tick later');
      await eventually(() => kind.seen.runs === 1, 'the resumed run');
      assert.deepEqual(kind.seen.resumedFrom, [savedStep]);
      assert.ok(manager.get(id).progress.doneBytes >= savedStep * 4096);
      manager.cancel(id); // 100 000 steps: no need to see the end
      assert.equal((await manager.wait(id, 10_000)).state, 'cancelled');
      await manager.close();
      store.close();
    } finally {
      child.kill('SIGKILL');
    }
  });

  test('after a crash, jobs of non-resumable or unknown kinds end failed INTERRUPTED with a clear message', async () => {
    const storePath = newStorePath();
    const first = open(storePath, { runningMax: 1 });
    const oneShot = new ManualKind('one-shot', false);
    first.manager.register(oneShot);
    first.manager.register(new ManualKind('retired', false));
    const ran = first.manager.start('one-shot', {}, 'was running');
    const queued = first.manager.start('one-shot', {}, 'was queued');
    const unknown = first.manager.start('retired', {}, 'kind gone after the upgrade');
    const ctx = await oneShot.started();
    ctx.setTotal(4096);
    ctx.addDone(1024);
    await eventually(() => JSON.parse(new JobStore(first.store).get(ran.id)!.progressJson).doneBytes === 1024, 'progress persisted');
    // The crash: this manager is dropped without close(); a new one opens the same file.
    const second = open(storePath);
    second.manager.register(new ManualKind('one-shot', false));
    second.manager.resumeAll();
    const ranInfo = second.manager.get(ran.id);
    assert.equal(ranInfo.state, 'failed');
    assert.equal(ranInfo.error?.code, 'INTERRUPTED');
    assert.equal(ranInfo.error?.message, 'the daemon stopped while this job ran (at 1 KiB of 4 KiB) and a one-shot job cannot resume; start it again');
    assert.ok(ranInfo.finishedAt);
    assert.equal(second.manager.get(queued.id).error?.message, 'the daemon stopped before this job started and a one-shot job cannot resume; start it again');
    assert.equal(second.manager.get(unknown.id).error?.code, 'INTERRUPTED');
    assert.match(second.manager.get(unknown.id).error!.message, /no job kind "retired" in this daemon/);
    assert.deepEqual(second.manager.list().map((job) => job.state), ['failed', 'failed', 'failed']);
    await second.manager.close();
    second.store.close();
    // Release the first manager's handler and timers (its store stays as the crash left it).
    await first.manager.close();
    first.store.close();
  });
});
