// Backup / restore benchmark (SPEC §4): a thin volume with a small used fraction, backed up by
// thinarray and, side by side in the same run, copied by `nbdcopy` (to a sparse file) and
// `qemu-img convert -O qcow2` from the same NBD export, against the limit — `cp` of the used bytes
// once, page cache warm, then `sync` of the copy (see LIMIT_STEP). Restore (remap and writeback)
// against the same limit; an incremental after changing a small fraction of the data against the
// full. The same backup and remap restore with a backup region (volume:NAME, a second storage
// region inside the array) as the medium.
//
//   npm run build && node dist/bench/backup.js [options]      (see bench/README.md)
//
// Every measurement is repeated --reps times, interleaved (rep 1: backup, nbdcopy, qemu-img, cp,
// restores, incremental; rep 2 …), and the median is reported, because this 2-core machine is noisy.

import { randomFillSync } from 'node:crypto';
import { mkdir, mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seededRandom } from '../test/helpers/random.js';
import { cleanUpOnInterrupt, machineInfo, median, parsePositive, parseSize, warmPageCache } from './common.js';
import { startDaemon, REPO_ROOT, type Daemon } from '../test/helpers/daemon.js';
import { requireTools, runOk } from '../test/helpers/tools.js';

// ---- configuration ----------------------------------------------------------------------------

interface Config {
  volumeBytes: number;
  dataBytes: number;
  chunkBytes: number;
  changePercent: number;
  /** Incrementals per repetition, each after its own change: one takes ~50 ms, so one sample per repetition is mostly noise. */
  incrementals: number;
  reps: number;
  seed: number;
  stepTimeoutS: number;
  json: boolean;
  outPath: string | undefined;
  noSave: boolean;
  /** Steps left out (--skip): the others' tools are slow, and a tuning run may not need them. */
  skip: Set<string>;
}

const USAGE = `usage: node dist/bench/backup.js [options]
  --volume-size SIZE  capacity of the volume backed up (default 8G; env BENCH_VOLUME_SIZE)
  --data SIZE         random data scattered over it (default 1G; env BENCH_DATA)
  --chunk SIZE        size of each scattered piece, at aligned random offsets (default 64K = one extent)
  --change PERCENT    share of the used data changed before the incremental (default 2)
  --incrementals N    incrementals per repetition, each after its own change (default 3)
  --reps N            interleaved repetitions, median reported (default 5; env BENCH_REPS)
  --seed N            seed of the offsets (default 1)
  --step-timeout SEC  bound of every step (default 600)
  --json              print the result as JSON instead of a table
  --out FILE          result file (default bench/results/backup-<date>.json)
  --no-save           do not write a result file
  --skip STEPS        comma-separated steps to leave out: nbdcopy, qemu-img (ratios to them are then missing)
  --quick             --volume-size 1G --data 128M --reps 1 (smoke run)`;



