// NBD data path benchmark: thinarray vs `nbdkit file` vs `qemu-nbd`, serving the same data,
// measured side by side in one run with `fio --ioengine=nbd` (SPEC §4), reported as ratios.
//
//   npm run build && node dist/bench/nbd-fio.js [options]      (see bench/README.md)
//
// Every server runs on loopback on a random free port; runs are interleaved
// (rep 1: workload A on thinarray, nbdkit, qemu-nbd; workload B on …; rep 2 …) and the
// median of the repetitions is reported, because this 2-core machine is noisy.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanUpOnInterrupt, machineInfo, median, parsePositive, parseSize } from './common.js';
import { startDaemon, REPO_ROOT, type Daemon } from '../test/helpers/daemon.js';
import { requireTools, run, runOk } from '../test/helpers/tools.js';

// ---- configuration ----------------------------------------------------------------------------

const SERVERS_ALL = ['thinarray', 'nbdkit', 'qemu-nbd'] as const;
type ServerName = (typeof SERVERS_ALL)[number];

interface Workload {
  name: string;
  label: string;
  rw: 'randread' | 'randwrite' | 'read' | 'write';
  bsBytes: number;
  iodepth: number;
}

const SEQ_IODEPTH = 8;
const WORKLOADS_ALL: Workload[] = [
  { name: 'randread', label: '4K rand read QD32', rw: 'randread', bsBytes: 4096, iodepth: 32 },
  { name: 'randwrite', label: '4K rand write QD32', rw: 'randwrite', bsBytes: 4096, iodepth: 32 },
  { name: 'seqread', label: `1M seq read QD${SEQ_IODEPTH}`, rw: 'read', bsBytes: 1 << 20, iodepth: SEQ_IODEPTH },
  { name: 'seqwrite', label: `1M seq write QD${SEQ_IODEPTH}`, rw: 'write', bsBytes: 1 << 20, iodepth: SEQ_IODEPTH },
];

interface Config {
  servers: ServerName[];
  workloads: Workload[];
  sizeBytes: number;
  runtimeS: number;
  rampS: number;
  reps: number;
  json: boolean;
  outPath: string | undefined;
  noSave: boolean;
}

const USAGE = `usage: node dist/bench/nbd-fio.js [options]
  --servers LIST     comma list of ${SERVERS_ALL.join(',')} (default all; env BENCH_SERVERS)
  --workloads LIST   comma list of ${WORKLOADS_ALL.map((w) => w.name).join(',')} (default all; env BENCH_WORKLOADS)
  --size SIZE        export size = working set, e.g. 1G, 256M (default 1G; env BENCH_SIZE)
  --runtime SEC      measured seconds per fio run (default 10; env BENCH_RUNTIME)
  --ramp SEC         fio ramp_time before measuring (default 2; env BENCH_RAMP)
  --reps N           interleaved repetitions, median reported (default 3; env BENCH_REPS)
  --json             print the result as JSON instead of a table
  --out FILE         result file (default bench/results/nbd-fio-<date>.json)
  --no-save          do not write a result file
  --quick            --size 256M --runtime 3 --ramp 1 --reps 1 (smoke run)`;



