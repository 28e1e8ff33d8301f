/** What every benchmark script shares: argument parsing, medians, and the machine it ran on. */
import { cpus, totalmem } from 'node:os';
import { parseSizeBytes } from '../src/lib/sizes.js';
import { run } from '../test/helpers/tools.js';

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
