// First interop test: the real daemon driven by the real tools (qemu-io, qemu-img, nbdinfo,
// nbdcopy). Every write goes to a volume over NBD and to a reference file; the two must stay equal,
// the allocation map must be the written extents, a discard must give the space back, and all of
// it must survive a daemon restart.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import {
  alignRanges,
  assertSameContent,
  dataRanges,
  makeReferenceFile,
  mergeRanges,
  nbdinfoMap,
  qemuIo,
  requireTools,
  runOk,
  sha256File,
  type Range,
} from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const VOLUME = 'smoke';
const VOLUME_BYTES = 64 * MiB;
const STEP_TIMEOUT_MS = 120_000;

interface PatternWrite {
  what: string;
  offset: number;
  length: number;
  pattern: number;
}

/** Non-overlapping writes, each with its own non-zero pattern. */
const WRITES: PatternWrite[] = [
  { what: 'aligned extent at 0', offset: 0, length: 64 * KiB, pattern: 0x11 },
  { what: 'aligned 4K inside an extent', offset: 1 * MiB, length: 4 * KiB, pattern: 0x22 },
  { what: 'unaligned offset and length', offset: 3_000_001, length: 12_345, pattern: 0x33 },
  { what: 'unaligned, across an extent boundary', offset: 2 * MiB - 100, length: 300, pattern: 0x44 },
  { what: 'one byte', offset: 5 * MiB + 7, length: 1, pattern: 0x55 },
  { what: 'multi-extent, unaligned length', offset: 8 * MiB, length: 1 * MiB + 512, pattern: 0x88 },
  { what: '4K a page before the end', offset: VOLUME_BYTES - 8 * KiB, length: 4 * KiB, pattern: 0x66 },
  { what: 'last 10 bytes of the volume', offset: VOLUME_BYTES - 10, length: 10, pattern: 0x77 },
];

/** Whole extents at 8M..10M: covers the 0x88 write, so its extents must be freed. */
const DISCARD: Range = { offset: 8 * MiB, length: 2 * MiB };

function subtract(ranges: readonly Range[], cut: Range): Range[] {
  const out: Range[] = [];
  for (const r of ranges) {
    const end = r.offset + r.length;
    const cutEnd = cut.offset + cut.length;
    if (end <= cut.offset || r.offset >= cutEnd) {
      out.push(r);
      continue;
    }
    if (r.offset < cut.offset) out.push({ offset: r.offset, length: cut.offset - r.offset });
    if (end > cutEnd) out.push({ offset: cutEnd, length: end - cutEnd });
  }
  return out;
}

function totalBytes(ranges: readonly Range[]): number {
  return ranges.reduce((sum, r) => sum + r.length, 0);
}

