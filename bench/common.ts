/** What every benchmark script shares: argument parsing, medians, and the machine it ran on. */
import { rm } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseSizeBytes } from '../src/lib/sizes.js';
import { run, runOk } from '../test/helpers/tools.js';

/** "64K", "256M", "1G" — the same size syntax as the CLI. */
export function parseSize(text: string): number {
  return parseSizeBytes(text, 'size');
}

export function parsePositive(name: string, text: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got '${text}'`);
  return n;
}

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export async function toolVersion(cmd: string, args: string[]): Promise<string> {
  const result = await run(cmd, args, { timeoutMs: 10_000 }).catch(() => undefined);
  return result === undefined ? 'unknown' : (result.stdout.trim() || result.stderr.trim()).split('\n')[0] ?? 'unknown';
}

/** The machine a result was measured on, with the versions of the tools compared. */
export async function machineInfo(tools: Record<string, [string, string[]]>): Promise<Record<string, string | number>> {
  const info: Record<string, string | number> = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryBytes: totalmem(),
    node: process.version,
  };
  for (const [name, [cmd, args]] of Object.entries(tools)) info[name] = await toolVersion(cmd, args);
  return info;
}

/**
 * Writes and deletes a scratch file of `bytes` in `dir`, right before a timed step, so that the
 * step's new page-cache pages are memory this VM has just used. Measured here: writing a new file
 * runs at 0.36 GB/s into memory the guest has not touched lately and at 4-5 GB/s into memory freed
 * moments before, and the balloon driver hands freed memory back to the host within seconds (free
 * page reporting), so which step got warm memory was luck — the `cp` limit ranged 0.28–2.21 s in
 * one run. Every timed step, the limit included, gets the same warm-up; on a host without a
 * hypervisor it changes nothing. (Filling anonymous memory in a child process did not work: its
 * pages did not come back as page cache.)
 */
export async function warmPageCache(dir: string, bytes: number): Promise<void> {
  const scratch = join(dir, 'warm-up.scratch');
  const blockBytes = 8 * 2 ** 20;
  await runOk('dd', ['if=/dev/zero', `of=${scratch}`, `bs=${blockBytes}`, `count=${Math.ceil(bytes / blockBytes)}`, 'status=none'], { timeoutMs: 600_000 });
  await rm(scratch, { force: true });
}

/** Ctrl-C or SIGTERM: run `cleanup` (stop servers, remove the work directory), then exit 130. */
export function cleanUpOnInterrupt(cleanup: () => Promise<void>): void {
  const onSignal = (): void => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
}
