/**
 * The self-describing header at the start of a compact copy (documented in docs/compact-copy.md):
 * a raw read of the copy's first extents tells what it is a copy of, the source's capacity and
 * extent size, and the correspondence table X_i → A_j, so a backup of the copy needs nothing else.
 */
import { ThinError } from '../lib/errors.js';

export const COMPACT_MAGIC = 'THINARRAY-COMPACT-COPY\n';
export const COMPACT_HEADER_VERSION = 1;
/** The JSON part lives in the first 4 KiB; the table starts right after it. */
export const COMPACT_TABLE_OFFSET_BYTES = 4096;

export interface CompactHeader {
  version: number;
  sourceName: string;
  sourceUuid: string;
  sourceCapacityBytes: number;
  extentBytes: number;
  /** n: extents of data, X_1 … X_n, in the order of their source addresses. */
  extentCount: number;
  /** Extents taken by this header and table; data extent X_i is at logical extent metadataExtents + i - 1. */
  metadataExtents: number;
  pointInTime: string;
}

export function metadataExtentsFor(extentCount: number, extentBytes: number): number {
  return Math.ceil((COMPACT_TABLE_OFFSET_BYTES + 8 * extentCount) / extentBytes);
}

/**
 * One extent of the header area, rendered alone: a copy serves and writes its header extent by
 * extent, so a table of millions of entries never blocks the event loop in one piece.
 */
export function renderCompactHeaderExtent(header: CompactHeader, sourceExtents: Float64Array, extentIndex: number): Buffer {
  const extentBytes = header.extentBytes;
  const start = extentIndex * extentBytes;
  const out = Buffer.alloc(extentBytes);
  if (extentIndex === 0) {
    const text = COMPACT_MAGIC + JSON.stringify(header) + '\n';
    if (Buffer.byteLength(text) > COMPACT_TABLE_OFFSET_BYTES) throw new ThinError('INVALID_ARGUMENT', 'compact copy header does not fit its 4 KiB (source name too long?)');
    out.write(text, 0, 'utf8');
  }
  // Table entries whose 8 bytes fall in this extent (the table starts at 4096; entries never straddle:
  // extents are multiples of 4096 and entries are 8 bytes).
  const firstEntry = Math.max(0, Math.ceil((start - COMPACT_TABLE_OFFSET_BYTES) / 8));
  const endEntry = Math.min(sourceExtents.length, Math.floor((start + extentBytes - COMPACT_TABLE_OFFSET_BYTES) / 8));
  for (let i = firstEntry; i < endEntry; i++) {
    // u64 LE as two u32 halves: exact for extents below 2^53, and far faster than BigInt per entry.
    const extent = sourceExtents[i]!;
    const offset = COMPACT_TABLE_OFFSET_BYTES + 8 * i - start;
    out.writeUInt32LE(extent % 2 ** 32, offset);
    out.writeUInt32LE(Math.floor(extent / 2 ** 32), offset + 4);
  }
  return out;
}

/** Parses a header area (for tools that read a compact copy or its backup raw). */
export function parseCompactHeader(area: Buffer): { header: CompactHeader; sourceExtents: Float64Array } {
  const text = area.subarray(0, COMPACT_TABLE_OFFSET_BYTES).toString('utf8');
  if (!text.startsWith(COMPACT_MAGIC)) throw new ThinError('CORRUPT', 'not a thinarray compact copy (magic missing)');
  const header = JSON.parse(text.slice(COMPACT_MAGIC.length, text.indexOf('\n', COMPACT_MAGIC.length))) as CompactHeader;
  if (header.version !== COMPACT_HEADER_VERSION) throw new ThinError('UNSUPPORTED', `compact copy header version ${header.version} is not supported`);
  const sourceExtents = new Float64Array(header.extentCount);
  for (let i = 0; i < header.extentCount; i++) {
    const offset = COMPACT_TABLE_OFFSET_BYTES + 8 * i;
    sourceExtents[i] = area.readUInt32LE(offset) + area.readUInt32LE(offset + 4) * 2 ** 32;
  }
  return { header, sourceExtents };
}
