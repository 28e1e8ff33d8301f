// Point-in-time copies through the real daemon, proven with real clients (qemu-io, qemu-img,
// nbdcopy): each copy is exactly the point in time — while the background copy runs (reads of a
// copy in progress already return point-in-time data; its export refuses writes), after it ends,
// and after a kill -9 in the middle of it — while the source keeps being written. The compact
// copy's capacity is the used size plus its header, its header parses from a raw read, and X_i
// holds source extent A_j. The refusals (existing target, small pool, busy source) change nothing.
//
// Every byte is checked against a reference raw file given the same writes; `pit-*.raw` are
// copies of that reference taken at each point in time.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { open, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { assertSameContent, makeReferenceFile, qemuIo, requireTools, run, runOk, sha256File } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const EXTENT_BYTES = 64 * KiB;
const STEP_TIMEOUT_MS = 240_000;
/** Extents below this one hold the hand-written patterns; the scattered bulk data starts here. */
const BULK_FIRST_EXTENT = 64;
/** Bulk extents are every other extent, so the copy engine moves them one by one (it takes a moment). */
const BULK_STRIDE = 2;
const COMPACT_MAGIC = 'THINARRAY-COMPACT-COPY\n';
const COMPACT_TABLE_OFFSET_BYTES = 4096;

interface CopyInfo {
  id: number;
  source: string;
  target: string;
  mode: 'instant' | 'compact';
  state: 'copying' | 'complete' | 'failed';
  pointInTime: string;
  jobId: string | null;
  extentBytes: number;
  sourceCapacityBytes: number;
  extentCount: number;
  metadataExtents: number;
  targetCapacityBytes: number;
  correspondence?: Array<{ x: number; sourceExtent: number; sourceOffsetBytes: number }>;
}

interface JobInfo {
  id: string;
  state: string;
  progress: { doneBytes: number; totalBytes: number };
}

interface ApiReply {
  status: number;
  json: any;
}

/** The same writes before each point in time: aligned, unaligned, across extents, at the end. */
function patternWrites(capacityBytes: number): string[] {
  return [
    `write -P 0x11 0 ${EXTENT_BYTES}`, // one whole extent
    `write -P 0x22 ${EXTENT_BYTES + 4097} 1000`, // unaligned, inside an extent
    `write -P 0x33 ${3 * EXTENT_BYTES - 1536} 8192`, // across an extent boundary
    `write -P 0x44 ${capacityBytes - 4096} 4096`, // the last 4 KiB
    `write -P 0x55 ${capacityBytes - EXTENT_BYTES - 512} 1024`, // across the last boundary
  ];
}

/** What the PIT holds where writes after it land (uniform regions, so qemu-io can check them fast). */
function pointInTimeReads(capacityBytes: number): string[] {
  return [
    `read -P 0x11 0 4096`,
    `read -P 0x33 ${3 * EXTENT_BYTES - 1536} 8192`,
    `read -P 0 ${5 * EXTENT_BYTES} 4096`,
    `read -P 0x44 ${capacityBytes - 4096} 4096`,
  ];
}

/** Writes after the point in time, while the background copy runs: partial, whole-extent, unmapped, trimmed, at the end. */
function writesAfterPointInTime(capacityBytes: number, bulkLastExtent: number, pattern: number): string[] {
  const middle = BULK_FIRST_EXTENT + BULK_STRIDE * 100;
  return [
    `write -P ${pattern} 0 4096`, // partial write of a needed extent
    `write -P ${pattern + 1} ${3 * EXTENT_BYTES - 1024} 2048`, // across a boundary, both needed
    `write -P ${pattern + 2} ${5 * EXTENT_BYTES} 4096`, // unmapped at the point in time
    `write -P ${pattern + 3} ${capacityBytes - 100} 100`, // at the end
    `discard ${(bulkLastExtent - 4) * EXTENT_BYTES} ${3 * EXTENT_BYTES}`, // whole extents: returned to the pool
    `write -P ${pattern + 4} ${bulkLastExtent * EXTENT_BYTES} ${EXTENT_BYTES}`, // a whole needed extent, late in the copy order
    `write -P ${pattern + 5} ${(middle + 1) * EXTENT_BYTES - 700} 1400`, // unaligned, across a needed and a free extent
  ];
}

