/**
 * A full pool through a real client: writes that need new extents fail with ENOSPC (qemu-io
 * reports "No space left on device"), nothing already written is harmed, `pool show` and the
 * log say the pool is full, and once space is discarded writes work again — check stays clean.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { qemuIo, requireTools, run } from '../helpers/tools.js';

let daemon: Daemon | undefined;
after(async () => {
  await daemon?.cleanup();
});

test('a full pool gives the writer ENOSPC, corrupts nothing, and recovers after discard', { timeout: 120_000 }, async () => {
  await requireTools(['qemu-io']);
  // 4 MiB pool file: the label takes one 64 KiB extent, 63 remain.
  daemon = await startDaemon({ extraArgs: ['--pool-size', '4M'] });
  await daemon.cliJson(['volume', 'create', 'big', '--size', '1G']);
  const uri = daemon.nbdUri('big');
  await qemuIo(uri, ['write -P 0x5a 0 3M']);

  const overflow = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 16M 2M', uri], { timeoutMs: 60_000 });
  assert.match(overflow.stdout + overflow.stderr, /No space left on device/, 'the writer sees ENOSPC');

  await qemuIo(uri, ['read -P 0x5a 0 3M', 'read -P 0 16M 2M']);
  const pool = await daemon.cliJson<{ extentsFree: number; extentsUsed: number }>(['pool', 'show']);
  assert.equal(pool.extentsUsed, 48, '3 MiB written = 48 extents; the failed write allocated nothing');
  assert.equal(pool.extentsFree, 15);
  const log = fs.readFileSync(path.join(daemon.home, 'thinarray.log'), 'utf8');
  assert.match(log, /pool is full/);

  // qemu-io drops discards unless --discard=unmap asks it to pass them on.
  const discard = await run('qemu-io', ['-f', 'raw', '--discard=unmap', '-c', 'discard 0 2M', '-c', 'flush', uri], { timeoutMs: 60_000 });
  assert.match(discard.stdout, /discard 2097152\/2097152 bytes at offset 0/);
  assert.equal((await daemon.cliJson<{ extentsFree: number }>(['pool', 'show'])).extentsFree, 15 + 32, 'the discard returned 32 extents');
  await qemuIo(uri, ['write -P 0x6b 16M 2M', 'read -P 0x6b 16M 2M', 'read -P 0 0 2M', 'read -P 0x5a 2M 1M']);
  const report = await daemon.cliJson<{ ok: boolean }>(['check']);
  assert.equal(report.ok, true);
});