function parseArgs(argv: string[]): Config {
  const env = process.env;
  const config: Config = {
    volumeBytes: parseSize(env.BENCH_VOLUME_SIZE ?? '8G'),
    dataBytes: parseSize(env.BENCH_DATA ?? '1G'),
    chunkBytes: 64 << 10,
    changePercent: 2,
    incrementals: 3,
    reps: Math.floor(parsePositive('BENCH_REPS', env.BENCH_REPS ?? '5')),
    seed: 1,
    stepTimeoutS: 600,
    json: false,
    outPath: undefined,
    noSave: false,
    skip: new Set(),
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    switch (arg) {
      case '--volume-size': config.volumeBytes = parseSize(value()); break;
      case '--data': config.dataBytes = parseSize(value()); break;
      case '--chunk': config.chunkBytes = parseSize(value()); break;
      case '--change': config.changePercent = parsePositive('--change', value()); break;
      case '--incrementals': config.incrementals = Math.floor(parsePositive('--incrementals', value())); break;
      case '--reps': config.reps = Math.floor(parsePositive('--reps', value())); break;
      case '--seed': config.seed = Math.floor(parsePositive('--seed', value())); break;
      case '--step-timeout': config.stepTimeoutS = parsePositive('--step-timeout', value()); break;
      case '--json': config.json = true; break;
      case '--out': config.outPath = value(); break;
      case '--no-save': config.noSave = true; break;
      case '--skip':
        for (const step of value().split(',')) {
          if (step !== 'nbdcopy' && step !== 'qemu-img') throw new Error(`--skip: '${step}' is not one of nbdcopy, qemu-img`);
          config.skip.add(step);
        }
        break;
      case '--quick':
        config.volumeBytes = 1 << 30; config.dataBytes = 128 << 20; config.reps = 1;
        break;
      case '-h': case '--help':
        console.log(USAGE);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument '${arg}'\n${USAGE}`);
    }
  }
  const MiB = 1 << 20;
  if (config.chunkBytes < 4096 || (config.chunkBytes & (config.chunkBytes - 1)) !== 0) throw new Error('--chunk must be a power of two, at least 4K');
  if (config.dataBytes < MiB || config.dataBytes % config.chunkBytes !== 0) throw new Error('--data must be a multiple of --chunk, at least 1M');
  if (config.volumeBytes % config.chunkBytes !== 0 || config.volumeBytes < 2 * config.dataBytes) throw new Error('--volume-size must be a multiple of --chunk and at least twice --data');
  if (config.changePercent >= 50) throw new Error('--change must be below 50');
  if (config.incrementals < 1) throw new Error('--incrementals must be a whole number, at least 1');
  return config;
}

// ---- helpers ----------------------------------------------------------------------------------

function log(message: string): void {
  process.stderr.write(`[backup-bench] ${message}\n`);
}

const MiB = 1 << 20;



/** `count` distinct integers from [0, n), in random order (partial Fisher–Yates). */
function pickDistinct(n: number, count: number, random: () => number): number[] {
  const slots = new Uint32Array(n);
  for (let i = 0; i < n; i++) slots[i] = i;
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(random() * (n - i));
    const t = slots[i]!; slots[i] = slots[j]!; slots[j] = t;
  }
  return Array.from(slots.subarray(0, count));
}

/**
 * Times `fn`. First, untimed: the page-cache warm-up every step gets (see warmPageCache); a sync,
 * so that no step pays for writing back what was left dirty before it (on ext4 here, the first
 * full backup started with 500 MiB of the bench's own data files still dirty, and the flusher
 * competed with its durable writes; between steps there were under 200 KiB; on tmpfs a no-op);
 * then a request, so the timed one never meets a keep-alive connection the server closed meanwhile.
 */
async function timed(fn: () => Promise<unknown>, warm: () => Promise<void>, api: Api): Promise<number> {
  await warm();
  await runOk('sync', [], { timeoutMs: 600_000 });
  await api.ping();
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

/** Apparent size and allocated bytes (what `du --block-size=1` reports) of a file. */
async function fileSizes(path: string): Promise<{ apparentBytes: number; allocatedBytes: number }> {
  const s = await stat(path);
  return { apparentBytes: s.size, allocatedBytes: s.blocks * 512 };
}


// ---- the daemon's HTTP API --------------------------------------------------------------------

interface JobInfo {
  id: string;
  state: string;
  result?: unknown;
  error?: { code: string; message: string };
}

interface BackupEntry {
  id: string;
  jobId: string | null;
  kind: string;
  parentId: string | null;
  state: string;
  streamBytes: number;
  dataBytes: number;
  extents: number;
  error: string | null;
}

class Api {
  readonly #base: string;
  readonly #token: string;
  readonly #stepTimeoutMs: number;

  constructor(daemon: Daemon, stepTimeoutMs: number) {
    const url = daemon.apiUrl.replace(/\/+$/, '');
    this.#base = url.endsWith('/api/v1') ? url : `${url}/api/v1`;
    this.#token = daemon.token;
    this.#stepTimeoutMs = stepTimeoutMs;
  }

  async call<T>(method: string, path: string, body?: unknown, timeoutMs = 60_000): Promise<T> {
    const response = await fetch(`${this.#base}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.#token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${path} answered ${response.status}: ${text.slice(0, 2000)}`);
    return (text === '' ? undefined : JSON.parse(text)) as T;
  }

  /** An idempotent request, retried once: the server may have closed the idle connection meanwhile. */
  async ping(): Promise<void> {
    await this.call('GET', '/pool').catch(() => this.call('GET', '/pool'));
  }

  /** Waits for a job to end (bounded by the step timeout); throws unless it succeeded. */
  async waitJob(jobId: string): Promise<JobInfo> {
    const deadline = Date.now() + this.#stepTimeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) {
        await this.call('POST', `/jobs/${encodeURIComponent(jobId)}/cancel`).catch(() => undefined);
        throw new Error(`job ${jobId} did not end within ${this.#stepTimeoutMs} ms; cancelled`);
      }
      const waitMs = Math.max(1, Math.min(30_000, left));
      const info = await this.call<JobInfo>('GET', `/jobs/${encodeURIComponent(jobId)}?waitMs=${waitMs}`, undefined, waitMs + 30_000);
      if (info.state === 'succeeded') return info;
      if (info.state !== 'queued' && info.state !== 'running') {
        throw new Error(`job ${jobId} ended ${info.state}: ${info.error ? `${info.error.code}: ${info.error.message}` : '(no error)'}`);
      }
    }
  }

  async backup(volume: string, to: string, incremental: boolean): Promise<BackupEntry> {
    const created = await this.call<BackupEntry>('POST', '/backups', { volume, to, ...(incremental ? { incremental: true } : {}) });
    if (created.jobId !== null) await this.waitJob(created.jobId);
    return this.call<BackupEntry>('GET', `/backups/${encodeURIComponent(created.id)}`);
  }

  async restore(source: string, to: string, method: 'remap' | 'writeback', create: boolean): Promise<void> {
    const { jobId } = await this.call<{ jobId: string }>('POST', '/restores', { source, to, method, create });
    await this.waitJob(jobId);
  }

  createVolume(name: string, sizeBytes: number): Promise<unknown> {
    return this.call('POST', '/volumes', { name, sizeBytes });
  }

  deleteVolume(name: string): Promise<unknown> {
    return this.call('DELETE', `/volumes/${encodeURIComponent(name)}`);
  }

  async allocatedBytes(name: string): Promise<number> {
    return (await this.call<{ allocatedBytes: number }>('GET', `/volumes/${encodeURIComponent(name)}`)).allocatedBytes;
  }
}

