/**
 * Backups through the real daemon and the real CLI, checked with real tools: an ext4 frozen with
 * fsfreeze, backed up, changed, restored by remap and mounted again (files from before equal by
 * sha256, files from after absent, e2fsck clean); a FIFO round trip (writeback and remap);
 * cartridges (one lost: restore fails clearly, writeback target `incomplete`, remap target as it
 * was); damaged and truncated media caught by verify, restore and `medium inspect`; refusals of
 * media outside the roots (plain, `..`, symlink), unknown ids and bad methods, with nothing
 * recorded; `backup delete --purge-media`; `backup candidates` and `backup copy` (the copy, on
 * cartridges, restores equal; refusals leave the catalog as it was).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CLI_MAIN, startDaemon, type CliResult, type Daemon } from '../helpers/daemon.js';
import { assertSameContent, makeReferenceFile, qemuIo, requireTools, run, runOk } from '../helpers/tools.js';

const MiB = 1024 * 1024;
/** Each test's own bound; the slowest (ext4) needs mkfs, two mounts and e2fsck over FUSE. */
const TEST_TIMEOUT_MS = 4 * 60_000;
const JOB_TIMEOUT_MS = 120_000;

interface BackupEntry {
  id: string;
  state: string;
  method: string;
  jobId: string | null;
  medium: string;
  extents: number;
  streamBytes: number;
  digest: string | null;
}

interface VolumeInfo {
  name: string;
  state: string;
  capacityBytes: number;
}

