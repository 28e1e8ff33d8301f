/** Human output: aligned tables and key/value blocks. `--json` output never goes through here. */
import { formatBytes } from '../lib/sizes.js';

export { formatBytes };

/** One decimal, two below 1% so a little data does not read as "0.0%". */
export function formatPercent(percent: number): string {
  return `${percent.toFixed(percent > 0 && percent < 1 ? 2 : 1)}%`;
}

/** `part` as a percentage of `whole` (0 when whole is 0). */
export function percentOf(part: number, whole: number): string {
  return formatPercent(whole === 0 ? 0 : (part / whole) * 100);
}

export interface Column {
  header: string;
  /** Numbers read better right-aligned. */
  alignRight?: boolean;
}

/** Columns padded to their widest cell, two spaces apart, no trailing blanks. */
export function formatTable(columns: Column[], rows: string[][]): string {
  const widths = columns.map((column, index) => Math.max(column.header.length, ...rows.map((row) => (row[index] ?? '').length)));
  const formatRow = (cells: string[]): string =>
    cells
      .map((cell, index) => (columns[index]?.alignRight ? cell.padStart(widths[index]!) : cell.padEnd(widths[index]!)))
      .join('  ')
      .trimEnd();
  return [formatRow(columns.map((column) => column.header)), ...rows.map(formatRow)].join('\n');
}

/** "key   value" lines with the values aligned. */
export function formatFields(fields: [string, string][]): string {
  const width = Math.max(...fields.map(([key]) => key.length));
  return fields.map(([key, value]) => `${key.padEnd(width)}  ${value}`).join('\n');
}