// ---- data -------------------------------------------------------------------------------------

const RANDOM_BLOCK = 8 * MiB;

/**
 * Writes `dataBytes` of random data twice: contiguous into `dense` (the limit's source) and in
 * `chunkBytes` pieces at the random slots into the sparse `scattered` file of `volumeBytes`.
 */
async function makeData(config: Config, slots: number[], dense: string, scattered: string): Promise<void> {
  const denseFile = await open(dense, 'w');
  const sparseFile = await open(scattered, 'w');
  try {
    await sparseFile.truncate(config.volumeBytes);
    const block = Buffer.alloc(RANDOM_BLOCK);
    const perBlock = RANDOM_BLOCK / config.chunkBytes;
    let chunk = 0;
    for (let offset = 0; offset < config.dataBytes; offset += RANDOM_BLOCK) {
      const length = Math.min(RANDOM_BLOCK, config.dataBytes - offset);
      randomFillSync(block, 0, length);
      await denseFile.write(block, 0, length, offset);
      for (let k = 0; k < perBlock && chunk < slots.length; k++, chunk++) {
        await sparseFile.write(block, k * config.chunkBytes, config.chunkBytes, slots[chunk]! * config.chunkBytes);
      }
    }
  } finally {
    await denseFile.close();
    await sparseFile.close();
  }
}

/** A sparse file of `volumeBytes` with fresh random data in the given extents (the change set). */
async function makeChange(volumeBytes: number, extentBytes: number, extents: number[], path: string): Promise<void> {
  const file = await open(path, 'w');
  try {
    await file.truncate(volumeBytes);
    const data = Buffer.alloc(extentBytes);
    for (const extent of [...extents].sort((a, b) => a - b)) {
      randomFillSync(data);
      await file.write(data, 0, extentBytes, extent * extentBytes);
    }
  } finally {
    await file.close();
  }
}

// ---- measurement ------------------------------------------------------------------------------

interface Sample {
  rep: number;
  step: string;
  seconds: number;
  apparentBytes?: number;
  allocatedBytes?: number;
}

const STEPS = [
  ['backup', 'thinarray backup (full)'],
  ['nbdcopy', 'nbdcopy to a sparse file'],
  ['qemu-img', 'qemu-img convert -O qcow2'],
  ['limit', 'cp of the used data, no sync (reference)'],
  ['limit+sync', 'limit: cp + sync of the used data'],
  ['direct-write', 'dd oflag=direct + fsync (reference)'],
  ['medium-read', 'dd iflag=direct of the medium (reference)'],
  ['medium-copy', 'dd of the medium to a file, direct + fsync (reference)'],
  ['restore-remap', 'thinarray restore --method remap'],
  ['restore-writeback', 'thinarray restore --method writeback'],
  ['incremental', 'thinarray backup --incremental'],
  ['region-backup', 'thinarray backup --to volume:REGION'],
  ['region-restore-remap', 'thinarray restore --method remap from the region'],
] as const;
type StepName = (typeof STEPS)[number][0];