function parseArgs(argv: string[]): Config {
  const env = process.env;
  const config: Config = {
    servers: [...SERVERS_ALL],
    workloads: [...WORKLOADS_ALL],
    sizeBytes: parseSize(env.BENCH_SIZE ?? '1G'),
    runtimeS: parsePositive('BENCH_RUNTIME', env.BENCH_RUNTIME ?? '10'),
    rampS: Number(env.BENCH_RAMP ?? '2'),
    reps: Math.floor(parsePositive('BENCH_REPS', env.BENCH_REPS ?? '3')),
    json: false,
    outPath: undefined,
    noSave: false,
  };
  const setServers = (list: string): void => {
    const names = list.split(',').map((s) => s.trim()).filter((s) => s !== '');
    for (const n of names) if (!(SERVERS_ALL as readonly string[]).includes(n)) throw new Error(`unknown server '${n}'`);
    if (names.length === 0) throw new Error('no servers selected');
    config.servers = SERVERS_ALL.filter((s) => names.includes(s));
  };
  const setWorkloads = (list: string): void => {
    const names = list.split(',').map((s) => s.trim()).filter((s) => s !== '');
    for (const n of names) if (!WORKLOADS_ALL.some((w) => w.name === n)) throw new Error(`unknown workload '${n}'`);
    if (names.length === 0) throw new Error('no workloads selected');
    config.workloads = WORKLOADS_ALL.filter((w) => names.includes(w.name));
  };
  if (env.BENCH_SERVERS !== undefined && env.BENCH_SERVERS !== '') setServers(env.BENCH_SERVERS);
  if (env.BENCH_WORKLOADS !== undefined && env.BENCH_WORKLOADS !== '') setWorkloads(env.BENCH_WORKLOADS);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    switch (arg) {
      case '--servers': setServers(value()); break;
      case '--no-thinarray': config.servers = config.servers.filter((s) => s !== 'thinarray'); break;
      case '--workloads': setWorkloads(value()); break;
      case '--size': config.sizeBytes = parseSize(value()); break;
      case '--runtime': config.runtimeS = parsePositive('--runtime', value()); break;
      case '--ramp': config.rampS = Number(value()); break;
      case '--reps': config.reps = Math.floor(parsePositive('--reps', value())); break;
      case '--json': config.json = true; break;
      case '--out': config.outPath = value(); break;
      case '--no-save': config.noSave = true; break;
      case '--quick':
        config.sizeBytes = 256 << 20; config.runtimeS = 3; config.rampS = 1; config.reps = 1;
        break;
      case '-h': case '--help':
        console.log(USAGE);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument '${arg}'\n${USAGE}`);
    }
  }
  if (!Number.isFinite(config.rampS) || config.rampS < 0) throw new Error('--ramp must be >= 0');
  if (config.sizeBytes < 16 << 20 || config.sizeBytes % (1 << 20) !== 0) throw new Error('--size must be a multiple of 1M, at least 16M');
  return config;
}

// ---- servers ----------------------------------------------------------------------------------

interface RunningServer {
  name: ServerName;
  uri: string;
  stop(): Promise<void>;
}

const EXPORT_NAME = 'bench';
const SERVER_READY_TIMEOUT_MS = 30_000;
const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

function log(message: string): void {
  process.stderr.write(`[nbd-fio] ${message}\n`);
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Spawns a server process and waits until `nbdinfo --size URI` answers with the right size. */
async function spawnServer(name: ServerName, cmd: string, args: string[], uri: string, sizeBytes: number): Promise<RunningServer> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-8000);
  });
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => child.once('exit', () => {
    exited = true;
    children.delete(child);
    resolve();
  }));
  child.once('error', (error) => {
    stderr += `\nspawn error: ${error.message}`;
  });
  const deadline = Date.now() + SERVER_READY_TIMEOUT_MS;
  for (;;) {
    if (exited) throw new Error(`${name} exited at start: ${cmd} ${args.join(' ')}\n${stderr}`);
    const probe = await run('nbdinfo', ['--size', uri], { timeoutMs: 5_000 });
    if (probe.code === 0) {
      const size = Number(probe.stdout.trim());
      if (size !== sizeBytes) throw new Error(`${name} export size ${size}, expected ${sizeBytes}`);
      break;
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${name} not ready within ${SERVER_READY_TIMEOUT_MS} ms: ${probe.stderr.trim()}\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    name,
    uri,
    async stop() {
      if (exited) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exitPromise;
      clearTimeout(timer);
    },
  };
}

async function startNbdkit(file: string, sizeBytes: number): Promise<RunningServer> {
  const port = await freePort();
  return spawnServer('nbdkit', 'nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'file', `file=${file}`],
    `nbd://127.0.0.1:${port}/${EXPORT_NAME}`, sizeBytes);
}

async function startQemuNbd(file: string, sizeBytes: number): Promise<RunningServer> {
  const port = await freePort();
  return spawnServer('qemu-nbd', 'qemu-nbd',
    ['-f', 'raw', '-t', '--persistent', '--shared=8', '-x', EXPORT_NAME, '-b', '127.0.0.1', '-p', String(port), file],
    `nbd://127.0.0.1:${port}/${EXPORT_NAME}`, sizeBytes);
}

async function startThinarray(sourceFile: string, sizeBytes: number): Promise<{ server: RunningServer; daemon: Daemon }> {
  const daemon = await startDaemon();
  try {
    await daemon.cliJson(['volume', 'create', EXPORT_NAME, '--size', `${sizeBytes / (1 << 20)}M`]);
    const uri = daemon.nbdUri(EXPORT_NAME);
    const info = await runOk('nbdinfo', ['--size', uri], { timeoutMs: 10_000 });
    if (Number(info.stdout.trim()) !== sizeBytes) throw new Error(`thinarray export size ${info.stdout.trim()}, expected ${sizeBytes}`);
    log('filling the thinarray volume with nbdcopy');
    await runOk('nbdcopy', ['--flush', sourceFile, uri], { timeoutMs: 600_000 });
    return {
      daemon,
      server: { name: 'thinarray', uri, stop: () => daemon.cleanup() },
    };
  } catch (error) {
    await daemon.cleanup().catch(() => undefined);
    throw error;
  }
}

// ---- measurement ------------------------------------------------------------------------------

interface Sample {
  rep: number;
  workload: string;
  server: ServerName;
  iops: number;
  bwBytesPerS: number;
  latP99Us: number;
}

async function runFio(workload: Workload, uri: string, config: Config, outFile: string): Promise<Omit<Sample, 'rep' | 'server'>> {
  const args = [
    `--name=${workload.name}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${workload.rw}`,
    `--bs=${workload.bsBytes}`,
    `--iodepth=${workload.iodepth}`,
    `--size=${config.sizeBytes}`,
    '--numjobs=1',
    '--time_based=1',
    `--runtime=${config.runtimeS}`,
    `--ramp_time=${config.rampS}`,
    '--randrepeat=0',
    '--norandommap=1',
    '--output-format=json',
    `--output=${outFile}`,
  ];
  const timeoutMs = (config.runtimeS + config.rampS + 60) * 1000;
  await runOk('fio', args, { timeoutMs, cwd: join(outFile, '..') });
  const report = JSON.parse(await readFile(outFile, 'utf8')) as {
    jobs: Array<{ error: number; read: FioDir; write: FioDir }>;
  };
  const job = report.jobs[0];
  if (job === undefined || job.error !== 0) throw new Error(`fio job failed: ${JSON.stringify(job?.error)}`);
  const dir = workload.rw === 'randread' || workload.rw === 'read' ? job.read : job.write;
  return {
    workload: workload.name,
    iops: dir.iops,
    bwBytesPerS: dir.bw_bytes,
    latP99Us: (dir.clat_ns?.percentile?.['99.000000'] ?? NaN) / 1000,
  };
}

interface FioDir {
  iops: number;
  bw_bytes: number;
  clat_ns?: { percentile?: Record<string, number> };
}


/** Writes sizeBytes of random data (the same bytes for every server). */
async function makeRandomFile(path: string, sizeBytes: number): Promise<void> {
  const chunk = Buffer.allocUnsafe(8 << 20);
  const handle = await open(path, 'w');
  try {
    for (let offset = 0; offset < sizeBytes; offset += chunk.length) {
      randomFillSync(chunk);
      const length = Math.min(chunk.length, sizeBytes - offset);
      await handle.write(chunk, 0, length, offset);
    }
  } finally {
    await handle.close();
  }
}


// ---- report -----------------------------------------------------------------------------------

interface SummaryRow {
  workload: string;
  label: string;
  servers: Partial<Record<ServerName, { iops: number; mibPerS: number; latP99Us: number }>>;
  ratioVsNbdkit: number | null;
  ratioVsQemuNbd: number | null;
}

function summarize(config: Config, samples: Sample[]): SummaryRow[] {
  return config.workloads.map((workload) => {
    const row: SummaryRow = { workload: workload.name, label: workload.label, servers: {}, ratioVsNbdkit: null, ratioVsQemuNbd: null };
    for (const server of config.servers) {
      const mine = samples.filter((s) => s.workload === workload.name && s.server === server);
      if (mine.length === 0) continue;
      row.servers[server] = {
        iops: median(mine.map((s) => s.iops)),
        mibPerS: median(mine.map((s) => s.bwBytesPerS)) / (1 << 20),
        latP99Us: median(mine.map((s) => s.latP99Us)),
      };
    }
    const ta = row.servers.thinarray?.iops;
    if (ta !== undefined) {
      const nk = row.servers.nbdkit?.iops;
      const qn = row.servers['qemu-nbd']?.iops;
      if (nk !== undefined && nk > 0) row.ratioVsNbdkit = ta / nk;
      if (qn !== undefined && qn > 0) row.ratioVsQemuNbd = ta / qn;
    }
    return row;
  });
}

function formatTable(config: Config, rows: SummaryRow[]): string {
  const fmt = (n: number | undefined, digits = 0): string => (n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(digits));
  const header = ['workload', ...config.servers.flatMap((s) => [`${s} IOPS`, `${s} MiB/s`, `${s} p99 µs`])];
  const hasTa = config.servers.includes('thinarray');
  if (hasTa && config.servers.includes('nbdkit')) header.push('thinarray/nbdkit');
  if (hasTa && config.servers.includes('qemu-nbd')) header.push('thinarray/qemu-nbd');
  const lines = rows.map((row) => {
    const cells = [row.label];
    for (const s of config.servers) {
      const r = row.servers[s];
      cells.push(fmt(r?.iops), fmt(r?.mibPerS, 1), fmt(r?.latP99Us));
    }
    if (hasTa && config.servers.includes('nbdkit')) cells.push(row.ratioVsNbdkit === null ? '-' : row.ratioVsNbdkit.toFixed(2));
    if (hasTa && config.servers.includes('qemu-nbd')) cells.push(row.ratioVsQemuNbd === null ? '-' : row.ratioVsQemuNbd.toFixed(2));
    return cells;
  });
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const render = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [render(header), widths.map((w) => '-'.repeat(w)).join('  '), ...lines.map(render)].join('\n');
}

// ---- main -------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const config = parseArgs(process.argv.slice(2));
  const tools = ['fio:nbd', 'nbdinfo'];
  if (config.servers.includes('nbdkit')) tools.push('nbdkit');
  if (config.servers.includes('qemu-nbd')) tools.push('qemu-nbd');
  if (config.servers.includes('thinarray')) tools.push('nbdcopy');
  await requireTools(tools);

  const workDir = await mkdtemp(join(tmpdir(), 'thinarray-bench-'));
  const running: RunningServer[] = [];
  const stopAll = async (): Promise<void> => {
    for (const s of running.splice(0)) await s.stop().catch(() => undefined);
    await rm(workDir, { recursive: true, force: true });
  };
  cleanUpOnInterrupt(stopAll);

  const samples: Sample[] = [];
  const started = new Date();
  try {
    const source = join(workDir, 'source.raw');
    log(`writing ${config.sizeBytes >> 20} MiB of random data`);
    await makeRandomFile(source, config.sizeBytes);
    const servers = new Map<ServerName, RunningServer>();
    for (const name of config.servers) {
      log(`starting ${name}`);
      let server: RunningServer;
      if (name === 'thinarray') {
        server = (await startThinarray(source, config.sizeBytes)).server;
      } else {
        const file = join(workDir, `${name}.raw`);
        await copyFile(source, file);
        server = name === 'nbdkit' ? await startNbdkit(file, config.sizeBytes) : await startQemuNbd(file, config.sizeBytes);
      }
      running.push(server);
      servers.set(name, server);
    }
    const fioOut = join(workDir, 'fio.json');
    const total = config.reps * config.workloads.length * config.servers.length;
    let done = 0;
    for (let rep = 1; rep <= config.reps; rep++) {
      for (const workload of config.workloads) {
        for (const name of config.servers) {
          const server = servers.get(name)!;
          const result = await runFio(workload, server.uri, config, fioOut);
          samples.push({ rep, server: name, ...result });
          done += 1;
          log(`[${done}/${total}] rep ${rep} ${workload.label} ${name}: ${result.iops.toFixed(0)} IOPS, ${(result.bwBytesPerS / (1 << 20)).toFixed(1)} MiB/s`);
        }
      }
    }
  } finally {
    await stopAll();
  }

  const rows = summarize(config, samples);
  const result = {
    benchmark: 'nbd-fio',
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: await machineInfo({ fio: ['fio', ['--version']], nbdkit: ['nbdkit', ['--version']], qemuNbd: ['qemu-nbd', ['--version']] }),
    config: {
      servers: config.servers,
      workloads: config.workloads,
      sizeBytes: config.sizeBytes,
      runtimeS: config.runtimeS,
      rampS: config.rampS,
      reps: config.reps,
    },
    summary: rows,
    samples,
  };
  if (!config.noSave) {
    const outPath = config.outPath ?? join(REPO_ROOT, 'bench', 'results', `nbd-fio-${started.toISOString().replace(/[:]/g, '-').replace(/\..*$/, '')}.json`);
    await mkdir(join(outPath, '..'), { recursive: true });
    await writeFile(outPath, `${JSON.stringify(result, null, 2)}\n`);
    log(`results written to ${outPath}`);
  }
  if (config.json) {
    console.log(JSON.stringify(result, null, 2));
  } else {
    console.log(`nbd-fio: ${config.sizeBytes >> 20} MiB working set, ${config.runtimeS} s per run (+${config.rampS} s ramp), median of ${config.reps}, ${result.machine.cpus} CPUs`);
    console.log(formatTable(config, rows));
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`[nbd-fio] FAILED: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
