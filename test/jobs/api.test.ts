/**
 * The jobs routes and the `job` commands in-process against the real array (a temporary home)
 * with test-only job kinds registered: auth, 404, 409 on cancelling a finished job, waitMs
 * bounds and long polls, the server releasing long polls when it closes; then `thinarray job …`
 * through runCli against the same server: output, exit codes, followJob's plain lines and bar.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { openStorageArray, type StorageArray } from '../../src/array/array.js';
import { ApiServer } from '../../src/api/server.js';
import { DaemonMetrics } from '../../src/daemon/metrics.js';
import { thinarrayVersion } from '../../src/daemon/version.js';
import { ThinError } from '../../src/lib/errors.js';
import { LIMITS } from '../../src/lib/limits.js';
import { silentLogger } from '../../src/lib/log.js';
import { MiB } from '../../src/lib/sizes.js';
import { ApiClient } from '../../src/cli/client.js';
import { runCli } from '../../src/cli/program.js';
import { finishStartedJob, followJob } from '../../src/cli/progress.js';
import { CliContext, type CliIo } from '../../src/cli/context.js';
import type { JobInfo } from '../../src/jobs/job-manager.js';
import { countingKind, ManualKind, type CountParams } from './kinds.js';

const TOKEN = 'jobs-test-token-0123456789';

interface Reply {
  status: number;
  text: string;
  json: any;
}

describe('jobs over the HTTP API and the CLI', () => {
  let home: string;
  let array: StorageArray;
  let server: ApiServer;
  let baseUrl: string;
  const manual = new ManualKind('manual', false);

  before(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-jobs-api-'));
    array = await openStorageArray({ home, logger: silentLogger(), poolFileBytes: 64 * MiB });
    array.jobs.register(countingKind());
    array.jobs.register(countingKind({ name: 'full', failure: () => new ThinError('NO_SPACE', 'the pool is full') }));
    array.jobs.register(manual);
    array.startJobs();
    server = new ApiServer({ array, token: TOKEN, logger: silentLogger(), version: thinarrayVersion() });
    baseUrl = (await server.listen('127.0.0.1', 0)).url;
  });

  after(async () => {
    await server.close();
    await array.close();
    fs.rmSync(home, { recursive: true, force: true });
  });

  async function call(method: string, route: string, options: { token?: string | null; url?: string } = {}): Promise<Reply> {
    const token = options.token === undefined ? TOKEN : options.token;
    const headers: Record<string, string> = token === null ? {} : { authorization: `Bearer ${token}` };
    const response = await fetch((options.url ?? baseUrl) + '/api/v1' + route, { method, headers });
    const text = await response.text();
    return { status: response.status, text, json: text === '' ? undefined : JSON.parse(text) };
  }

  function assertError(reply: Reply, status: number, code: string, field?: string): void {
    assert.equal(reply.status, status, reply.text);
    assert.equal(reply.json.error.code, code, reply.text);
    if (field !== undefined) {
      assert.equal(reply.json.error.field, field, reply.text);
      assert.match(reply.json.error.message, new RegExp(`^${field}: `));
    }
  }

  const count = (steps: number, extra: Partial<CountParams> = {}): CountParams => ({ steps, stepBytes: 1024, sleepMs: 2, ...extra });

  describe('routes', () => {
    test('GET /jobs on a fresh array: no jobs', async () => {
      const reply = await call('GET', '/jobs');
      assert.equal(reply.status, 200);
      assert.deepEqual(reply.json, { jobs: [] });
    });

    for (const [method, route] of [
      ['GET', '/jobs'],
      ['GET', '/jobs/job-000001'],
      ['GET', '/jobs/job-000001?waitMs=10'],
      ['POST', '/jobs/job-000001/cancel'],
    ] as const) {
      test(`${method} ${route}: 401 without the token or with a wrong one`, async () => {
        assertError(await call(method, route, { token: null }), 401, 'UNAUTHORIZED');
        assertError(await call(method, route, { token: 'wrong' }), 401, 'UNAUTHORIZED');
      });
    }

    test('a job seen through GET /jobs/:id, the list, and a long poll that answers when it ends', async () => {
      const { id } = array.jobs.start('count', count(20), 'count to 20');
      const shown = await call('GET', `/jobs/${id}`);
      assert.equal(shown.status, 200, shown.text);
      assert.equal(shown.json.id, id);
      assert.equal(shown.json.description, 'count to 20');
      assert.deepEqual(Object.keys(shown.json.progress).sort(), ['doneBytes', 'etaSeconds', 'rateBytesPerSec', 'totalBytes']);
      const listed = await call('GET', '/jobs');
      assert.equal(listed.json.jobs[0].id, id);
      const startedMs = Date.now();
      const done = await call('GET', `/jobs/${id}?waitMs=${LIMITS.jobWaitMsMax}`);
      assert.ok(Date.now() - startedMs < 10_000, 'answered at the end of the job, not at waitMs');
      assert.equal(done.json.state, 'succeeded');
      assert.deepEqual(done.json.result, { counted: 20 });
      assert.equal(done.json.progress.doneBytes, 20 * 1024);
      assert.equal((await call('GET', `/jobs/${id}?waitMs=0`)).json.state, 'succeeded');
    });

    test('unknown ids: 404 NOT_FOUND naming the id', async () => {
      const reply = await call('GET', '/jobs/job-999999');
      assertError(reply, 404, 'NOT_FOUND');
      assert.equal(reply.json.error.field, 'id');
      assert.equal(reply.json.error.message, 'no job "job-999999"');
      assertError(await call('GET', '/jobs/nope?waitMs=100'), 404, 'NOT_FOUND');
      assertError(await call('POST', '/jobs/nope/cancel'), 404, 'NOT_FOUND');
    });

    test('waitMs bounds: a whole number from 0 to the limit; unknown query fields refused', async () => {
      const { id } = array.jobs.start('count', count(1), 'short');
      await array.jobs.wait(id, 10_000);
      for (const bad of [String(LIMITS.jobWaitMsMax + 1), 'abc', '-1', '1.5', '', '9999999999']) {
        assertError(await call('GET', `/jobs/${id}?waitMs=${encodeURIComponent(bad)}`), 400, 'INVALID_ARGUMENT', 'waitMs');
      }
      const unknown = await call('GET', `/jobs/${id}?wait=5`);
      assertError(unknown, 400, 'INVALID_ARGUMENT', 'wait');
      assert.equal(unknown.json.error.message, 'wait: unknown field');
      assert.equal((await call('GET', `/jobs/${id}?waitMs=${LIMITS.jobWaitMsMax}`)).status, 200);
    });

    test('a long poll on a running job answers at waitMs with the job still running', async () => {
      const { id } = array.jobs.start('manual', {}, 'held by the test');
      await manual.started(manual.contexts.length + 1);
      const startedMs = Date.now();
      const reply = await call('GET', `/jobs/${id}?waitMs=300`);
      const elapsedMs = Date.now() - startedMs;
      assert.equal(reply.json.state, 'running');
      assert.ok(elapsedMs >= 250 && elapsedMs < 5000, `answered after ${elapsedMs} ms`);
      array.jobs.cancel(id);
      assert.equal((await array.jobs.wait(id, 10_000)).state, 'cancelled');
    });

    test('cancel: a running job answers cancelling then ends cancelled; cancelling a finished job is 409', async () => {
      const { id } = array.jobs.start('count', count(1_000_000), 'very long count');
      const cancel = await call('POST', `/jobs/${id}/cancel`);
      assert.equal(cancel.status, 200, cancel.text);
      assert.ok(cancel.json.state === 'running' || cancel.json.state === 'cancelled');
      const done = await call('GET', `/jobs/${id}?waitMs=10000`);
      assert.equal(done.json.state, 'cancelled');
      assert.deepEqual(done.json.error, { code: 'CANCELLED', message: `job ${id} was cancelled` });
      const again = await call('POST', `/jobs/${id}/cancel`);
      assertError(again, 409, 'CONFLICT');
      assert.match(again.json.error.message, /already been cancelled/);
      const wrongMethod = await call('GET', `/jobs/${id}/cancel`);
      assert.equal(wrongMethod.status, 405);
    });

    test('GET /metrics: job counts by state and the progress of running jobs', async () => {
      const metrics = new DaemonMetrics(array, () => 0);
      const withMetrics = new ApiServer({ array, token: TOKEN, logger: silentLogger(), metrics, version: thinarrayVersion() });
      const url = (await withMetrics.listen('127.0.0.1', 0)).url;
      const { id } = array.jobs.start('manual', {}, 'measured');
      const ctx = await manual.started(manual.contexts.length + 1);
      ctx.setTotal(8192);
      ctx.addDone(4096);
      const response = await fetch(`${url}/api/v1/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
      const text = await response.text();
      await withMetrics.close();
      assert.match(text, /^thinarray_jobs\{state="running"\} 1$/m);
      assert.match(text, /^thinarray_jobs\{state="succeeded"\} [1-9]\d*$/m);
      assert.match(text, new RegExp(`^thinarray_job_done_bytes\\{job="${id}",kind="manual"\\} 4096$`, 'm'));
      assert.match(text, new RegExp(`^thinarray_job_total_bytes\\{job="${id}",kind="manual"\\} 8192$`, 'm'));
      assert.doesNotMatch(text, /thinarray_job_done_bytes\{job="[^"]+",kind="count"\}/, 'finished jobs leave the scrape');
      array.jobs.cancel(id);
      await array.jobs.wait(id, 10_000);
    });

    test('closing the server answers its long polls at once instead of holding shutdown', async () => {
      const second = new ApiServer({ array, token: TOKEN, logger: silentLogger(), version: thinarrayVersion() });
      const url = (await second.listen('127.0.0.1', 0)).url;
      const { id } = array.jobs.start('manual', {}, 'outlives the server');
      await manual.started(manual.contexts.length + 1);
      const polling = call('GET', `/jobs/${id}?waitMs=${LIMITS.jobWaitMsMax}`, { url });
      await new Promise((resolve) => setTimeout(resolve, 100));
      const startedMs = Date.now();
      await second.close();
      const reply = await polling;
      assert.ok(Date.now() - startedMs < 5000, 'close did not wait for waitMs');
      assert.equal(reply.json.state, 'running');
      array.jobs.cancel(id);
      await array.jobs.wait(id, 10_000);
    });
  });

  describe('thinarray job … (in-process CLI)', () => {
    async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
      const out: string[] = [];
      const err: string[] = [];
      const io: CliIo = { stdout: (text) => out.push(text), stderr: (text) => err.push(text), environment: {} };
      const code = await runCli(['--api', baseUrl, '--token', TOKEN, ...args], io);
      return { code, stdout: out.join('\n'), stderr: err.join('\n') };
    }

    function assertOneLineError(result: { code: number; stderr: string }, code: number, pattern: RegExp): void {
      assert.equal(result.code, code, result.stderr);
      assert.equal(result.stderr.split('\n').length, 1, result.stderr);
      assert.match(result.stderr, /^thinarray: /);
      assert.match(result.stderr, pattern);
    }

    test('job wait on a job that succeeds: progress lines, then the summary; exit 0', async () => {
      const { id } = array.jobs.start('count', count(200, { sleepMs: 5 }), 'count to 200');
      const result = await cli(['job', 'wait', id]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stderr, '');
      const lines = result.stdout.split('\n');
      assert.match(lines[0]!, new RegExp(`^job ${id} (queued|running): `), 'a first progress line at once');
      assert.match(lines[lines.length - 1]!, new RegExp(`^job ${id} succeeded: count to 200 \\(200 KiB in \\d+s\\)$`));
      const json = JSON.parse((await cli(['job', 'wait', id, '--json'])).stdout);
      assert.equal(json.state, 'succeeded');
    });

    test('job wait on a job that fails: exit 1 with the job\'s message and code on one line', async () => {
      const { id } = array.jobs.start('full', count(10, { failAtStep: 2 }), 'fills the pool');
      const result = await cli(['job', 'wait', id]);
      assertOneLineError(result, 1, new RegExp(`^thinarray: job ${id} failed: the pool is full \\(NO_SPACE\\)$`));
      const json = await cli(['--json', 'job', 'wait', id]);
      assert.equal(json.code, 1);
      assert.equal(JSON.parse(json.stdout).error.code, 'NO_SPACE', 'the JSON of the failed job on stdout');
    });

    test('job wait --timeout gives up with exit 1 while the job keeps running', async () => {
      const { id } = array.jobs.start('manual', {}, 'never ends by itself');
      const result = await cli(['job', 'wait', id, '--timeout', '0.3']);
      assertOneLineError(result, 1, new RegExp(`job ${id} is still running .*thinarray job wait ${id}`));
      assert.equal(array.jobs.get(id).state, 'running');
      assertOneLineError(await cli(['job', 'wait', id, '--timeout', 'soon']), 2, /--timeout: expected a number of seconds/);

      const cancelled = await cli(['job', 'cancel', id]);
      assert.equal(cancelled.code, 0, cancelled.stderr);
      assert.equal(cancelled.stdout, `job ${id} cancelled`);
      assertOneLineError(await cli(['job', 'cancel', id]), 1, new RegExp(`job ${id} has already been cancelled`));
      assertOneLineError(await cli(['job', 'wait', id]), 1, new RegExp(`^thinarray: job ${id} cancelled: job ${id} was cancelled \\(CANCELLED\\)$`));
    });

    test('job list and job show, human and --json', async () => {
      const list = await cli(['job', 'list']);
      assert.equal(list.code, 0);
      const [header, ...rows] = list.stdout.split('\n');
      assert.match(header!, /^ID\s+KIND\s+STATE\s+PROGRESS\s+CREATED\s+DESCRIPTION$/);
      const ids = rows.map((row) => row.split(/\s+/)[0]);
      assert.deepEqual(ids, [...ids].sort().reverse(), 'newest first');
      const listJson = JSON.parse((await cli(['job', 'list', '--json'])).stdout) as { jobs: JobInfo[] };
      assert.equal(listJson.jobs.length, rows.length);
      const failed = listJson.jobs.find((job) => job.kind === 'full')!;
      const show = await cli(['job', 'show', failed.id]);
      assert.equal(show.code, 0);
      assert.match(show.stdout, new RegExp(`^id +${failed.id}$`, 'm'));
      assert.match(show.stdout, /^state +failed$/m);
      assert.match(show.stdout, /^error +NO_SPACE: the pool is full$/m);
      assert.match(show.stdout, /^progress +2 KiB of 10 KiB \(20\.0%\)$/m);
      assert.deepEqual(JSON.parse((await cli(['--json', 'job', 'show', failed.id])).stdout), array.jobs.get(failed.id));
      assertOneLineError(await cli(['job', 'show', 'job-777777']), 1, /^thinarray: no job "job-777777"$/);
    });

    test('finishStartedJob: --no-wait prints the id; otherwise follows the job to its end', async () => {
      const out: string[] = [];
      const io: CliIo = { stdout: (text) => out.push(text), stderr: () => undefined, environment: {} };
      const context = new CliContext({ api: baseUrl, token: TOKEN }, io);
      const detached = array.jobs.start('count', count(5), 'detached');
      assert.equal((await finishStartedJob(context, detached, { noWait: true })).state, detached.state);
      assert.deepEqual(out, [`started job ${detached.id}: detached (follow it with: thinarray job wait ${detached.id})`]);
      out.length = 0;
      const followed = array.jobs.start('count', count(5), 'followed');
      assert.equal((await finishStartedJob(context, followed, {})).state, 'succeeded');
      assert.match(out[out.length - 1]!, new RegExp(`^job ${followed.id} succeeded: followed`));
    });

    test('followJob on a terminal draws a cli-progress bar', async () => {
      const terminal = Object.assign(new PassThrough(), { isTTY: true, columns: 120 }) as unknown as NodeJS.WriteStream & PassThrough;
      let drawn = '';
      terminal.on('data', (chunk: Buffer) => (drawn += chunk.toString()));
      const { id } = array.jobs.start('count', count(600, { sleepMs: 5 }), 'count with a bar');
      const out: string[] = [];
      const client = new ApiClient({ url: baseUrl, urlSource: 'test', token: TOKEN, tokenSource: 'test' });
      const info = await followJob(client, id, { json: false, io: { stdout: (text) => out.push(text), stderr: () => undefined, environment: {} }, terminal });
      assert.equal(info.state, 'succeeded');
      assert.match(drawn, new RegExp(`${id} \\[[█░]+\\] \\d+% \\| [\\d.]+ KiB of 600 KiB \\| [\\d.]+ (B|KiB|MiB)/s \\| ETA `));
      assert.match(drawn, /100% \| 600 KiB of 600 KiB/);
      assert.deepEqual(out, [`job ${id} succeeded: count with a bar (600 KiB in ${out[0]!.match(/in (\S+)\)$/)![1]})`]);
    });
  });
});