describe('interop smoke: qemu-io, qemu-img, nbdinfo, nbdcopy against the real daemon', { timeout: 15 * 60_000 }, () => {
  let daemon: Daemon | undefined;
  let workDir = '';
  let reference = '';
  let extentBytes = 0;

  const d = (): Daemon => {
    assert.ok(daemon, 'daemon not started');
    return daemon;
  };
  const uri = (): string => d().nbdUri(VOLUME);
  const volumeShow = async (): Promise<{ capacityBytes: number; allocatedBytes: number; mappedExtents: number }> =>
    d().cliJson(['volume', 'show', VOLUME]);
  const expectMap = async (expected: Range[], when: string): Promise<void> => {
    const map = await nbdinfoMap(uri());
    assert.equal(totalBytes(map), VOLUME_BYTES, `${when}: map covers the whole volume`);
    assert.deepEqual(dataRanges(map), expected, `${when}: nbdinfo --map data extents`);
  };

  before(async () => {
    await requireTools(['qemu-io', 'qemu-img', 'nbdinfo', 'nbdcopy']);
    workDir = await mkdtemp(join(tmpdir(), 'thinarray-smoke-'));
    reference = join(workDir, 'reference.raw');
    await makeReferenceFile(reference, VOLUME_BYTES);
    daemon = await startDaemon();
  });

  after(async () => {
    await daemon?.cleanup();
    if (workDir !== '') await rm(workDir, { recursive: true, force: true });
  });

  it('creates a volume with the CLI and serves it over NBD', { timeout: STEP_TIMEOUT_MS }, async () => {
    const created = await d().cli(['volume', 'create', VOLUME, '--size', '64M']);
    assert.equal(created.code, 0, `volume create failed: ${created.stderr}`);
    const pool = await d().cliJson<{ extentBytes: number }>(['pool', 'show']);
    extentBytes = pool.extentBytes;
    assert.ok(Number.isInteger(extentBytes) && extentBytes >= 4 * KiB, `pool extentBytes ${extentBytes}`);
    const shown = await volumeShow();
    assert.equal(shown.capacityBytes, VOLUME_BYTES);
    assert.equal(shown.allocatedBytes, 0, 'a new thin volume has nothing allocated');
    const size = await runOk('nbdinfo', ['--size', uri()]);
    assert.equal(Number(size.stdout.trim()), VOLUME_BYTES, 'NBD export size');
    await expectMap([], 'new volume');
    await assertSameContent(reference, uri());
  });

  it('writes patterns at aligned and unaligned offsets and at the end, and reads them back', { timeout: STEP_TIMEOUT_MS }, async () => {
    const writes = WRITES.map((w) => `write -P ${w.pattern} ${w.offset} ${w.length}`);
    await qemuIo(uri(), writes);
    await qemuIo(reference, writes);
    // Fresh connection: read every pattern back, and the zeros around them.
    await qemuIo(uri(), [
      ...WRITES.map((w) => `read -P ${w.pattern} ${w.offset} ${w.length}`),
      `read -P 0 ${64 * KiB} ${1 * MiB - 64 * KiB}`,
      `read -P 0 ${1 * MiB + 4 * KiB} 4096`,
      `read -P 0 ${3_000_001 + 12_345} 1000`,
      `read -P 0 ${5 * MiB} 7`,
      `read -P 0 ${5 * MiB + 8} 4089`,
      `read -P 0 ${VOLUME_BYTES - 4 * KiB} ${4 * KiB - 10}`,
    ]);
  });

  it('refuses a write past the end of the volume and changes nothing', { timeout: STEP_TIMEOUT_MS }, async () => {
    await assert.rejects(qemuIo(uri(), [`write -P 0x99 ${VOLUME_BYTES - 512} 1024`]), /failed|error|out of range|invalid/i);
    await assert.rejects(qemuIo(uri(), [`write -P 0x99 ${VOLUME_BYTES} 512`]), /failed|error|out of range|invalid/i);
    await qemuIo(uri(), [`read -P 0x77 ${VOLUME_BYTES - 10} 10`]);
  });

  it('equals the reference file (qemu-img compare, nbdcopy + sha256)', { timeout: STEP_TIMEOUT_MS }, async () => {
    await assertSameContent(reference, uri());
    const copy = join(workDir, 'copy.raw');
    await runOk('nbdcopy', [uri(), copy], { timeoutMs: STEP_TIMEOUT_MS });
    assert.equal(await sha256File(copy), await sha256File(reference), 'nbdcopy of the volume vs the reference');
    await rm(copy, { force: true });
  });

  it('maps exactly the written extents (nbdinfo --map, volume show)', { timeout: STEP_TIMEOUT_MS }, async () => {
    const expected = alignRanges(WRITES, extentBytes);
    await expectMap(expected, 'after writes');
    const shown = await volumeShow();
    assert.equal(shown.allocatedBytes, totalBytes(expected), 'allocatedBytes = written extents');
  });

  it('gives the space back on discard', { timeout: STEP_TIMEOUT_MS }, async () => {
    const before = await volumeShow();
    await qemuIo(uri(), [`discard ${DISCARD.offset} ${DISCARD.length}`]);
    await qemuIo(reference, [`write -z ${DISCARD.offset} ${DISCARD.length}`]);
    await qemuIo(uri(), [`read -P 0 ${DISCARD.offset} ${DISCARD.length}`]);
    const expected = mergeRanges(subtract(alignRanges(WRITES, extentBytes), DISCARD));
    const afterDiscard = await volumeShow();
    assert.ok(afterDiscard.allocatedBytes < before.allocatedBytes, `allocatedBytes ${before.allocatedBytes} -> ${afterDiscard.allocatedBytes}`);
    assert.equal(afterDiscard.allocatedBytes, totalBytes(expected), 'allocatedBytes = written extents minus discarded ones');
    await expectMap(expected, 'after discard');
    await assertSameContent(reference, uri());
  });

  it('keeps everything across a daemon restart', { timeout: STEP_TIMEOUT_MS }, async () => {
    const beforeRestart = await volumeShow();
    await d().restart();
    const afterRestart = await volumeShow();
    assert.equal(afterRestart.capacityBytes, VOLUME_BYTES);
    assert.equal(afterRestart.allocatedBytes, beforeRestart.allocatedBytes, 'allocatedBytes after restart');
    await assertSameContent(reference, uri());
    await expectMap(mergeRanges(subtract(alignRanges(WRITES, extentBytes), DISCARD)), 'after restart');
    await qemuIo(uri(), WRITES.filter((w) => w.offset >= DISCARD.offset + DISCARD.length || w.offset + w.length <= DISCARD.offset)
      .map((w) => `read -P ${w.pattern} ${w.offset} ${w.length}`));
  });
});