/** qemu-io with --discard=unmap (so a discard reaches the volume as TRIM and punches the file). */
async function qemuIoUnmap(target: string, commands: readonly string[]): Promise<void> {
  const args = ['-f', 'raw', '--discard=unmap', ...commands.flatMap((command) => ['-c', command]), target];
  const result = await runOk('qemu-io', args, { timeoutMs: 60_000 });
  assert.doesNotMatch(`${result.stdout}${result.stderr}`, /failed|error/i, `qemu-io ${commands.join('; ')}`);
}

/** Bulk data: `count` extents, every BULK_STRIDE-th from BULK_FIRST_EXTENT, each stamped with its index every 4 KiB. */
async function writeScatteredExtents(path: string, count: number): Promise<number> {
  const handle = await open(path, 'r+');
  const block = Buffer.alloc(EXTENT_BYTES);
  let extent = BULK_FIRST_EXTENT;
  try {
    for (let i = 0; i < count; i++, extent += BULK_STRIDE) {
      block.fill((extent % 251) + 1);
      for (let offset = 0; offset < EXTENT_BYTES; offset += 4096) block.writeUInt32LE(extent, offset);
      await handle.write(block, 0, EXTENT_BYTES, extent * EXTENT_BYTES);
    }
  } finally {
    await handle.close();
  }
  return extent - BULK_STRIDE;
}

/** Byte equality of two buffers with a short message (no megabyte diffs). */
function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  if (actual.equals(expected)) return;
  const first = actual.findIndex((byte, i) => byte !== expected[i]);
  assert.fail(`${what}: first difference at byte ${first}: ${actual[first]} instead of ${expected[first]}`);
}

