/**
 * The `-` medium: backups streamed through the API to the CLI's stdout and restored from its
 * stdin, in real shell pipelines, checked with real tools: `backup create --to - | restore -`
 * equal by qemu-img compare; the saved stream read by `medium inspect -`; damaged and truncated
 * streams refused with nothing created; a consumer that stops reading early fails the command
 * and leaves no entry called complete (the next incremental is a full backup); a `-` entry is
 * not restorable by id; the JSON API refuses `-` outside its streaming routes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CLI_MAIN, startDaemon, type Daemon } from '../helpers/daemon.js';
import { assertSameContent, qemuIo, requireTools, run, type RunResult } from '../helpers/tools.js';

const TEST_TIMEOUT_MS = 3 * 60_000;

interface BackupEntry {
  id: string;
  state: string;
  kind: string;
  medium: string;
  extents: number;
  streamBytes: number;
}

describe('backups through the CLI (- medium)', { timeout: 10 * 60_000 }, () => {
  let daemon: Daemon;
  let work: string;

  before(async () => {
    await requireTools(['qemu-io', 'qemu-img', 'bash', 'head']);
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-stdio-'));
    daemon = await startDaemon({ extraArgs: ['--pool-size', '1G'] });
    await daemon.cliJson(['volume', 'create', 'src', '--size', '64M']);
    // Data at the start, in the middle across extents and in the last extent; the rest unmapped.
    await qemuIo(daemon.nbdUri('src'), ['write -P 0x5a 0 1M', 'write -P 0x33 10M 3M', 'write -P 0x77 63M 1M']);
  });

  after(async () => {
    await daemon?.cleanup();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  /** A shell pipeline in which `thinarray` is this build's CLI on the test daemon's home. */
  const shell = (script: string): Promise<RunResult> =>
    run('bash', ['-o', 'pipefail', '-c', script], {
      timeoutMs: 120_000,
      // Word-split by bash when expanded: these paths hold no spaces (temporary dirs, the build).
      env: { ...process.env, THINARRAY: `${process.execPath} ${CLI_MAIN} --home ${daemon.home}` },
    });
  const cliLine = '$THINARRAY';
  const backups = async (): Promise<BackupEntry[]> => (await daemon.cliJson<{ backups: BackupEntry[] }>(['backup', 'list'])).backups;

  test('backup create --to - piped into restore -: the copy equals the source; the entry names -', { timeout: TEST_TIMEOUT_MS }, async () => {
    const result = await shell(`${cliLine} backup create src --to - | ${cliLine} restore - --to piped --create`);
    assert.equal(result.code, 0, `pipeline failed: ${result.stderr}`);
    assert.match(result.stdout, /restored into piped from - by remap/);
    await assertSameContent(daemon.nbdUri('src'), daemon.nbdUri('piped'));
    const [entry] = await backups();
    assert.equal(entry!.medium, '-');
    assert.equal(entry!.state, 'complete');
    assert.equal(entry!.extents, 5 * 16); // 1 MiB + 3 MiB + 1 MiB of 64 KiB extents
  });

  test('a saved stream: medium inspect - checks it, restore - by writeback into an existing volume', { timeout: TEST_TIMEOUT_MS }, async () => {
    const saved = path.join(work, 'saved.tbk');
    const backup = await shell(`${cliLine} backup create src --to - > ${saved}`);
    assert.equal(backup.code, 0, backup.stderr);
    assert.match(backup.stderr, /state\s+complete/, 'the summary goes to stderr, stdout carries the data');
    const inspected = await shell(`${cliLine} --json medium inspect - < ${saved}`);
    assert.equal(inspected.code, 0, inspected.stderr);
    const summary = JSON.parse(inspected.stdout) as { recordCount: number; streamBytes: number; sourceName: string };
    assert.equal(summary.recordCount, 80);
    assert.equal(summary.streamBytes, fs.statSync(saved).size);
    assert.equal(summary.sourceName, 'src');

    await daemon.cliJson(['volume', 'create', 'target', '--size', '64M']);
    await qemuIo(daemon.nbdUri('target'), ['write -P 0x11 20M 2M']); // unmapped at backup time: must be trimmed
    const restored = await shell(`${cliLine} restore - --to target --method writeback < ${saved}`);
    assert.equal(restored.code, 0, restored.stderr);
    await assertSameContent(daemon.nbdUri('src'), daemon.nbdUri('target'));
  });

  test('a damaged or truncated stream on stdin is refused naming the damage; no volume is created', { timeout: TEST_TIMEOUT_MS }, async () => {
    const saved = path.join(work, 'damaged.tbk');
    assert.equal((await shell(`${cliLine} backup create src --to - > ${saved}`)).code, 0);
    const bytes = fs.readFileSync(saved);
    const flipAt = bytes.length - 300_000; // inside a data record
    bytes[flipAt] = bytes[flipAt]! ^ 0xff;
    fs.writeFileSync(saved, bytes);
    const damaged = await shell(`${cliLine} restore - --to never1 --create < ${saved}`);
    assert.equal(damaged.code, 1, damaged.stderr);
    assert.match(damaged.stderr, /^thinarray: backup stream of the CLI's stdin corrupt at byte \d+, record \d+ data .*CRC-32/m);

    const truncated = await shell(`head -c 2000000 ${saved} | ${cliLine} restore - --to never2 --create`);
    assert.equal(truncated.code, 1, truncated.stderr);
    assert.match(truncated.stderr, /corrupt at byte 2000000, .*truncated/);

    const empty = await shell(`${cliLine} restore - --to never3 --create < /dev/null`);
    assert.equal(empty.code, 1, empty.stderr);
    assert.match(empty.stderr, /truncated/);

    const names = (await daemon.cliJson<{ volumes: Array<{ name: string }> }>(['volume', 'list'])).volumes.map((volume) => volume.name);
    for (const never of ['never1', 'never2', 'never3']) assert.ok(!names.includes(never), `${never} must not exist after a failed restore`);
  });

  test('bad targets fail before any data is used', { timeout: TEST_TIMEOUT_MS }, async () => {
    const noVolume = await shell(`${cliLine} backup create src --to - | ${cliLine} restore - --to missing`);
    assert.notEqual(noVolume.code, 0);
    assert.match(noVolume.stderr, /volume missing does not exist \(add --create to make it\)/);
    const noSource = await shell(`${cliLine} backup create nosuch --to - > /dev/null`);
    assert.equal(noSource.code, 1);
    assert.match(noSource.stderr, /no volume named "nosuch"/);
    const noWait = await shell(`${cliLine} backup create src --to - --no-wait > /dev/null`);
    assert.equal(noWait.code, 2);
    assert.match(noWait.stderr, /--no-wait cannot be used with --to -/);
  });

  test('a consumer that stops reading fails the command and leaves no complete entry; the next incremental is full', { timeout: TEST_TIMEOUT_MS }, async () => {
    await daemon.cliJson(['volume', 'create', 'big', '--size', '256M']);
    await qemuIo(daemon.nbdUri('big'), ['write -P 0x42 0 64M']); // far more than the pipe and socket buffers hold
    const base = await shell(`${cliLine} backup create big --to - > /dev/null`);
    assert.equal(base.code, 0, base.stderr);
    const before = (await backups()).filter((entry) => entry.state === 'complete').length;
    await qemuIo(daemon.nbdUri('big'), ['write -P 0x43 0 32M']); // what the next incremental carries

    const cut = await shell(`${cliLine} backup create big --to - --incremental | head -c 1000 > /dev/null`);
    assert.notEqual(cut.code, 0, 'the CLI must fail when its stdout goes away');
    assert.match(cut.stderr, /thinarray: backup bk-\d+ /);
    const after = await backups();
    assert.equal(after.filter((entry) => entry.state === 'complete').length, before, `no new complete entry: ${JSON.stringify(after)}`);

    const next = await shell(`${cliLine} --json backup create big --to - --incremental 2>&1 > /dev/null`);
    assert.equal(next.code, 0, next.stdout);
    const latest = (await backups()).at(-1)!;
    assert.equal(latest.state, 'complete');
    // The changes the lost stream carried must not be skipped: an incremental on the base that
    // carries them (512 extents of 64 KiB), or a full backup when the lost one had become the base.
    assert.ok(latest.kind === 'full' ? latest.extents === 1024 : latest.extents === 512, `after a lost incremental: ${JSON.stringify(latest)}`);
  });

  test('a slow reader gets an intact stream (the daemon must not reuse a buffer the socket still holds)', { timeout: TEST_TIMEOUT_MS }, async () => {
    await daemon.cliJson(['volume', 'create', 'slow', '--size', '128M']);
    await qemuIo(daemon.nbdUri('slow'), ['write -P 0x61 0 24M', 'write -P 0x62 40M 24M']);
    const saved = path.join(work, 'slow.tbk');
    // The reader starts 2 s late: chunks pile up between the job and the socket.
    const slow = await shell(`${cliLine} backup create slow --to - | (sleep 2; cat) > ${saved}`);
    assert.equal(slow.code, 0, slow.stderr);
    const inspected = await shell(`${cliLine} --json medium inspect - < ${saved}`);
    assert.equal(inspected.code, 0, `the stream a slow reader got is damaged: ${inspected.stderr}`);
    const restored = await shell(`${cliLine} restore - --to slow-copy --create < ${saved}`);
    assert.equal(restored.code, 0, restored.stderr);
    await assertSameContent(daemon.nbdUri('slow'), daemon.nbdUri('slow-copy'));
  });

  test('a - entry is not restorable by id, and the JSON API sends - to its streaming routes', { timeout: TEST_TIMEOUT_MS }, async () => {
    const entry = (await backups()).find((candidate) => candidate.medium === '-' && candidate.state === 'complete')!;
    const byId = await daemon.cli(['restore', entry.id, '--to', 'x', '--create']);
    assert.equal(byId.code, 1);
    assert.match(byId.stderr, /"-" was the CLI's stdout\/stdin: the array does not hold that stream/);
    const viaJson = await fetch(`${daemon.apiUrl.replace(/\/+$/, '')}/api/v1/backups`, {
      method: 'POST',
      headers: { authorization: `Bearer ${daemon.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ volume: 'src', to: '-' }),
    });
    const body = (await viaJson.json()) as { error: { code: string; message: string; field: string } };
    assert.equal(body.error.field, 'to');
    assert.match(body.error.message, /POST \/api\/v1\/backups\/stream/);
    const wrongType = await fetch(`${daemon.apiUrl.replace(/\/+$/, '')}/api/v1/restores/stream?to=y&create=true`, {
      method: 'POST',
      headers: { authorization: `Bearer ${daemon.token}`, 'content-type': 'application/json' },
      body: '{}',
    });
    assert.equal(wrongType.status, 415);
  });
});