/**
 * The floors' limit: `cp` of the used data, page cache warm, then `sync FILE` — the copy on stable
 * storage. A backup's job ends with its medium durable and a restore's with the pool synced (the
 * durability contract), so a `cp` that returns with its data still in the page cache is not the
 * same work: on ext4 here it took 0.27–0.49 s for 1 GiB, and any durable write of that GiB
 * 0.67–0.89 s (dd with O_DIRECT and fsync, cp + sync), which no durable copy can undercut. On tmpfs
 * the sync costs nothing and both are the same copy. The ratios to plain `cp` are printed too.
 */
const LIMIT_STEP: StepName = 'limit+sync';

interface StepSummary {
  step: StepName;
  label: string;
  seconds: number;
  apparentBytes: number | null;
  allocatedBytes: number | null;
  secondsAll: number[];
}

interface Floor {
  name: string;
  value: number;
  limit: number;
  pass: boolean;
}

function summarize(samples: Sample[]): StepSummary[] {
  return STEPS.map(([step, label]) => {
    const mine = samples.filter((s) => s.step === step);
    const apparent = mine.map((s) => s.apparentBytes).filter((v): v is number => v !== undefined);
    const allocated = mine.map((s) => s.allocatedBytes).filter((v): v is number => v !== undefined);
    return {
      step,
      label,
      seconds: median(mine.map((s) => s.seconds)),
      apparentBytes: apparent.length === 0 ? null : median(apparent),
      allocatedBytes: allocated.length === 0 ? null : median(allocated),
      secondsAll: mine.map((s) => s.seconds),
    };
  });
}

/**
 * Time ratios are paired: the median over repetitions of step A's time in a repetition divided by
 * step B's in the same repetition. Steps of one repetition run within seconds of each other, so
 * a slow period of this VM (repetitions of one step differ by up to 2× here) divides out.
 */
function pairedRatio(samples: Sample[], a: StepName, b: StepName, scaleB = 1): number {
  const ratios: number[] = [];
  for (const sample of samples.filter((s) => s.step === a)) {
    const other = samples.find((s) => s.step === b && s.rep === sample.rep);
    if (other) ratios.push(sample.seconds / (scaleB * other.seconds));
  }
  return median(ratios);
}

function floors(rows: StepSummary[], samples: Sample[], usedBytes: number, changedFraction: number): { ratios: Record<string, number>; floors: Floor[] } {
  const row = (step: StepName): StepSummary => rows.find((r) => r.step === step)!;
  const full = row('backup');
  const inc = row('incremental');
  const time = (a: StepName, b: StepName, scaleB = 1): number => pairedRatio(samples, a, b, scaleB);
  const ratios: Record<string, number> = {
    'backup/limit': time('backup', LIMIT_STEP),
    'backup/nbdcopy': time('backup', 'nbdcopy'),
    'backup/qemu-img': time('backup', 'qemu-img'),
    'nbdcopy/limit': time('nbdcopy', LIMIT_STEP),
    'qemu-img/limit': time('qemu-img', LIMIT_STEP),
    'medium/used': (full.apparentBytes ?? Number.NaN) / usedBytes,
    'nbdcopy allocated/used': (row('nbdcopy').allocatedBytes ?? Number.NaN) / usedBytes,
    'qcow2/used': (row('qemu-img').apparentBytes ?? Number.NaN) / usedBytes,
    'restore remap/limit': time('restore-remap', LIMIT_STEP),
    'restore writeback/limit': time('restore-writeback', LIMIT_STEP),
    'incremental time/(changed × full)': time('incremental', 'backup', changedFraction),
    'incremental size/(changed × full)': (inc.apparentBytes ?? Number.NaN) / (changedFraction * (full.apparentBytes ?? Number.NaN)),
    'backup/(cp, no sync)': time('backup', 'limit'),
    'restore remap/(cp, no sync)': time('restore-remap', 'limit'),
    'restore writeback/(cp, no sync)': time('restore-writeback', 'limit'),
    'backup/(dd direct write)': time('backup', 'direct-write'),
    'restore remap/(dd direct read of the medium)': time('restore-remap', 'medium-read'),
    'restore remap/(dd copy of the medium)': time('restore-remap', 'medium-copy'),
    'region backup/limit': time('region-backup', LIMIT_STEP),
    'region restore remap/limit': time('region-restore-remap', LIMIT_STEP),
    'region backup/file backup': time('region-backup', 'backup'),
  };
  const floor = (name: string, value: number, max: number): Floor => ({ name, value, limit: max, pass: Number.isFinite(value) && value <= max });
  return {
    ratios,
    floors: [
      floor('backup time / limit (cp + sync)', ratios['backup/limit']!, 1.3),
      floor('medium / used data', ratios['medium/used']!, 1.01),
      floor('restore remap / limit (cp + sync)', ratios['restore remap/limit']!, 1.5),
      floor('restore writeback / limit (cp + sync)', ratios['restore writeback/limit']!, 1.5),
      floor('incremental time / (changed fraction × full)', ratios['incremental time/(changed × full)']!, 3),
      floor('incremental size / (changed fraction × full)', ratios['incremental size/(changed × full)']!, 3),
    ],
  };
}

