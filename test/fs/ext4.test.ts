/**
 * A real kernel filesystem on a volume: nbdfuse exposes the export as a file, the kernel mounts
 * an ext4 made on it through a loop device, files are written and checksummed; after unmount
 * e2fsck must be clean, and after a daemon restart every file must read back identical — both
 * through a fresh mount and through debugfs on a copy taken with nbdcopy.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { requireTools, runOk, run } from '../helpers/tools.js';

let daemon: Daemon | undefined;
const cleanups: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  await daemon?.cleanup();
});

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** Starts nbdfuse on `mountDir` and waits until the export appears as `mountDir/nbd`. */
async function nbdfuse(uri: string, mountDir: string): Promise<ChildProcess> {
  fs.mkdirSync(mountDir, { recursive: true });
  const child = spawn('nbdfuse', [mountDir, uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  for (let waited = 0; waited < 10_000; waited += 100) {
    if (fs.existsSync(path.join(mountDir, 'nbd'))) return child;
    if (child.exitCode !== null) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`nbdfuse did not expose ${uri} on ${mountDir}: ${stderr}`);
}

async function unfuse(child: ChildProcess, mountDir: string): Promise<void> {
  await run('fusermount3', ['-u', mountDir], { timeoutMs: 20_000 });
  const exited = child.exitCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', resolve));
  const bounded = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(bounded);
}

/** A small tree of files with random content; returns path → sha256. */
function writeTree(root: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (let dir = 0; dir < 4; dir++) {
    fs.mkdirSync(path.join(root, `dir${dir}`), { recursive: true });
    for (let file = 0; file < 6; file++) {
      const data = randomBytes(1 + ((dir * 6 + file) * 97_003) % (3 * 1024 * 1024));
      const relative = `dir${dir}/file${file}.bin`;
      fs.writeFileSync(path.join(root, relative), data);
      sums.set(relative, sha256(data));
    }
  }
  return sums;
}

test('ext4 on a volume: write through the kernel, e2fsck clean, identical after restart', { timeout: 5 * 60_000 }, async () => {
  await requireTools(['nbdfuse', 'fusermount3', 'mkfs.ext4', 'e2fsck', 'debugfs', 'nbdcopy', 'mount', 'umount']);
  assert.equal(process.getuid?.(), 0, 'this test mounts a filesystem and must run as root (CI does)');
  daemon = await startDaemon({ extraArgs: ['--pool-size', '1G'] });
  await daemon.cliJson(['volume', 'create', 'fs', '--size', '512M']);
  const fuseDir = path.join(daemon.home, 'fuse');
  const mountDir = path.join(daemon.home, 'mnt');
  fs.mkdirSync(mountDir, { recursive: true });

  let fuse = await nbdfuse(daemon.nbdUri('fs'), fuseDir);
  cleanups.push(() => unfuse(fuse, fuseDir));
  await runOk('mkfs.ext4', ['-q', '-F', path.join(fuseDir, 'nbd')], { timeoutMs: 120_000 });
  await runOk('mount', ['-o', 'loop', path.join(fuseDir, 'nbd'), mountDir], { timeoutMs: 30_000 });
  cleanups.push(() => run('umount', [mountDir]));
  const sums = writeTree(mountDir);
  await runOk('umount', [mountDir], { timeoutMs: 60_000 });
  await runOk('e2fsck', ['-fn', path.join(fuseDir, 'nbd')], { timeoutMs: 120_000 });
  await unfuse(fuse, fuseDir);

  const allocated = (await daemon.cliJson<{ allocatedBytes: number }>(['volume', 'show', 'fs'])).allocatedBytes;
  assert.ok(allocated < 256 * 1024 * 1024, `thin: a 512 MiB filesystem holding ~40 MiB allocates ${allocated} bytes`);

  await daemon.restart();
  // Through a copy of the volume: e2fsck and debugfs read the image the array serves.
  const image = path.join(daemon.home, 'copy.raw');
  await runOk('nbdcopy', [daemon.nbdUri('fs'), image], { timeoutMs: 120_000 });
  await runOk('e2fsck', ['-fn', image], { timeoutMs: 120_000 });
  const [firstPath, firstSum] = [...sums.entries()][0]!;
  const dumped = path.join(daemon.home, 'dumped.bin');
  await runOk('debugfs', ['-R', `dump /${firstPath} ${dumped}`, image], { timeoutMs: 60_000 });
  assert.equal(sha256(fs.readFileSync(dumped)), firstSum, `debugfs dump of /${firstPath}`);

  // Through the kernel again.
  fuse = await nbdfuse(daemon.nbdUri('fs'), fuseDir);
  await runOk('mount', ['-o', 'loop,ro', path.join(fuseDir, 'nbd'), mountDir], { timeoutMs: 30_000 });
  for (const [relative, sum] of sums) {
    assert.equal(sha256(fs.readFileSync(path.join(mountDir, relative))), sum, relative);
  }
  await runOk('umount', [mountDir], { timeoutMs: 60_000 });
  await unfuse(fuse, fuseDir);
  const report = await daemon.cliJson<{ ok: boolean }>(['check']);
  assert.equal(report.ok, true);
});
