/**
 * `thinarray job …` against the real daemon (test/helpers/daemon.ts). Production registers no
 * job kind of its own yet, so this covers the commands on a daemon without jobs and a restart
 * (which runs startJobs); following real jobs is tested in-process in api.test.ts.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, type CliResult, type Daemon } from '../helpers/daemon.js';

function assertFails(result: CliResult, exitCode: number, messagePattern: RegExp): void {
  assert.equal(result.code, exitCode, `exit ${result.code}, stderr: ${result.stderr}`);
  const lines = result.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got: ${result.stderr}`);
  assert.match(lines[0]!, /^thinarray: /);
  assert.match(lines[0]!, messagePattern);
}

describe('thinarray job (real daemon)', () => {
  let daemon: Daemon;

  before(async () => {
    daemon = await startDaemon({ extraArgs: ['--pool-size', '1G'] });
  });

  after(async () => {
    await daemon?.cleanup();
  });

  test('job list on a fresh daemon: no jobs, human and --json', async () => {
    const human = await daemon.cli(['job', 'list']);
    assert.equal(human.code, 0, human.stderr);
    assert.equal(human.stdout.trim(), 'no jobs');
    assert.deepEqual(await daemon.cliJson(['job', 'list']), { jobs: [] });
    const after = await daemon.cli(['job', 'list', '--json']);
    assert.deepEqual(JSON.parse(after.stdout), { jobs: [] }, '--json after the subcommand too');
  });

  test('unknown ids: show, wait and cancel exit 1 with one line', async () => {
    assertFails(await daemon.cli(['job', 'show', 'job-000999']), 1, /^thinarray: no job "job-000999"$/);
    assertFails(await daemon.cli(['job', 'wait', 'job-000999']), 1, /no job "job-000999"/);
    assertFails(await daemon.cli(['job', 'cancel', 'job-000999']), 1, /no job "job-000999"/);
    assertFails(await daemon.cli(['--json', 'job', 'show', 'nope']), 1, /no job "nope"/);
  });

  test('bad command lines are usage errors (exit 2)', async () => {
    assertFails(await daemon.cli(['job', 'show']), 2, /missing required argument 'id'/);
    assertFails(await daemon.cli(['job', 'wait', 'job-000001', '--timeout', 'later']), 2, /--timeout/);
    assertFails(await daemon.cli(['job', 'frobnicate']), 2, /unknown command/);
  });

  test('a restart resumes nothing and loses nothing on an empty jobs table', async () => {
    await daemon.restart();
    assert.deepEqual(await daemon.cliJson(['job', 'list']), { jobs: [] });
  });
});