/** What the work directory is on: on tmpfs a sync costs nothing, on a disk it is the device's write time. */
async function filesystemOf(dir: string): Promise<string> {
  const result = await runOk('df', ['--output=fstype', dir], { timeoutMs: 10_000 }).catch(() => undefined);
  return result?.stdout.trim().split('\n').pop()?.trim() || 'unknown';
}

function formatTable(rows: StepSummary[], ratios: Record<string, number>, floorList: Floor[]): string {
  const fmtBytes = (n: number | null): string => (n === null ? '-' : `${n}`);
  const fmtMiB = (n: number | null): string => (n === null ? '-' : (n / MiB).toFixed(1));
  const header = ['step', 'time s (median)', 'all reps s', 'size bytes', 'size MiB', 'allocated bytes', 'allocated MiB'];
  const lines = rows.map((r) => [
    r.label, r.seconds.toFixed(3), r.secondsAll.map((s) => s.toFixed(2)).join(' '),
    fmtBytes(r.apparentBytes), fmtMiB(r.apparentBytes), fmtBytes(r.allocatedBytes), fmtMiB(r.allocatedBytes),
  ]);
  const render = (cells: string[][], head: string[]): string[] => {
    const widths = head.map((h, i) => Math.max(h.length, ...cells.map((l) => l[i]!.length)));
    const line = (c: string[]): string => c.map((x, i) => (i === 0 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join('  ');
    return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line)];
  };
  const out = render(lines, header);
  out.push('');
  out.push(...render(Object.entries(ratios).map(([k, v]) => [k, v.toFixed(3)]), ['ratio', 'value']));
  out.push('');
  out.push(...render(floorList.map((f) => [f.name, f.value.toFixed(3), `≤ ${f.limit}`, f.pass ? 'PASS' : 'FAIL']), ['floor', 'value', 'limit', 'result']));
  return out.join('\n');
}

// ---- main -------------------------------------------------------------------------------------

const VOLUME = 'bench';
/** The volume that serves as a backup region (medium volume:REGION). */
const REGION = 'bench-region';

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

