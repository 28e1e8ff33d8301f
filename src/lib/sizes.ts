/** Human sizes with binary suffixes: "64K", "10G", "2T", "512" (bytes). */
import { ThinError } from './errors.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

const SUFFIX_BYTES: Record<string, number> = {
  '': 1, B: 1,
  K: KiB, KB: KiB, KIB: KiB,
  M: MiB, MB: MiB, MIB: MiB,
  G: GiB, GB: GiB, GIB: GiB,
  T: TiB, TB: TiB, TIB: TiB,
  P: TiB * 1024, PB: TiB * 1024, PIB: TiB * 1024,
};

/** Parses "64K", "1.5G", "4096". Throws INVALID_ARGUMENT naming `field` on anything else. */
export function parseSizeBytes(text: string | number, field = 'size'): number {
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text) || text < 0) {
      throw new ThinError('INVALID_ARGUMENT', `${field}: expected a non-negative whole number of bytes, got ${text}`, { field });
    }
    return text;
  }
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const suffix = match?.[2]?.toUpperCase() ?? '';
  const multiplier = SUFFIX_BYTES[suffix];
  if (!match || multiplier === undefined) {
    throw new ThinError('INVALID_ARGUMENT', `${field}: cannot read "${text}" as a size (examples: 4096, 64K, 10G, 2T)`, { field });
  }
  const bytes = Number(match[1]) * multiplier;
  if (!Number.isSafeInteger(bytes)) {
    throw new ThinError('INVALID_ARGUMENT', `${field}: "${text}" is not a whole number of bytes or is too large`, { field });
  }
  return bytes;
}

/** Formats bytes for people: 65536 -> "64 KiB", 1.5 GiB -> "1.5 GiB". */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const text = unit === 0 ? String(value) : value.toFixed(value < 10 && value % 1 !== 0 ? 2 : 1).replace(/\.0+$/, '');
  return `${text} ${units[unit]}`;
}

export function isPowerOfTwo(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0 && (value & (value - 1)) === 0;
}