/** A one-line `thinarray: …` error with the expected exit code. */
function assertFails(result: CliResult, exitCode: number, messagePattern: RegExp): void {
  assert.equal(result.code, exitCode, `exit ${result.code}; stderr: ${result.stderr}; stdout: ${result.stdout}`);
  const lines = result.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got: ${result.stderr}`);
  assert.match(lines[0]!, /^thinarray: /);
  assert.match(lines[0]!, messagePattern);
}

function assertOk(result: CliResult, what: string): void {
  assert.equal(result.code, 0, `${what} exited ${result.code}: ${result.stderr}`);
}

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** qemu-io write commands: [offset, length, pattern byte]. */
type Writes = ReadonlyArray<readonly [number, number, number]>;
const writeCommands = (writes: Writes): string[] => writes.map(([offset, length, pattern]) => `write -P ${pattern} ${offset} ${length}`);

/** Flips one byte of a file in place (XOR 0xff), so the checksum that covers it must fail. */
function flipByte(filePath: string, offsetBytes: number): void {
  const fd = fs.openSync(filePath, 'r+');
  try {
    const one = Buffer.alloc(1);
    fs.readSync(fd, one, 0, 1, offsetBytes);
    one[0] = one[0]! ^ 0xff;
    fs.writeSync(fd, one, 0, 1, offsetBytes);
  } finally {
    fs.closeSync(fd);
  }
}

// ---- nbdfuse + loop mount (as in test/fs/ext4.test.ts) ------------------------------------------

/** Starts nbdfuse on `fuseDir` and waits until the export appears as `fuseDir/nbd`. */
async function nbdfuse(uri: string, fuseDir: string): Promise<ChildProcess> {
  fs.mkdirSync(fuseDir, { recursive: true });
  const child = spawn('nbdfuse', [fuseDir, uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  for (let waitedMs = 0; waitedMs < 10_000; waitedMs += 100) {
    if (fs.existsSync(path.join(fuseDir, 'nbd'))) return child;
    if (child.exitCode !== null) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`nbdfuse did not expose ${uri} on ${fuseDir}: ${stderr}`);
}

async function unfuse(child: ChildProcess, fuseDir: string): Promise<void> {
  await run('fusermount3', ['-u', fuseDir], { timeoutMs: 20_000 });
  const exited = child.exitCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', resolve));
  const bounded = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(bounded);
}

/** Small random files under `root/prefix`; returns relative path → sha256. */
function writeFiles(root: string, prefix: string, count: number): Map<string, string> {
  const sums = new Map<string, string>();
  fs.mkdirSync(path.join(root, prefix), { recursive: true });
  for (let index = 0; index < count; index++) {
    const data = randomBytes(1 + ((index * 97_003) % (768 * 1024)));
    const relative = `${prefix}/file${index}.bin`;
    fs.writeFileSync(path.join(root, relative), data);
    sums.set(relative, sha256(data));
  }
  return sums;
}

describe('backup, verify and restore through the daemon and the CLI', () => {
  let daemon: Daemon;
  let mediaRoot: string;
  /** Outside the media root: what the daemon must refuse. */
  let outside: string;
  const cleanups: Array<() => Promise<unknown>> = [];

  before(async () => {
    await requireTools(['qemu-io', 'qemu-img', 'nbdfuse', 'fusermount3', 'mkfs.ext4', 'e2fsck', 'fsfreeze', 'mount', 'umount', 'mkfifo']);
    mediaRoot = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-media-')));
    outside = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-outside-')));
    daemon = await startDaemon({ extraArgs: ['--pool-size', '1G', '--media-root', mediaRoot] });
  });

  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    await daemon?.cleanup();
    fs.rmSync(mediaRoot, { recursive: true, force: true });
    fs.rmSync(outside, { recursive: true, force: true });
  });

  const media = (name: string): string => path.join(mediaRoot, name);

  async function createVolume(name: string, size: string, writes: Writes = []): Promise<void> {
    await daemon.cliJson(['volume', 'create', name, '--size', size]);
    if (writes.length > 0) await qemuIo(daemon.nbdUri(name), writeCommands(writes));
  }

  /** A raw file with the same writes: what a volume must still read as. */
  async function referenceOf(name: string, sizeBytes: number, writes: Writes): Promise<string> {
    const filePath = path.join(daemon.home, `${name}.ref`);
    await makeReferenceFile(filePath, sizeBytes);
    if (writes.length > 0) await qemuIo(filePath, writeCommands(writes));
    return filePath;
  }

  async function backupList(): Promise<string[]> {
    const { backups } = await daemon.cliJson<{ backups: BackupEntry[] }>(['backup', 'list']);
    return backups.map((entry) => entry.id);
  }

  async function volumeState(name: string): Promise<string> {
    return (await daemon.cliJson<VolumeInfo>(['volume', 'show', name])).state;
  }

  /** backup create, followed to the end; returns the complete catalog entry. */
  async function backupTo(volume: string, medium: string, extra: string[] = []): Promise<BackupEntry> {
    const entry = await daemon.cliJson<BackupEntry>(['backup', 'create', volume, '--to', medium, ...extra], { timeoutMs: JOB_TIMEOUT_MS });
    assert.equal(entry.state, 'complete', JSON.stringify(entry));
    return entry;
  }

  test('ext4 frozen with fsfreeze: backup at the freeze, restore by remap, files from before only, e2fsck clean', { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.equal(process.getuid?.(), 0, 'this test mounts a filesystem and must run as root (CI does)');
    await createVolume('fs', '64M');
    const fuseDir = path.join(daemon.home, 'fuse-fs');
    const mountDir = path.join(daemon.home, 'mnt-fs');
    fs.mkdirSync(mountDir, { recursive: true });
    const device = path.join(fuseDir, 'nbd');

    const fuse = await nbdfuse(daemon.nbdUri('fs'), fuseDir);
    cleanups.push(() => unfuse(fuse, fuseDir));
    await runOk('mkfs.ext4', ['-q', '-F', device], { timeoutMs: 120_000 });
    await runOk('mount', ['-o', 'loop', device, mountDir], { timeoutMs: 30_000 });
    cleanups.push(() => run('umount', [mountDir]));
    const before = writeFiles(mountDir, 'before', 8);

    // The point in time is taken while the filesystem is frozen; the CLI returns as soon as it is.
    await runOk('fsfreeze', ['-f', mountDir], { timeoutMs: 30_000 });
    let started: BackupEntry;
    try {
      const result = await daemon.cli(['--json', 'backup', 'create', 'fs', '--to', `file:${media('fs.tbk')}`, '--no-wait', '--label', 'frozen'], { timeoutMs: 30_000 });
      assertOk(result, 'backup create --no-wait');
      started = JSON.parse(result.stdout) as BackupEntry;
    } finally {
      await runOk('fsfreeze', ['-u', mountDir], { timeoutMs: 30_000 });
    }
    assert.match(started.jobId ?? '', /^job-\d+$/, 'backup create --no-wait names the job');
    const human = await daemon.cli(['backup', 'show', started.id]);
    assert.match(human.stdout, new RegExp(`job\\s+${started.jobId}`));

    // Changes after the point in time: must not be in the restore.
    const afterSums = writeFiles(mountDir, 'after', 4);
    fs.appendFileSync(path.join(mountDir, 'before', 'file0.bin'), 'changed after the backup');
    await runOk('sync', [], { timeoutMs: 60_000 });

    assertOk(await daemon.cli(['job', 'wait', started.jobId!], { timeoutMs: JOB_TIMEOUT_MS }), 'job wait');
    const entry = await daemon.cliJson<BackupEntry>(['backup', 'show', started.id]);
    assert.equal(entry.state, 'complete');
    assert.match(entry.digest ?? '', /^[0-9a-f]{64}$/);
    await runOk('umount', [mountDir], { timeoutMs: 60_000 });
    await unfuse(fuse, fuseDir);

    const restore = await daemon.cli(['restore', started.id, '--to', 'fs-copy', '--create'], { timeoutMs: JOB_TIMEOUT_MS });
    assertOk(restore, 'restore --create');
    assert.match(restore.stdout, /restored into fs-copy (from bk-\d+ )?by remap/);
    assert.equal(await volumeState('fs-copy'), 'ready');

    const copyFuseDir = path.join(daemon.home, 'fuse-copy');
    const copyFuse = await nbdfuse(daemon.nbdUri('fs-copy'), copyFuseDir);
    cleanups.push(() => unfuse(copyFuse, copyFuseDir));
    const copyDevice = path.join(copyFuseDir, 'nbd');
    await runOk('e2fsck', ['-fn', copyDevice], { timeoutMs: 120_000 });
    await runOk('mount', ['-o', 'loop,ro', copyDevice, mountDir], { timeoutMs: 30_000 });
    try {
      for (const [relative, sum] of before) assert.equal(sha256(fs.readFileSync(path.join(mountDir, relative))), sum, `${relative} as of the freeze`);
      for (const relative of afterSums.keys()) assert.equal(fs.existsSync(path.join(mountDir, relative)), false, `${relative} was written after the backup`);
    } finally {
      await runOk('umount', [mountDir], { timeoutMs: 60_000 });
    }
    await unfuse(copyFuse, copyFuseDir);
  });

  test('FIFO: backup into a named pipe while restore reads it, writeback and remap, qemu-img compare equal', { timeout: TEST_TIMEOUT_MS }, async () => {
    const writes: Writes = [[0, 3 * 65536, 0x11], [5 * MiB + 123, 70_000, 0x22], [20 * MiB, 2 * MiB, 0x33], [24 * MiB - 4096, 4096, 0x44]];
    await createVolume('pipe-src', '24M', writes);
    // Writeback into a volume holding other data: extents unmapped at backup time must be trimmed.
    await createVolume('pipe-wb', '24M', [[10 * MiB, MiB, 0x99], [0, 4096, 0x98]]);

    // One FIFO for both rounds: a job holds its end only while it runs (a second job on the same
    // end is refused), so the second round finds both ends given back.
    const fifo = media('pipe.fifo');
    await runOk('mkfifo', [fifo]);
    for (const [round, restoreArgs] of [
      ['writeback', ['--to', 'pipe-wb', '--method', 'writeback']],
      ['remap', ['--to', 'pipe-remap', '--create']],
    ] as const) {
      const started = await daemon.cliJson<BackupEntry>(['backup', 'create', 'pipe-src', '--to', `file:${fifo}`, '--no-wait'], { timeoutMs: 30_000 });
      const restore = await daemon.cli(['restore', `file:${fifo}`, ...restoreArgs], { timeoutMs: JOB_TIMEOUT_MS });
      assertOk(restore, `restore from the FIFO (${round})`);
      assertOk(await daemon.cli(['job', 'wait', started.jobId!], { timeoutMs: JOB_TIMEOUT_MS }), `backup job (${round})`);
      const target = restoreArgs[1];
      await assertSameContent(daemon.nbdUri('pipe-src'), daemon.nbdUri(target), { timeoutMs: 60_000 });
      assert.equal(await volumeState(target), 'ready');
      assert.equal(fs.statSync(fifo).isFIFO(), true, 'the FIFO is still a FIFO (never replaced by a file)');
    }
  });

  test('a FIFO nobody opens: the backup and the restore waiting on it cancel at once; SIGTERM stops the daemon while one waits', { timeout: TEST_TIMEOUT_MS }, async () => {
    await createVolume('fifo-wait', '8M', [[0, MiB, 0x31]]);
    const fifo = media('nobody.fifo');
    await runOk('mkfifo', [fifo]);
    const jobState = async (jobId: string): Promise<string> => (await daemon.cliJson<{ state: string }>(['job', 'show', jobId])).state;
    /** Returns once the job is running and, by then, waiting in the FIFO's open. */
    const waitInOpen = async (jobId: string): Promise<void> => {
      for (let waitedMs = 0; (await jobState(jobId)) !== 'running'; waitedMs += 50) {
        assert.ok(waitedMs < 10_000, `job ${jobId} did not start`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await new Promise((resolve) => setTimeout(resolve, 300)); // well inside the open by now
    };
    /** Cancels a job once it is waiting in the open, and returns how long it took to end. */
    const cancelWhileWaiting = async (jobId: string): Promise<number> => {
      await waitInOpen(jobId);
      const startedMs = performance.now();
      assertOk(await daemon.cli(['job', 'cancel', jobId]), 'job cancel');
      while ((await jobState(jobId)) !== 'cancelled') {
        assert.ok(performance.now() - startedMs < 10_000, `job ${jobId} still ${await jobState(jobId)} 10 s after its cancel`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      return performance.now() - startedMs;
    };

    /** Starts a job on the FIFO (it then waits in the open) and returns its id. */
    const startJob = async (args: string[]): Promise<string> => {
      const started = await daemon.cli([...args, '--no-wait']);
      assertOk(started, args.join(' '));
      const jobId = /(job-\d+)/.exec(started.stdout)?.[1];
      assert.ok(jobId, started.stdout);
      return jobId;
    };
    /** A second job on the same end of the FIFO is refused before anything is recorded (two writers would interleave their streams). */
    const assertRefused = async (args: string[], expected: RegExp): Promise<void> => {
      const backupsBefore = (await daemon.cliJson<{ backups: BackupEntry[] }>(['backup', 'list'])).backups.length;
      const refused = await daemon.cli(args);
      assert.equal(refused.code, 1, `${args.join(' ')}: ${refused.stdout}${refused.stderr}`);
      assert.match(refused.stderr, expected);
      assert.equal((await daemon.cliJson<{ backups: BackupEntry[] }>(['backup', 'list'])).backups.length, backupsBefore, 'no catalog entry for the refused request');
    };
    const sameFifo = media('nobody-link.fifo');
    fs.linkSync(fifo, sameFifo); // another name for the same FIFO

    const backup = await daemon.cliJson<BackupEntry>(['backup', 'create', 'fifo-wait', '--to', `file:${fifo}`, '--no-wait']);
    await waitInOpen(backup.jobId!);
    await assertRefused(['backup', 'create', 'fifo-wait', '--to', `file:${fifo}`], /another job is already writing to this FIFO/);
    await assertRefused(['backup', 'create', 'fifo-wait', '--to', `file:${sameFifo}`], /another job is already writing to this FIFO/);
    await cancelWhileWaiting(backup.jobId!);
    assert.equal((await daemon.cliJson<BackupEntry>(['backup', 'show', backup.id])).state, 'failed');
    const volumes = (await daemon.cliJson<{ volumes: VolumeInfo[] }>(['volume', 'list'])).volumes.map((volume) => volume.name);
    assert.equal(volumes.includes(`${backup.id}-view`), false, 'its point-in-time view is dropped');

    const restore = await daemon.cli(['restore', `file:${fifo}`, '--to', 'fifo-never', '--create', '--no-wait']);
    assertOk(restore, 'restore --no-wait');
    const restoreJob = /job (job-\d+)/.exec(restore.stdout)?.[1];
    assert.ok(restoreJob, restore.stdout);
    await waitInOpen(restoreJob);
    await assertRefused(['restore', `file:${sameFifo}`, '--to', 'fifo-never-2', '--create'], /another job is already reading from this FIFO/);
    await cancelWhileWaiting(restoreJob);
    assert.equal((await daemon.cli(['volume', 'show', 'fifo-never'])).code, 1, 'no volume was made');
    assert.equal(fs.statSync(fifo).isFIFO(), true);
    // The cancelled jobs gave their ends back: a new backup may wait on the FIFO again.
    await cancelWhileWaiting(await startJob(['backup', 'create', 'fifo-wait', '--to', `file:${sameFifo}`]));
    fs.rmSync(sameFifo);

    // A daemon of its own, stopped while its backup waits for a reader: it exits, and promptly
    // (Node joins its thread pool on exit: an open left waiting kept it alive for ever).
    const own = await startDaemon({ extraArgs: ['--pool-size', '256M', '--media-root', mediaRoot] });
    try {
      await own.cliJson(['volume', 'create', 'v', '--size', '8M']);
      const waiting = await own.cliJson<BackupEntry>(['backup', 'create', 'v', '--to', `file:${fifo}`, '--no-wait']);
      for (let waitedMs = 0; (await own.cliJson<{ state: string }>(['job', 'show', waiting.jobId!])).state !== 'running'; waitedMs += 50) {
        assert.ok(waitedMs < 10_000, 'the backup did not start');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await new Promise((resolve) => setTimeout(resolve, 300));
      const exit = await own.stop(15_000);
      assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}`);
    } finally {
      await own.cleanup();
    }
  });

  test('a backup region inside the array (volume:NAME): read-only over NBD while it holds the backup, restored equal, freed by --purge-media', { timeout: TEST_TIMEOUT_MS }, async () => {
    const writes: Writes = [[0, MiB, 0x61], [5 * MiB + 4096, 70_000, 0x62], [15 * MiB, MiB, 0x63]];
    await createVolume('reg-src', '16M', writes);
    await createVolume('vault', '8M');
    const candidates = await daemon.cliJson<{ candidates: Array<{ medium: string; fitsFull: boolean }> }>(['backup', 'candidates', 'reg-src']);
    assert.ok(candidates.candidates.some((candidate) => candidate.medium === 'volume:vault' && candidate.fitsFull), JSON.stringify(candidates));

    const entry = await backupTo('reg-src', 'volume:vault');
    assert.equal(entry.medium, 'volume:vault');
    const shown = await daemon.cli(['volume', 'show', 'vault']);
    assertOk(shown, 'volume show vault');
    assert.match(shown.stdout, new RegExp(`holds backup +${entry.id}`));
    // A real NBD client sees the region read-only, and its writes are refused.
    const info = JSON.parse((await runOk('nbdinfo', ['--json', daemon.nbdUri('vault')])).stdout) as { exports: Array<{ is_read_only: boolean }> };
    assert.equal(info.exports[0]!.is_read_only, true);
    await assert.rejects(qemuIo(daemon.nbdUri('vault'), ['write -P 0x66 0 4k']), 'a write to the region over NBD fails');
    assertFails(await daemon.cli(['volume', 'delete', 'vault']), 1, /holds backup/);

    assertOk(await daemon.cli(['backup', 'verify', 'volume:vault'], { timeoutMs: JOB_TIMEOUT_MS }), 'verify the region');
    assertOk(await daemon.cli(['restore', 'volume:vault', '--to', 'reg-restored', '--create'], { timeoutMs: JOB_TIMEOUT_MS }), 'restore from the region');
    await assertSameContent(daemon.nbdUri('reg-src'), daemon.nbdUri('reg-restored'), { timeoutMs: 60_000 });
    assertFails(await daemon.cli(['medium', 'inspect', 'volume:vault']), 1, /inside the array/);

    assertOk(await daemon.cli(['backup', 'delete', entry.id, '--purge-media']), 'delete with purge');
    const freed = await daemon.cliJson<{ allocatedBytes: number; holdsBackup: string | null }>(['volume', 'show', 'vault']);
    assert.deepEqual([freed.allocatedBytes, freed.holdsBackup], [0, null], 'the purge empties the region');
    assertOk(await daemon.cli(['volume', 'delete', 'vault']), 'the region can go once its backup is gone');
  });

  test('cartridges: dir: with --media-size 1M spans several; restore equal; a lost cartridge fails the restore clearly', { timeout: TEST_TIMEOUT_MS }, async () => {
    const writes: Writes = [[0, MiB, 0x51], [3 * MiB, MiB, 0x52], [7 * MiB + 4096, MiB, 0x53], [15 * MiB, MiB, 0x54], [31 * MiB, MiB, 0x55], [20 * MiB, 4096, 0x56]];
    await createVolume('carts', '32M', writes);
    const cartDir = media('carts');
    fs.mkdirSync(cartDir);
    const entry = await backupTo('carts', `dir:${cartDir}`, ['--media-size', '1M']);
    const cartridges = fs.readdirSync(cartDir).filter((name) => name.startsWith(`${entry.id}.`)).sort();
    assert.ok(cartridges.length >= 5, `~5 MiB in 1 MiB cartridges: ${cartridges.join(', ')}`);
    for (const name of cartridges.slice(0, -1)) assert.equal(fs.statSync(path.join(cartDir, name)).size, MiB, `${name} is full`);

    assertOk(await daemon.cli(['restore', entry.id, '--to', 'carts-copy', '--create'], { timeoutMs: JOB_TIMEOUT_MS }), 'restore from cartridges');
    await assertSameContent(daemon.nbdUri('carts'), daemon.nbdUri('carts-copy'), { timeoutMs: 60_000 });
    const inspected = await daemon.cliJson<{ cartridges: number; recordCount: number; digestHex: string }>(['medium', 'inspect', `dir:${cartDir}`]);
    assert.equal(inspected.cartridges, cartridges.length);
    assert.equal(inspected.recordCount, entry.extents);
    assert.equal(inspected.digestHex, entry.digest);

    // A cartridge lost from the middle of the set.
    const lost = cartridges[2]!;
    fs.renameSync(path.join(cartDir, lost), path.join(mediaRoot, `${lost}.aside`));
    await createVolume('carts-wb', '32M', [[MiB, MiB, 0x77]]);
    const writeback = await daemon.cli(['restore', entry.id, '--to', 'carts-wb', '--method', 'writeback'], { timeoutMs: JOB_TIMEOUT_MS });
    assertFails(writeback, 1, new RegExp(`cartridge ${lost.replace('.', '\\.')} is missing`));
    assert.match((await daemon.cli(['volume', 'show', 'carts-wb'])).stdout, /incomplete/, 'volume show says incomplete after a failed writeback');

    const keepWrites: Writes = [[2 * MiB, MiB, 0x78]];
    await createVolume('carts-keep', '32M', keepWrites);
    const remap = await daemon.cli(['restore', entry.id, '--to', 'carts-keep'], { timeoutMs: JOB_TIMEOUT_MS });
    assertFails(remap, 1, /is missing/);
    assert.equal(await volumeState('carts-keep'), 'ready');
    await assertSameContent(daemon.nbdUri('carts-keep'), await referenceOf('carts-keep', 32 * MiB, keepWrites), { timeoutMs: 60_000 });

    assertFails(await daemon.cli(['backup', 'verify', entry.id], { timeoutMs: JOB_TIMEOUT_MS }), 1, /is missing/);
    assertFails(await daemon.cli(['medium', 'inspect', `dir:${cartDir}`]), 1, /is missing/);
  });

  test('candidates size the next backup; backup copy onto cartridges keeps the management information and restores equal', { timeout: TEST_TIMEOUT_MS }, async () => {
    const writes: Writes = [[0, MiB, 0x61], [5 * MiB, 2 * MiB, 0x62], [12 * MiB + 8192, 4096, 0x63]];
    await createVolume('vault-src', '16M', writes);
    const before = await daemon.cliJson<{ volume: string; candidates: Array<{ medium: string; root: string; freeBytes: number; fullBytes: number; incrementalBytes: number | null; fitsFull: boolean }> }>(['backup', 'candidates', 'vault-src']);
    const fileCandidate = before.candidates[0]!;
    assert.deepEqual([fileCandidate.medium, fileCandidate.root], [`file:${media('vault-src-<id>.tbk')}`, mediaRoot]);
    assert.ok(fileCandidate.fullBytes >= 3 * MiB + 65536 && fileCandidate.fitsFull, JSON.stringify(before));
    assert.equal(fileCandidate.incrementalBytes, null, 'nothing to build an incremental on yet');
    const human = await daemon.cli(['backup', 'candidates', 'vault-src']);
    assertOk(human, 'backup candidates');
    assert.match(human.stdout, /^MEDIUM +FREE +FULL +INCREMENTAL$/m);
    assert.match(human.stdout, /- \(no base\)/);

    const original = await backupTo('vault-src', `file:${media('vault-src.tbk')}`, ['--label', 'offsite', '--via', 'compact']);
    assert.equal(original.method, 'compact');
    const vault = media('vault');
    fs.mkdirSync(vault);
    const copy = await daemon.cliJson<BackupEntry & { copiedFrom: string | null; labels: string[] }>(['backup', 'copy', original.id, '--to', `dir:${vault}`, '--media-size', '1M'], { timeoutMs: JOB_TIMEOUT_MS });
    assert.equal(copy.state, 'complete', JSON.stringify(copy));
    assert.equal(copy.copiedFrom, original.id);
    assert.equal(copy.digest, original.digest);
    assert.deepEqual(copy.labels, ['offsite']);
    assert.ok(fs.readdirSync(vault).filter((name) => name.startsWith(`${original.id}.`)).length >= 3, 'the stream keeps its own backup id, on 1 MiB cartridges');
    assert.match((await daemon.cli(['backup', 'show', copy.id])).stdout, new RegExp(`copied from +${original.id}`));
    assertOk(await daemon.cli(['restore', copy.id, '--to', 'vault-restored', '--create'], { timeoutMs: JOB_TIMEOUT_MS }), 'restore from the copy');
    await assertSameContent(daemon.nbdUri('vault-restored'), await referenceOf('vault-src', 16 * MiB, writes), { timeoutMs: 60_000 });
    const after = await daemon.cliJson<{ candidates: Array<{ medium: string; incrementalBytes: number | null; freeBytes: number }> }>(['backup', 'candidates', 'vault-src']);
    assert.notEqual(after.candidates[0]!.incrementalBytes, null, 'a complete backup to build on');
    const vaultCandidate = after.candidates.find((candidate) => candidate.medium === `dir:${vault}`);
    assert.ok(vaultCandidate && vaultCandidate.freeBytes > 0, `the vault is a cartridge set now: ${JSON.stringify(after)}`);

    const catalog = await backupList();
    assertFails(await daemon.cli(['backup', 'copy', original.id, '--to', `file:${media('vault-src.tbk')}`]), 1, /another medium/);
    assertFails(await daemon.cli(['backup', 'copy', original.id, '--to', `file:${media('nowhere/c.tbk')}`]), 1, /does not exist/);
    assertFails(await daemon.cli(['backup', 'copy', original.id, '--to', `dir:${vault}`]), 1, /--media-size/);
    assertFails(await daemon.cli(['backup', 'copy', original.id, '--to', `file:${path.join(outside, 'c.tbk')}`]), 1, /outside the media roots/);
    assertFails(await daemon.cli(['backup', 'copy', 'bk-999999', '--to', `file:${media('c.tbk')}`]), 1, /no backup/);
    assertFails(await daemon.cli(['backup', 'candidates', 'no-such-volume']), 1, /no volume/);
    assert.deepEqual(await backupList(), catalog, 'refusals record nothing');

    const detached = await daemon.cli(['backup', 'copy', original.id, '--to', `file:${media('vault-src-2.tbk')}`, '--no-wait']);
    assertOk(detached, 'backup copy --no-wait');
    const jobId = /job (job-\d+)/.exec(detached.stdout)?.[1];
    assert.ok(jobId, detached.stdout);
    assertOk(await daemon.cli(['job', 'wait', jobId], { timeoutMs: JOB_TIMEOUT_MS }), 'job wait');
    const detachedCopy = (await daemon.cliJson<{ backups: Array<BackupEntry & { copiedFrom: string | null }> }>(['backup', 'list'])).backups.at(-1)!;
    assert.deepEqual([detachedCopy.state, detachedCopy.copiedFrom, detachedCopy.digest], ['complete', original.id, original.digest]);
  });

  test('damaged media: flipped bytes and truncation are caught by verify, restore and medium inspect', { timeout: TEST_TIMEOUT_MS }, async () => {
    const writes: Writes = [[0, MiB, 0x61], [4 * MiB, 2 * MiB, 0x62], [15 * MiB, 65536, 0x63]];
    await createVolume('dmg', '16M', writes);
    const original = media('dmg.tbk');
    const entry = await backupTo('dmg', `file:${original}`);
    const streamBytes = fs.statSync(original).size;
    assert.equal(streamBytes, entry.streamBytes);
    assertOk(await daemon.cli(['backup', 'verify', entry.id], { timeoutMs: JOB_TIMEOUT_MS }), 'verify of the intact backup');

    // One flip per part of the stream: header, data in the middle, trailer.
    const damaged: Array<[string, string]> = [];
    for (const [part, offsetBytes] of [['header', 200], ['data', Math.floor(streamBytes / 2)], ['trailer', streamBytes - 20]] as const) {
      const copy = media(`dmg-flip-${part}.tbk`);
      fs.copyFileSync(original, copy);
      flipByte(copy, offsetBytes);
      damaged.push([part, copy]);
    }
    const truncated = media('dmg-truncated.tbk');
    fs.copyFileSync(original, truncated);
    fs.truncateSync(truncated, Math.floor(streamBytes * 0.6));
    damaged.push(['truncated', truncated]);

    for (const [part, copy] of damaged) {
      const verify = await daemon.cli(['backup', 'verify', `file:${copy}`], { timeoutMs: JOB_TIMEOUT_MS });
      assertFails(verify, 1, /corrupt at byte \d+/);
      assert.match(verify.stderr, /CORRUPT/, `${part}: the job's error code`);
      assertFails(await daemon.cli(['medium', 'inspect', `file:${copy}`]), 1, /corrupt at byte \d+/);
    }

    // Writeback that fails in the middle of the data: the target is marked incomplete.
    const dataFlip = damaged.find(([part]) => part === 'data')![1];
    await createVolume('dmg-wb', '16M');
    assertFails(await daemon.cli(['restore', `file:${dataFlip}`, '--to', 'dmg-wb', '--method', 'writeback'], { timeoutMs: JOB_TIMEOUT_MS }), 1, /corrupt at byte/);
    assert.equal(await volumeState('dmg-wb'), 'incomplete');

    // Remap: a damaged or truncated stream leaves an existing target exactly as it was.
    const keepWrites: Writes = [[MiB, MiB, 0x6f]];
    await createVolume('dmg-keep', '16M', keepWrites);
    const reference = await referenceOf('dmg-keep', 16 * MiB, keepWrites);
    for (const copy of [dataFlip, truncated]) {
      assertFails(await daemon.cli(['restore', `file:${copy}`, '--to', 'dmg-keep'], { timeoutMs: JOB_TIMEOUT_MS }), 1, /corrupt at byte/);
      assert.equal(await volumeState('dmg-keep'), 'ready');
      await assertSameContent(daemon.nbdUri('dmg-keep'), reference, { timeoutMs: 60_000 });
    }

    // The catalog's own medium damaged in place: verify by id catches it too.
    flipByte(original, Math.floor(streamBytes / 3));
    assertFails(await daemon.cli(['backup', 'verify', entry.id], { timeoutMs: JOB_TIMEOUT_MS }), 1, /corrupt at byte/);
  });

  test('refusals: media outside the roots (path, .., symlink), unknown ids, bad methods; nothing recorded', { timeout: TEST_TIMEOUT_MS }, async () => {
    await createVolume('ref', '8M', [[0, 65536, 0x71]]);
    const listed = await backupList();
    const volumesBefore = (await daemon.cliJson<{ volumes: VolumeInfo[] }>(['volume', 'list'])).volumes.map((volume) => volume.name);
    fs.symlinkSync(outside, media('escape-link'));

    for (const medium of [`file:${path.join(outside, 'x.tbk')}`, `file:${mediaRoot}/../escape.tbk`, `dir:${media('escape-link')}`, `file:${media('escape-link')}/x.tbk`]) {
      assertFails(await daemon.cli(['backup', 'create', 'ref', '--to', medium]), 1, /outside the media roots/);
      assertFails(await daemon.cli(['backup', 'verify', medium]), 1, /outside the media roots/);
      assertFails(await daemon.cli(['restore', medium, '--to', 'never', '--create']), 1, /outside the media roots/);
    }
    assert.deepEqual(fs.readdirSync(outside), [], 'nothing written outside the roots');

    // The daemon resolves `..` itself too (the API, not only the CLI's path.resolve).
    const api = async (method: string, route: string, body?: unknown): Promise<{ status: number; json: any }> => {
      const response = await fetch(`${daemon.apiUrl}/api/v1${route}`, {
        method,
        headers: { authorization: `Bearer ${daemon.token}`, 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return { status: response.status, json: await response.json().catch(() => undefined) };
    };
    const dotdot = await api('POST', '/backups', { volume: 'ref', to: `file:${mediaRoot}/sub/../../escape.tbk` });
    assert.equal(dotdot.status, 400, JSON.stringify(dotdot.json));
    assert.match(dotdot.json.error.message, /outside the media roots/);
    const relative = await api('POST', '/backups', { volume: 'ref', to: 'file:relative.tbk' });
    assert.equal(relative.status, 400);
    assert.match(relative.json.error.message, /^to: .*absolute/);
    const badMethod = await api('POST', '/restores', { source: 'bk-000001', to: 'never', method: 'copy' });
    assert.equal(badMethod.status, 400);
    assert.equal(badMethod.json.error.field, 'method');
    const sizeText = await api('POST', '/backups', { volume: 'ref', to: `dir:${mediaRoot}`, mediaSizeBytes: 'lots' });
    assert.equal(sizeText.status, 400);
    assert.equal(sizeText.json.error.field, 'mediaSizeBytes');

    assertFails(await daemon.cli(['backup', 'show', 'bk-999999']), 1, /no backup "bk-999999"/);
    assertFails(await daemon.cli(['backup', 'delete', 'bk-999999']), 1, /no backup "bk-999999"/);
    assertFails(await daemon.cli(['backup', 'verify', 'bk-999999']), 1, /no backup "bk-999999"/);
    assertFails(await daemon.cli(['restore', 'bk-999999', '--to', 'never', '--create']), 1, /no backup "bk-999999"/);
    assertFails(await daemon.cli(['backup', 'show', 'not-an-id']), 1, /id: must be a backup id/);
    // --via: compact is the only way so far; the spec's others are refused by name, not taken as compact.
    assertFails(await daemon.cli(['backup', 'create', 'ref', '--to', `file:${media('via.tbk')}`, '--via', 'cow']), 1, /via: cow: copy-before-write .* not available/);
    assertFails(await daemon.cli(['backup', 'create', 'ref', '--to', `file:${media('via.tbk')}`, '--via', 'pair:p1']), 1, /via: pair:p1: .*split mirror pair .* not available/);
    assertFails(await daemon.cli(['backup', 'create', 'ref', '--to', `file:${media('via.tbk')}`, '--via', 'copy']), 1, /via: must be compact, pair:NAME or cow/);
    assert.equal(fs.existsSync(media('via.tbk')), false);
    assertFails(await daemon.cli(['restore', `file:${media('whatever.tbk')}`, '--to', 'never', '--create', '--method', 'copy']), 2, /--method/);
    assertFails(await daemon.cli(['backup', 'create', 'no-such-volume', '--to', `file:${media('none.tbk')}`]), 1, /no-such-volume/);
    assertFails(await daemon.cli(['backup', 'create', 'ref', '--to', `dir:${mediaRoot}`]), 1, /media-size/);
    assertFails(await daemon.cli(['backup', 'create', 'ref', '--to', `dir:${mediaRoot}`, '--media-size', 'lots']), 2, /--media-size/);

    assert.deepEqual(await backupList(), listed, 'no catalog entry from a refused request');
    const volumesAfter = (await daemon.cliJson<{ volumes: VolumeInfo[] }>(['volume', 'list'])).volumes.map((volume) => volume.name);
    assert.deepEqual(volumesAfter, volumesBefore, 'no volume from a refused restore');
  });

  test('relative media paths resolve against the CLI\'s cwd; backup delete keeps or purges the medium', { timeout: TEST_TIMEOUT_MS }, async () => {
    await createVolume('del', '8M', [[0, 65536, 0x81]]);
    // From the media root as cwd: the daemon's cwd is its home, outside the root, so only a
    // path the CLI made absolute can be accepted.
    const fromMediaRoot = (args: string[]): Promise<CliResult> =>
      run(process.execPath, [CLI_MAIN, '--home', daemon.home, ...args], { cwd: mediaRoot, timeoutMs: JOB_TIMEOUT_MS, env: { PATH: process.env['PATH'] ?? '' } });
    const created = await fromMediaRoot(['--json', 'backup', 'create', 'del', '--to', 'file:purge-me.tbk']);
    assertOk(created, 'backup create with a relative path');
    const purged = JSON.parse(created.stdout) as BackupEntry;
    assert.equal(purged.medium, `file:${media('purge-me.tbk')}`);
    assert.ok(fs.existsSync(media('purge-me.tbk')));
    const kept = await backupTo('del', `file:${media('keep-me.tbk')}`);

    const deleted = await daemon.cli(['backup', 'delete', purged.id, '--purge-media']);
    assertOk(deleted, 'backup delete --purge-media');
    assert.match(deleted.stdout, /deleted backup .* and its stream/);
    assert.equal(fs.existsSync(media('purge-me.tbk')), false, 'the medium file is removed');
    assertOk(await daemon.cli(['backup', 'delete', kept.id]), 'backup delete');
    assert.equal(fs.existsSync(media('keep-me.tbk')), true, 'without --purge-media the file stays');
    const remaining = await backupList();
    assert.equal(remaining.includes(purged.id) || remaining.includes(kept.id), false);
    // The kept file is still a good backup, restorable without the catalog.
    assertOk(await daemon.cli(['restore', `file:${media('keep-me.tbk')}`, '--to', 'del-copy', '--create'], { timeoutMs: JOB_TIMEOUT_MS }), 'restore from a medium');
    await assertSameContent(daemon.nbdUri('del'), daemon.nbdUri('del-copy'), { timeoutMs: 60_000 });
  });
});