describe('interop: point-in-time copies with qemu-io, qemu-img and nbdcopy', { timeout: 20 * 60_000 }, () => {
  let daemon: Daemon | undefined;
  let workDir = '';

  const d = (): Daemon => {
    assert.ok(daemon, 'daemon not started');
    return daemon;
  };

  /** The API straight (state checks must be quicker than a CLI start while a copy runs). */
  async function api(method: string, path: string, body?: unknown): Promise<ApiReply> {
    const headers: Record<string, string> = { authorization: `Bearer ${d().token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch(`${d().apiUrl}/api/v1${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    const text = await response.text();
    return { status: response.status, json: text === '' ? undefined : JSON.parse(text) };
  }

  const jobOf = async (id: string): Promise<JobInfo> => (await api('GET', `/jobs/${id}`)).json as JobInfo;

  async function cliOk(args: string[]): Promise<string> {
    const result = await d().cli(args, { timeoutMs: STEP_TIMEOUT_MS });
    assert.equal(result.code, 0, `thinarray ${args.join(' ')}: ${result.stderr}`);
    return result.stdout;
  }

  /** A refused command: exit 1 and one line on stderr matching `message`. */
  async function cliRefused(args: string[], message: RegExp): Promise<string> {
    const result = await d().cli(args);
    assert.equal(result.code, 1, `thinarray ${args.join(' ')} should fail: ${result.stdout}${result.stderr}`);
    const lines = result.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, `one line on stderr: ${result.stderr}`);
    assert.match(lines[0]!, message);
    return lines[0]!;
  }

  /** The point in time: a sparse copy of the reference as it is now. */
  function snapshotReference(reference: string, name: string): string {
    const path = join(workDir, name);
    execFileSync('cp', ['--sparse=always', reference, path]);
    return path;
  }

  /** A source volume with scattered bulk data (nbdcopy from the reference) and the pattern writes (qemu-io on both). */
  async function makeSource(name: string, capacityBytes: number, bulkExtents: number): Promise<{ reference: string; bulkLastExtent: number }> {
    await cliOk(['volume', 'create', name, '--size', String(capacityBytes)]);
    const reference = join(workDir, `${name}.raw`);
    await makeReferenceFile(reference, capacityBytes);
    const bulkLastExtent = await writeScatteredExtents(reference, bulkExtents);
    await runOk('nbdcopy', [reference, d().nbdUri(name)], { timeoutMs: STEP_TIMEOUT_MS });
    await qemuIo(d().nbdUri(name), patternWrites(capacityBytes));
    await qemuIo(reference, patternWrites(capacityBytes));
    await assertSameContent(reference, d().nbdUri(name), { timeoutMs: STEP_TIMEOUT_MS });
    const shown = await d().cliJson(['volume', 'show', name]);
    // Pattern extents 0, 1, 2, 3 and the last two, plus the bulk.
    assert.equal(shown.mappedExtents, bulkExtents + 6, 'holes in the reference stay unmapped in the volume');
    return { reference, bulkLastExtent };
  }

  /** Applies writes to the source and its reference while the copy runs. */
  async function writeDuringCopy(source: string, reference: string, commands: string[]): Promise<void> {
    await qemuIoUnmap(d().nbdUri(source), commands);
    await qemuIoUnmap(reference, commands);
  }

  async function createCopyNoWait(source: string, target: string, mode: 'instant' | 'compact'): Promise<CopyInfo> {
    const copy: CopyInfo = await d().cliJson(['copy', 'create', source, target, '--mode', mode, '--no-wait'], { timeoutMs: STEP_TIMEOUT_MS });
    assert.equal(copy.source, source);
    assert.equal(copy.target, target);
    assert.equal(copy.mode, mode);
    assert.ok(copy.jobId, 'the copy names its job');
    return copy;
  }

  before(async () => {
    await requireTools(['qemu-io', 'qemu-img', 'nbdcopy']);
    workDir = await mkdtemp(join(tmpdir(), 'thinarray-copy-interop-'));
    daemon = await startDaemon({ extraArgs: ['--pool-size', '8G'] });
  });

  after(async () => {
    await daemon?.cleanup();
    if (workDir !== '') await rm(workDir, { recursive: true, force: true });
  });

  const SOURCE_BYTES = 2 * GiB;
  /** 512 MiB scattered: the background copy takes a few seconds, long enough to look at it mid-way. */
  const SOURCE_BULK_EXTENTS = 8192;
  let sourceReference = '';
  let sourceBulkLastExtent = 0;

  it('instant copy: the point in time while copying (read-only export) and after; then independent', { timeout: STEP_TIMEOUT_MS }, async () => {
    ({ reference: sourceReference, bulkLastExtent: sourceBulkLastExtent } = await makeSource('src', SOURCE_BYTES, SOURCE_BULK_EXTENTS));
    const pointInTime = snapshotReference(sourceReference, 'pit-instant.raw');

    const copy = await createCopyNoWait('src', 'snap', 'instant');
    assert.equal(copy.state, 'copying');
    assert.equal(copy.targetCapacityBytes, SOURCE_BYTES, 'instant keeps the capacity');
    assert.equal(copy.extentCount, SOURCE_BULK_EXTENTS + 6, 'only mapped extents are copied');
    await writeDuringCopy('src', sourceReference, writesAfterPointInTime(SOURCE_BYTES, sourceBulkLastExtent, 0xa1));

    // While the job runs: the overwritten places read as the point in time, a write is refused.
    assert.equal((await jobOf(copy.jobId!)).state, 'running', 'the copy job is still running (make the bulk larger if this machine is fast)');
    await qemuIo(d().nbdUri('snap'), pointInTimeReads(SOURCE_BYTES), { readOnly: true });
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xee 0 4096', d().nbdUri('snap')]);
    assert.notEqual(write.code, 0, `a write to a copy in progress must be refused: ${write.stdout}${write.stderr}`);
    assert.match(`${write.stdout}${write.stderr}`, /read-only|permission denied|not permitted/i);
    const midCopy = await jobOf(copy.jobId!);
    assert.equal(midCopy.state, 'running', 'the reads above happened while the copy was in progress');
    assert.ok(midCopy.progress.doneBytes < midCopy.progress.totalBytes, 'not everything was copied yet');
    assert.equal((await api('GET', '/copies/snap')).json.state, 'copying');
    // The whole export against the point in time, started while the copy is still running.
    await assertSameContent(pointInTime, d().nbdUri('snap'), { timeoutMs: STEP_TIMEOUT_MS });

    await cliOk(['job', 'wait', copy.jobId!]);
    await assertSameContent(pointInTime, d().nbdUri('snap'), { timeoutMs: STEP_TIMEOUT_MS });
    await assertSameContent(sourceReference, d().nbdUri('src'), { timeoutMs: STEP_TIMEOUT_MS });
    const shown: CopyInfo = await d().cliJson(['copy', 'show', String(copy.id)]);
    assert.equal(shown.state, 'complete');
    const volume = await d().cliJson(['volume', 'show', 'snap']);
    assert.equal(volume.state, 'ready');
    assert.equal(volume.capacityBytes, SOURCE_BYTES);

    // An ordinary, independent volume: writable, and writes to either side stay on that side.
    await qemuIo(d().nbdUri('snap'), ['write -P 0xee 0 4096', `write -P 0xef ${7 * EXTENT_BYTES} 4096`]);
    await qemuIo(pointInTime, ['write -P 0xee 0 4096', `write -P 0xef ${7 * EXTENT_BYTES} 4096`]);
    await writeDuringCopy('src', sourceReference, [`write -P 0xd1 ${9 * EXTENT_BYTES} 4096`]);
    await assertSameContent(pointInTime, d().nbdUri('snap'), { timeoutMs: STEP_TIMEOUT_MS });
    await assertSameContent(sourceReference, d().nbdUri('src'), { timeoutMs: STEP_TIMEOUT_MS });
    const check = await d().cliJson(['check']);
    assert.equal(check.ok, true, JSON.stringify(check.problems));
  });

  it('compact copy: capacity = header + used extents, header parsed raw, X_i = A_j of the point in time', { timeout: STEP_TIMEOUT_MS }, async () => {
    assert.ok(sourceReference !== '', 'runs after the instant copy test (same source)');
    const pointInTime = snapshotReference(sourceReference, 'pit-compact.raw');
    const mapAtPointInTime = await d().cliJson(['volume', 'show', 'src', '--map']);
    const usedBytes: number = mapAtPointInTime.allocatedBytes;
    const mappedExtents = mappedExtentList(mapAtPointInTime.map.runs);
    assert.equal(mappedExtents.length * EXTENT_BYTES, usedBytes);

    const copy = await createCopyNoWait('src', 'packed', 'compact');
    await writeDuringCopy('src', sourceReference, writesAfterPointInTime(SOURCE_BYTES, sourceBulkLastExtent, 0xb1));
    assert.equal((await jobOf(copy.jobId!)).state, 'running', 'the compact copy job is still running');

    const shown: CopyInfo = await d().cliJson(['copy', 'show', 'packed', '--table']);
    assert.equal(shown.extentCount, mappedExtents.length);
    assert.ok(shown.metadataExtents >= 1);
    assert.equal(shown.targetCapacityBytes, shown.metadataExtents * EXTENT_BYTES + usedBytes, 'capacity = metadata area + used size');
    assert.equal(shown.targetCapacityBytes, (shown.metadataExtents + shown.extentCount) * shown.extentBytes);
    assert.deepEqual(shown.correspondence!.map((row) => row.sourceExtent), mappedExtents, 'X_1…X_n are the used extents in logical order');
    assert.deepEqual(shown.correspondence!.map((row) => row.x), mappedExtents.map((_extent, i) => i + 1));
    const human = await cliOk(['copy', 'show', 'packed']);
    assert.match(human, new RegExp(`X_1\\s+${shown.metadataExtents * EXTENT_BYTES}\\s+A_${mappedExtents[0]}\\s+${mappedExtents[0]! * EXTENT_BYTES}`));
    assert.match(human, new RegExp(`X_${mappedExtents.length}\\s+\\d+\\s+A_${mappedExtents.at(-1)}\\s`));

    // Read raw while the copy runs (pending extents come from the source), then after it ends.
    const midCopy = join(workDir, 'packed-mid-copy.raw');
    await runOk('nbdcopy', [d().nbdUri('packed'), midCopy], { timeoutMs: STEP_TIMEOUT_MS });
    await verifyCompactImage(midCopy, shown, pointInTime);
    await cliOk(['job', 'wait', copy.jobId!]);
    const complete = join(workDir, 'packed-complete.raw');
    await runOk('nbdcopy', [d().nbdUri('packed'), complete], { timeoutMs: STEP_TIMEOUT_MS });
    await verifyCompactImage(complete, shown, pointInTime);
    assert.equal(await sha256File(midCopy), await sha256File(complete), 'read mid-copy = read after');
    await rm(midCopy);

    // Independent and writable once complete; the source is exactly its own writes.
    await qemuIo(d().nbdUri('packed'), [`write -P 0xcc ${shown.metadataExtents * EXTENT_BYTES} 4096`]);
    await qemuIo(complete, [`write -P 0xcc ${shown.metadataExtents * EXTENT_BYTES} 4096`]);
    await assertSameContent(complete, d().nbdUri('packed'), { timeoutMs: STEP_TIMEOUT_MS });
    await assertSameContent(sourceReference, d().nbdUri('src'), { timeoutMs: STEP_TIMEOUT_MS });
    await rm(complete);
    const list: CopyInfo[] = (await d().cliJson(['copy', 'list'])).copies;
    assert.deepEqual(list.map((listed) => [listed.target, listed.mode, listed.state]), [['snap', 'instant', 'complete'], ['packed', 'compact', 'complete']]);
  });

  it('errors: existing target, busy source (delete, resize, second copy), unknown source, bad mode; nothing half-made', { timeout: STEP_TIMEOUT_MS }, async () => {
    const volumesBefore = (await d().cliJson(['volume', 'list'])).volumes.map((volume: { name: string }) => volume.name);
    const copiesBefore = (await d().cliJson(['copy', 'list'])).copies.length;
    await cliRefused(['copy', 'create', 'src', 'snap'], /volume snap already exists/);
    await cliRefused(['copy', 'create', 'nope', 'other'], /no volume named "nope"/);
    const badMode = await d().cli(['copy', 'create', 'src', 'other', '--mode', 'fast']);
    assert.equal(badMode.code, 2, badMode.stderr);
    assert.match(badMode.stderr, /instant, compact/);
    const refusedByApi = await api('POST', '/copies', { source: 'src', target: 'bad/name', mode: 'instant' });
    assert.equal(refusedByApi.status, 400);
    assert.equal(refusedByApi.json.error.field, 'target');
    assert.deepEqual((await d().cliJson(['volume', 'list'])).volumes.map((volume: { name: string }) => volume.name), volumesBefore);
    assert.equal((await d().cliJson(['copy', 'list'])).copies.length, copiesBefore);

    // A running copy: its source and target may be neither deleted nor resized, nor copied again.
    const created = await api('POST', '/copies', { source: 'src', target: 'busy-copy', mode: 'instant' });
    assert.equal(created.status, 202, JSON.stringify(created.json));
    const copy = created.json as CopyInfo;
    const refusals = [
      await api('DELETE', '/volumes/src'),
      await api('DELETE', '/volumes/busy-copy'),
      await api('PATCH', '/volumes/src', { sizeBytes: 4 * GiB }),
      await api('POST', '/copies', { source: 'src', target: 'second-copy', mode: 'compact' }),
    ];
    const stillRunning = (await jobOf(copy.jobId!)).state === 'running';
    assert.ok(stillRunning, 'the copy was running during the refusals');
    for (const refusal of refusals) {
      assert.equal(refusal.status, 409, JSON.stringify(refusal.json));
      assert.equal(refusal.json.error.code, 'BUSY');
      assert.match(refusal.json.error.message, new RegExp(`copy ${copy.id}\\b`));
    }
    // The same refusal through the CLI, on the target (harmless should the copy have ended meanwhile).
    await cliRefused(['volume', 'delete', 'busy-copy'], new RegExp(`^thinarray: volume busy-copy cannot be deleted: copy ${copy.id} \\(job ${copy.jobId}\\) depends on it`));
    await cliOk(['job', 'wait', copy.jobId!]);
    await cliOk(['volume', 'delete', 'busy-copy']);
    assert.deepEqual((await d().cliJson(['volume', 'list'])).volumes.map((volume: { name: string }) => volume.name), volumesBefore);
  });

  it('kill -9 during the background copy: it resumes and the target is still exactly the point in time', { timeout: STEP_TIMEOUT_MS }, async () => {
    const capacityBytes = SOURCE_BYTES;
    const { reference, bulkLastExtent } = await makeSource('crash-src', capacityBytes, SOURCE_BULK_EXTENTS);
    const pointInTime = snapshotReference(reference, 'pit-crash.raw');
    const copy = await createCopyNoWait('crash-src', 'crash-copy', 'instant');
    await writeDuringCopy('crash-src', reference, writesAfterPointInTime(capacityBytes, bulkLastExtent, 0xc1));
    // What `job show` answers (GET /jobs/:id), asked straight: a CLI start would let the copy finish first.
    const atKill = await jobOf(copy.jobId!);
    await d().kill9();
    assert.equal(atKill.state, 'running', 'the job was running at the kill');
    assert.ok(atKill.progress.doneBytes < atKill.progress.totalBytes, `killed mid-copy (${atKill.progress.doneBytes} of ${atKill.progress.totalBytes} bytes)`);

    await d().restart();
    await cliOk(['job', 'wait', copy.jobId!]);
    await assertSameContent(pointInTime, d().nbdUri('crash-copy'), { timeoutMs: STEP_TIMEOUT_MS });
    const shown: CopyInfo = await d().cliJson(['copy', 'show', 'crash-copy']);
    assert.equal(shown.state, 'complete');
    const check = await d().cliJson(['check']);
    assert.equal(check.ok, true, JSON.stringify(check.problems));
    assert.deepEqual(check.problems, []);
  });

  it('a pool that cannot hold the copy is refused up front; nothing is made', { timeout: STEP_TIMEOUT_MS }, async () => {
    const small = await startDaemon({ extraArgs: ['--pool-size', '8M'] });
    try {
      await small.cliJson(['volume', 'create', 'vol', '--size', '16M']);
      await qemuIo(small.nbdUri('vol'), ['write -P 0x5a 0 5M']); // 80 of the pool's extents
      const refused = await small.cli(['copy', 'create', 'vol', 'vol-copy', '--mode', 'compact']);
      assert.equal(refused.code, 1, refused.stdout);
      assert.match(refused.stderr.trim(), /^thinarray: the pool cannot hold this copy: it needs \d+ extents, \d+ are free$/);
      const volumes = (await small.cliJson(['volume', 'list'])).volumes.map((volume: { name: string }) => volume.name);
      assert.deepEqual(volumes, ['vol'], 'no target left behind');
      assert.deepEqual((await small.cliJson(['copy', 'list'])).copies, []);
      assert.deepEqual((await small.cliJson(['job', 'list'])).jobs, []);
      await qemuIo(small.nbdUri('vol'), ['read -P 0x5a 0 5M'], { readOnly: true });
    } finally {
      await small.cleanup();
    }
  });
});

/** Logical extent numbers of the mapped runs of `volume show --map`. */
function mappedExtentList(runs: Array<{ offsetBytes: number; lengthBytes: number; mapped: boolean }>): number[] {
  const extents: number[] = [];
  for (const run of runs.filter((entry) => entry.mapped)) {
    for (let offset = run.offsetBytes; offset < run.offsetBytes + run.lengthBytes; offset += EXTENT_BYTES) extents.push(offset / EXTENT_BYTES);
  }
  return extents;
}

/**
 * A raw read of a compact copy: the magic and JSON header in the first 4 KiB, the table of u64 LE
 * source extents at 4096, zeros up to the end of the metadata extents, then X_i = the point in
 * time's extent A_i, for every i, and nothing after X_n.
 */
async function verifyCompactImage(imagePath: string, copy: CopyInfo, pointInTimePath: string): Promise<void> {
  const image = await readFile(imagePath);
  assert.equal(image.length, copy.targetCapacityBytes, 'the raw image is the copy capacity');
  const headerText = image.subarray(0, COMPACT_TABLE_OFFSET_BYTES).toString('utf8');
  assert.ok(headerText.startsWith(COMPACT_MAGIC), `magic: ${JSON.stringify(headerText.slice(0, 40))}`);
  const header = JSON.parse(headerText.slice(COMPACT_MAGIC.length, headerText.indexOf('\n', COMPACT_MAGIC.length)));
  assert.equal(header.version, 1);
  assert.equal(header.sourceName, copy.source);
  assert.equal(header.sourceCapacityBytes, copy.sourceCapacityBytes);
  assert.equal(header.extentBytes, EXTENT_BYTES);
  assert.equal(header.extentCount, copy.extentCount);
  assert.equal(header.metadataExtents, copy.metadataExtents);
  assert.equal(header.pointInTime, copy.pointInTime);
  const table = copy.correspondence!;
  for (let i = 0; i < table.length; i++) {
    assert.equal(Number(image.readBigUInt64LE(COMPACT_TABLE_OFFSET_BYTES + 8 * i)), table[i]!.sourceExtent, `table entry ${i + 1}`);
  }
  const metadataEnd = copy.metadataExtents * EXTENT_BYTES;
  assert.ok(image.subarray(COMPACT_TABLE_OFFSET_BYTES + 8 * table.length, metadataEnd).every((byte) => byte === 0), 'zeros after the table');
  const pointInTime = await open(pointInTimePath, 'r');
  try {
    const extent = Buffer.alloc(EXTENT_BYTES);
    for (const row of table) {
      await pointInTime.read(extent, 0, EXTENT_BYTES, row.sourceOffsetBytes);
      const x = image.subarray(metadataEnd + (row.x - 1) * EXTENT_BYTES, metadataEnd + row.x * EXTENT_BYTES);
      assertSameBytes(x, extent, `X_${row.x} = A_${row.sourceExtent}`);
    }
  } finally {
    await pointInTime.close();
  }
}
