/**
 * Copy-create stall: how long source writes wait while `copy create` sets up a copy, on a volume
 * with many mapped extents, under a running fio random-write load (SPEC §4; issue "copies").
 *
 * For each volume size (mapped extents) and mode, fio writes 4 KiB blocks at random over the
 * whole source at QD8 and logs every I/O's latency; after a warm-up, `copy create --no-wait` runs.
 * Reported: the command's own time, and the p99 and max latency of the writes that completed
 * while it ran, next to the same figures for an equal window without a copy (the baseline noise)
 * and for a window with only a FLUSH (the group commit every copy create starts with).
 *
 *   node dist/bench/copy-stall.js [--extents 1048576,65536] [--modes instant,compact] [--json]
 *
 * Uses 4 KiB extents so one million mapped extents are 4 GiB of data.
 */
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, type Daemon } from '../test/helpers/daemon.js';
import { requireTools, runOk } from '../test/helpers/tools.js';

const EXTENT_BYTES = 4096;

interface Args {
  extents: number[];
  modes: string[];
  json: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { extents: [1_048_576, 65_536], modes: ['instant', 'compact'], json: false };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--extents') args.extents = argv[++i]!.split(',').map(Number);
    else if (flag === '--modes') args.modes = argv[++i]!.split(',');
    else if (flag === '--json') args.json = true;
    else throw new Error(`unknown option ${flag}`);
  }
  return args;
}

interface Window {
  startMs: number;
  endMs: number;
}

/** fio per-I/O latency log lines: "time_ms, latency_ns, direction, block_size, offset". */
function latenciesInWindow(logDir: string, window: Window, fioStartMs: number): number[] {
  const file = readdirSync(logDir).find((name) => name.includes('_lat.') || name.includes('_clat.'));
  if (!file) throw new Error(`no fio latency log in ${logDir}`);
  const latenciesUs: number[] = [];
  for (const line of readFileSync(join(logDir, file), 'utf8').split('\n')) {
    const [timeMs, latencyNs] = line.split(',').map((field) => Number(field.trim()));
    if (timeMs === undefined || latencyNs === undefined || Number.isNaN(timeMs)) continue;
    const absoluteMs = fioStartMs + timeMs;
    if (absoluteMs >= window.startMs && absoluteMs <= window.endMs + 50) latenciesUs.push(latencyNs / 1000);
  }
  return latenciesUs.sort((a, b) => a - b);
}

function percentile(sorted: number[], fraction: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))]!;
}

async function fill(daemon: Daemon, volume: string, bytes: number): Promise<void> {
  await runOk('fio', ['--name=fill', '--ioengine=nbd', `--uri=${daemon.nbdUri(volume)}`, '--rw=write', '--bs=1M', '--iodepth=8', `--size=${bytes}`], { timeoutMs: 600_000 });
}

async function measure(daemon: Daemon, volume: string, bytes: number, action: (() => Promise<void>) | undefined): Promise<{ commandMs: number; p99Us: number; maxUs: number; ios: number }> {
  const logDir = mkdtempSync(join(tmpdir(), 'thinarray-stall-'));
  const fioStartMs = Date.now();
  const fio = spawn('fio', ['--name=load', '--ioengine=nbd', `--uri=${daemon.nbdUri(volume)}`, '--rw=randwrite', '--bs=4k', '--iodepth=8',
    `--size=${bytes}`, '--time_based', '--runtime=8', `--write_lat_log=${join(logDir, 'load')}`, '--log_avg_msec=0'], { stdio: 'ignore' });
  const exited = new Promise((resolve) => fio.once('exit', resolve));
  await new Promise((resolve) => setTimeout(resolve, 4000));
  const window: Window = { startMs: Date.now(), endMs: 0 };
  if (action) await action();
  else await new Promise((resolve) => setTimeout(resolve, 200));
  window.endMs = Date.now();
  await exited;
  const latencies = latenciesInWindow(logDir, window, fioStartMs);
  rmSync(logDir, { recursive: true, force: true });
  return { commandMs: window.endMs - window.startMs, p99Us: percentile(latencies, 0.99), maxUs: latencies[latencies.length - 1] ?? NaN, ios: latencies.length };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  await requireTools(['fio']);
  const rows: Array<Record<string, number | string>> = [];
  for (const extents of args.extents) {
    const bytes = extents * EXTENT_BYTES;
    const daemon = await startDaemon({ extraArgs: ['--extent-size', '4K', '--pool-size', String(Math.ceil((bytes * 2.2) / 1048576)) + 'M'] });
    try {
      await daemon.cliJson(['volume', 'create', 'src', '--size', String(bytes)]);
      await fill(daemon, 'src', bytes);
      const baseline = await measure(daemon, 'src', bytes, undefined);
      rows.push({ extents, mode: 'none (baseline)', ...baseline });
      // A FLUSH from another client: the group commit (fdatasync of the dirty working set) that
      // copy create also starts with, to tell its cost from the copy's own setup.
      const flushOnly = await measure(daemon, 'src', bytes, async () => {
        await runOk('qemu-io', ['-f', 'raw', '-c', 'flush', daemon.nbdUri('src')], { timeoutMs: 120_000 });
      });
      rows.push({ extents, mode: 'flush only', ...flushOnly });
      for (const mode of args.modes) {
        const target = `copy-${mode}`;
        const result = await measure(daemon, 'src', bytes, async () => {
          await daemon.cliJson(['copy', 'create', 'src', target, '--mode', mode, '--no-wait']);
        });
        rows.push({ extents, mode, ...result });
        const info = await daemon.cliJson<{ jobId: string }>(['copy', 'show', target]);
        await daemon.cli(['job', 'wait', info.jobId], { timeoutMs: 900_000 });
        await daemon.cliJson(['volume', 'delete', target]);
      }
    } finally {
      await daemon.cleanup();
    }
  }
  if (args.json) {
    console.log(JSON.stringify(rows, null, 2));
    return;
  }
  console.log('copy-stall: fio 4 KiB random writes QD8 on the source; latencies of writes completed while `copy create` ran');
  console.log('mapped extents  mode              command ms  writes  p99 µs   max µs');
  for (const row of rows) {
    console.log(`${String(row['extents']).padStart(14)}  ${String(row['mode']).padEnd(16)}  ${String(row['commandMs']).padStart(10)}  ${String(row['ios']).padStart(6)}  ${Number(row['p99Us']).toFixed(0).padStart(6)}  ${Number(row['maxUs']).toFixed(0).padStart(7)}`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