async function main(): Promise<void> {
  const config = parseArgs(process.argv.slice(2));
  // nbdcopy also fills the volume; qemu-img only for its own step.
  await requireTools(['nbdcopy', 'nbdinfo', ...(config.skip.has('qemu-img') ? [] : ['qemu-img'])]);
  const stepTimeoutMs = config.stepTimeoutS * 1000;

  const workDir = await mkdtemp(join(tmpdir(), 'thinarray-bench-backup-'));
  const filesystem = await filesystemOf(workDir);
  const mediaDir = join(workDir, 'media');
  await mkdir(mediaDir);
  let daemon: Daemon | undefined;
  let cleaned = false;
  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    await daemon?.cleanup().catch(() => undefined);
    await rm(workDir, { recursive: true, force: true });
  };
  cleanUpOnInterrupt(cleanup);

  const samples: Sample[] = [];
  const started = new Date();
  let usedBytes = 0;
  let extentBytes = 0;
  let changedBytes = 0;
  try {
    const dense = join(workDir, 'data.raw');
    const scattered = join(workDir, 'scattered.raw');
    const random = seededRandom(config.seed);
    const chunkCount = config.dataBytes / config.chunkBytes;
    const slots = pickDistinct(config.volumeBytes / config.chunkBytes, chunkCount, random);
    log(`writing ${config.dataBytes / MiB} MiB of random data in ${chunkCount} pieces of ${config.chunkBytes >> 10} KiB scattered over ${config.volumeBytes / MiB} MiB`);
    await makeData(config, slots, dense, scattered);

    // A sparse pool big enough for the volume's data, a remap restore, a writeback restore, the region and the views.
    const poolBytes = Math.max(config.volumeBytes + 5 * config.dataBytes, 12 * 2 ** 30);
    daemon = await startDaemon({ extraArgs: ['--media-root', mediaDir, '--pool-size', `${Math.ceil(poolBytes / MiB)}M`] });
    const api = new Api(daemon, stepTimeoutMs);
    extentBytes = (await api.call<{ extentBytes: number }>('GET', '/pool')).extentBytes;
    if (config.chunkBytes % extentBytes !== 0) throw new Error(`--chunk ${config.chunkBytes} is not a multiple of the pool's ${extentBytes}-byte extents`);
    await api.createVolume(VOLUME, config.volumeBytes);
    const uri = daemon.nbdUri(VOLUME);
    log('filling the volume with nbdcopy --destination-is-zero (holes skipped)');
    await runOk('nbdcopy', ['--destination-is-zero', '--flush', scattered, uri], { timeoutMs: stepTimeoutMs });
    await rm(scattered);
    usedBytes = await api.allocatedBytes(VOLUME);
    if (usedBytes !== config.dataBytes) throw new Error(`the volume has ${usedBytes} bytes allocated after the fill, expected ${config.dataBytes}`);
    // The region: the stream (the used data, a frame header per extent, the header) after its 1 MiB
    // label area, with room to spare; thin, so only what a backup writes takes pool space.
    await api.createVolume(REGION, roundUp(1.05 * config.dataBytes + 8 * MiB, extentBytes));

    // The change set: whole extents inside the mapped pieces.
    const extentsPerChunk = config.chunkBytes / extentBytes;
    const mappedExtents = slots.flatMap((slot) => Array.from({ length: extentsPerChunk }, (_, k) => slot * extentsPerChunk + k));
    const changeCount = Math.max(1, Math.round((config.changePercent / 100) * usedBytes / extentBytes));
    changedBytes = changeCount * extentBytes;

    // The warm-up is twice the new page-cache pages a step makes (medium, copy, restored extents),
    // at least 64 MiB: about the used data for most steps, the changed data for an incremental.
    // Not more: a 2 GiB warm-up right before an incremental of 20 MiB slowed it (median 26.7 ms,
    // against 22.5 ms after 64 MiB; 15 each, interleaved): freeing that much reaches into the next
    // tens of milliseconds.
    const stepTimed = (fn: () => Promise<unknown>, newBytes = config.dataBytes): Promise<number> =>
      timed(fn, () => warmPageCache(workDir, Math.max(2 * newBytes, 64 * MiB)), api);
    // The first restore from a file medium on a disk also reads the medium into the page cache:
    // twice the data in new pages. With the warm-up of the used data alone, 2 of 8 remap restores
    // on ext4 (the medium dropped from the cache before each) took 1.40-1.46 s, the others
    // 0.87-0.90 s after the first; the slow ones with 2.5 times the CPU time, and steal time only
    // then (the VM getting back memory it had lent). With this one: 0.85-0.98 s after the first.
    // On tmpfs the medium already is memory.
    const firstRestoreNewBytes = filesystem === 'tmpfs' ? config.dataBytes : 2 * config.dataBytes;
    const total = config.reps * (STEPS.length - config.skip.size + config.incrementals - 1);
    let done = 0;
    const record = (sample: Sample): void => {
      samples.push(sample);
      done += 1;
      const size = sample.apparentBytes === undefined ? '' : `, ${(sample.apparentBytes / MiB).toFixed(1)} MiB${sample.allocatedBytes === undefined ? '' : ` (${(sample.allocatedBytes / MiB).toFixed(1)} MiB allocated)`}`;
      log(`[${done}/${total}] rep ${sample.rep} ${sample.step}: ${sample.seconds.toFixed(3)} s${size}`);
    };

    for (let rep = 1; rep <= config.reps; rep++) {
      // 1. thinarray full backup: from the request to the job's end.
      const fullPath = join(mediaDir, `full-${rep}.tbk`);
      let full: BackupEntry | undefined;
      const backupS = await stepTimed(async () => { full = await api.backup(VOLUME, `file:${fullPath}`, false); });
      if (full!.state !== 'complete') throw new Error(`backup ${full!.id} is ${full!.state}: ${full!.error ?? ''}`);
      record({ rep, step: 'backup', seconds: backupS, ...(await fileSizes(fullPath)) });

      // 2. nbdcopy to a sparse file.
      if (!config.skip.has('nbdcopy')) {
        const sparseOut = join(workDir, 'sparse.raw');
        const nbdcopyS = await stepTimed(() => runOk('nbdcopy', [uri, sparseOut], { timeoutMs: stepTimeoutMs }));
        record({ rep, step: 'nbdcopy', seconds: nbdcopyS, ...(await fileSizes(sparseOut)) });
        await rm(sparseOut);
      }

      // 3. qemu-img convert to qcow2.
      if (!config.skip.has('qemu-img')) {
        const qcow2 = join(workDir, 'out.qcow2');
        const qemuS = await stepTimed(() => runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', uri, qcow2], { timeoutMs: stepTimeoutMs }));
        record({ rep, step: 'qemu-img', seconds: qemuS, ...(await fileSizes(qcow2)) });
        await rm(qcow2);
      }

      // 4. cp of the used data, page cache warm; then the limit: the same with the copy synced.
      const limitOut = join(mediaDir, 'limit.raw');
      await runOk('dd', [`if=${dense}`, 'of=/dev/null', 'bs=8M', 'status=none'], { timeoutMs: stepTimeoutMs });
      const cpS = await stepTimed(() => runOk('cp', ['--sparse=never', dense, limitOut], { timeoutMs: stepTimeoutMs }));
      record({ rep, step: 'limit', seconds: cpS, ...(await fileSizes(limitOut)) });
      await rm(limitOut);
      const cpSyncS = await stepTimed(async () => {
        await runOk('cp', ['--sparse=never', dense, limitOut], { timeoutMs: stepTimeoutMs });
        await runOk('sync', [limitOut], { timeoutMs: stepTimeoutMs });
      });
      record({ rep, step: 'limit+sync', seconds: cpSyncS, ...(await fileSizes(limitOut)) });
      await rm(limitOut);

      // 4b. References for what the device itself allows: the used data written as thinarray writes
      // a medium (O_DIRECT, then made durable); the medium read as a restore reads it from media
      // written that way (not from the page cache); and the medium copied into a file the same
      // way, which is a remap restore's I/O: the medium read from the device, as much data
      // written and made durable, on one device.
      const directS = await stepTimed(() => runOk('dd', [`if=${dense}`, `of=${limitOut}`, 'bs=4M', 'oflag=direct', 'conv=fsync', 'status=none'], { timeoutMs: stepTimeoutMs }));
      record({ rep, step: 'direct-write', seconds: directS, ...(await fileSizes(limitOut)) });
      await rm(limitOut);
      const mediumReadS = await stepTimed(() => runOk('dd', [`if=${fullPath}`, 'of=/dev/null', 'bs=4M', 'iflag=direct', 'status=none'], { timeoutMs: stepTimeoutMs }));
      record({ rep, step: 'medium-read', seconds: mediumReadS });
      const mediumCopyS = await stepTimed(() => runOk('dd', [`if=${fullPath}`, `of=${limitOut}`, 'bs=4M', 'iflag=direct', 'oflag=direct', 'conv=fsync', 'status=none'], { timeoutMs: stepTimeoutMs }));
      record({ rep, step: 'medium-copy', seconds: mediumCopyS, ...(await fileSizes(limitOut)) });
      await rm(limitOut);

      // 5. Restores of the full backup: remap into a new volume, writeback into an existing empty one.
      const remapS = await stepTimed(() => api.restore(full!.id, 'restored', 'remap', true), firstRestoreNewBytes);
      const remapAllocated = await api.allocatedBytes('restored');
      if (remapAllocated !== usedBytes) throw new Error(`the remap restore allocated ${remapAllocated} bytes, expected ${usedBytes}`);
      record({ rep, step: 'restore-remap', seconds: remapS, allocatedBytes: remapAllocated });
      await api.deleteVolume('restored');
      await api.createVolume('target', config.volumeBytes);
      const writebackS = await stepTimed(() => api.restore(full!.id, 'target', 'writeback', false)); // the medium is cached by now
      const writebackAllocated = await api.allocatedBytes('target');
      if (writebackAllocated !== usedBytes) throw new Error(`the writeback restore allocated ${writebackAllocated} bytes, expected ${usedBytes}`);
      record({ rep, step: 'restore-writeback', seconds: writebackS, allocatedBytes: writebackAllocated });
      await api.deleteVolume('target');

      // 6. Change a few scattered extents (untimed), then an incremental backup; again, each
      // incremental on the one before (a chain, as nightly incrementals make).
      const backupIds = [full!.id];
      for (let n = 0; n < config.incrementals; n++) {
        const changeFile = join(workDir, 'change.raw');
        const changed = pickDistinct(mappedExtents.length, changeCount, random).map((i) => mappedExtents[i]!);
        await makeChange(config.volumeBytes, extentBytes, changed, changeFile);
        await runOk('nbdcopy', ['--destination-is-zero', '--flush', changeFile, uri], { timeoutMs: stepTimeoutMs });
        await rm(changeFile);
        const afterChange = await api.allocatedBytes(VOLUME);
        if (afterChange !== usedBytes) throw new Error(`the volume has ${afterChange} bytes allocated after the change, expected ${usedBytes}`);
        const incPath = join(mediaDir, `inc-${rep}-${n}.tbk`);
        let inc: BackupEntry | undefined;
        const incS = await stepTimed(async () => { inc = await api.backup(VOLUME, `file:${incPath}`, true); }, changedBytes);
        if (inc!.state !== 'complete' || inc!.kind !== 'incremental' || inc!.parentId !== backupIds.at(-1)) {
          throw new Error(`backup ${inc!.id} is ${inc!.state} ${inc!.kind} on ${inc!.parentId ?? 'nothing'}: ${inc!.error ?? ''}`);
        }
        record({ rep, step: 'incremental', seconds: incS, ...(await fileSizes(incPath)) });
        if (inc!.extents !== changeCount) log(`note: the incremental holds ${inc!.extents} extents, ${changeCount} were changed`);
        backupIds.push(inc!.id);
      }

      // 7. The same full backup into the backup region, and a remap restore from it; the region is
      // emptied again (backup deleted with its medium) for the next repetition. After the
      // incrementals: a region backup becomes the volume's newest, the base of the next incremental.
      let regionEntry: BackupEntry | undefined;
      const regionS = await stepTimed(async () => { regionEntry = await api.backup(VOLUME, `volume:${REGION}`, false); });
      if (regionEntry!.state !== 'complete') throw new Error(`backup ${regionEntry!.id} to the region is ${regionEntry!.state}: ${regionEntry!.error ?? ''}`);
      record({ rep, step: 'region-backup', seconds: regionS, apparentBytes: regionEntry!.streamBytes });
      const regionRemapS = await stepTimed(() => api.restore(regionEntry!.id, 'restored', 'remap', true));
      const regionRemapAllocated = await api.allocatedBytes('restored');
      if (regionRemapAllocated !== usedBytes) throw new Error(`the remap restore from the region allocated ${regionRemapAllocated} bytes, expected ${usedBytes}`);
      record({ rep, step: 'region-restore-remap', seconds: regionRemapS, allocatedBytes: regionRemapAllocated });
      await api.deleteVolume('restored');
      await api.call('DELETE', `/backups/${regionEntry!.id}?purgeMedia=true`);

      for (const id of backupIds.reverse()) await api.call('DELETE', `/backups/${id}?purgeMedia=true`);
    }
  } finally {
    await cleanup();
  }

  const rows = summarize(samples);
  const changedFraction = changedBytes / usedBytes;
  const { ratios, floors: floorList } = floors(rows, samples, usedBytes, changedFraction);
  const result = {
    benchmark: 'backup',
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: await machineInfo({ nbdcopy: ['nbdcopy', ['--version']], qemuImg: ['qemu-img', ['--version']], cp: ['cp', ['--version']] }),
    filesystem,
    limit: 'cp --sparse=never of the used data (page cache warm), then sync of the copy',
    commit: await runOk('git', ['-C', REPO_ROOT, 'rev-parse', 'HEAD'], { timeoutMs: 10_000 }).then((r) => r.stdout.trim(), () => 'unknown'),
    config: {
      volumeBytes: config.volumeBytes,
      dataBytes: config.dataBytes,
      chunkBytes: config.chunkBytes,
      extentBytes,
      changePercent: config.changePercent,
      reps: config.reps,
      seed: config.seed,
      skipped: [...config.skip],
    },
    usedBytes,
    changedBytes,
    changedFraction,
    summary: rows,
    ratios,
    floors: floorList,
    samples,
  };
  if (!config.noSave) {
    const outPath = config.outPath ?? join(REPO_ROOT, 'bench', 'results', `backup-${started.toISOString().replace(/[:]/g, '-').replace(/\..*$/, '')}.json`);
    await mkdir(join(outPath, '..'), { recursive: true });
    await writeFile(outPath, `${JSON.stringify(result, null, 2)}\n`);
    log(`results written to ${outPath}`);
  }
  if (config.json) {
    console.log(JSON.stringify(result, null, 2));
  } else {
    console.log(`backup: ${config.volumeBytes / MiB} MiB volume, ${usedBytes / MiB} MiB used in ${config.dataBytes / config.chunkBytes} pieces of ${config.chunkBytes >> 10} KiB, `
      + `${(changedFraction * 100).toFixed(2)}% changed for the incremental, median of ${config.reps}, ${result.machine.cpus} CPUs, on ${filesystem} (${workDir})`);
    console.log(formatTable(rows, ratios, floorList));
  }
  if (floorList.some((f) => !f.pass)) process.exitCode = 2;
}

main().catch((error: unknown) => {
  process.stderr.write(`[backup-bench] FAILED: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
