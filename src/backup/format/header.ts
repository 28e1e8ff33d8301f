/**
 * The header fields of a backup stream: what the writer is constructed with and what the reader
 * returns. The HEAD frame carries the scalar fields and strings; the allocation map and the
 * correspondence table follow in their own frames (they can be millions of entries).
 */
import { ThinError } from '../../lib/errors.js';
import { BACKUP_LIMITS } from './limits.js';
import { HEAD, KIND_CODE, readU64, writeU64 } from './layout.js';

export type BackupKind = 'full' | 'incremental';

export interface BackupHeaderFields {
  /** Names the backup (and its cartridge files): 1–64 of [A-Za-z0-9._-]. */
  backupId: string;
  kind: BackupKind;
  /** The backup an incremental applies on top of; absent (or empty) for a full backup. */
  parentBackupId?: string;
  sourceName: string;
  sourceUuid: string;
  sourceCapacityBytes: number;
  extentBytes: number;
  /**
   * The source's allocation map at the point in time, as runs of mapped logical extents:
   * flattened pairs [firstExtent0, extentCount0, firstExtent1, …], ascending, neither
   * overlapping nor touching (see allocationRunsFromExtents).
   */
  allocationRuns: ArrayLike<number>;
  /** Correspondence table: data record i holds source logical extent correspondence[i] (X_{i+1} → A). */
  correspondence: ArrayLike<number>;
  createdAtMs: number;
  labels: readonly string[];
  description: string;
}

/** What a reader returns: the fields, with the tables as typed arrays, plus derived counts. */
export interface BackupHeader extends BackupHeaderFields {
  parentBackupId: string;
  allocationRuns: Float64Array;
  correspondence: Float64Array;
  formatVersion: number;
  mappedExtentCount: number;
  recordCount: number;
  /** Sum of the data records' lengths. */
  dataBytes: number;
  /** Bytes of the stream before the first data record (preamble through HEND). */
  headerBytes: number;
}

const BACKUP_ID_PATTERN = /^[A-Za-z0-9._-]+$/;

export function sourceExtentCount(capacityBytes: number, extentBytes: number): number {
  return Math.ceil(capacityBytes / extentBytes);
}

/** Length of the record holding `sourceExtent`: a whole extent, except a volume's last partial one. */
export function recordBytesFor(sourceExtent: number, capacityBytes: number, extentBytes: number): number {
  return Math.min(extentBytes, capacityBytes - sourceExtent * extentBytes);
}

/** Runs (flattened pairs) from ascending distinct extent numbers; adjacent extents join one run. */
export function allocationRunsFromExtents(extents: ArrayLike<number>): Float64Array {
  // Two passes, so that memory follows the runs, not the extents (a volume of millions of
  // adjacent extents is one run).
  let runCount = 0;
  for (let i = 0; i < extents.length; i++) {
    const previous = i === 0 ? -2 : extents[i - 1]!;
    if (extents[i]! <= previous) throw new ThinError('INVALID_ARGUMENT', `allocation map extents must ascend: ${extents[i]!} after ${previous}`);
    if (extents[i] !== previous + 1) runCount++;
  }
  const pairs = new Float64Array(2 * runCount);
  let pairsUsed = 0;
  for (let i = 0; i < extents.length; i++) {
    if (i > 0 && extents[i] === extents[i - 1]! + 1) pairs[pairsUsed - 1]!++;
    else {
      pairs[pairsUsed++] = extents[i]!;
      pairs[pairsUsed++] = 1;
    }
  }
  return pairs;
}

/** Every mapped extent of the runs, ascending. */
export function* extentsOfRuns(runs: ArrayLike<number>): Generator<number> {
  for (let i = 0; i < runs.length; i += 2) {
    for (let e = runs[i]!; e < runs[i]! + runs[i + 1]!; e++) yield e;
  }
}

/**
 * Checks the fields as a whole; returns the first problem or null. The writer turns a problem into
 * INVALID_ARGUMENT, the reader into CORRUPT (the same rules hold on both sides).
 */
export function findHeaderProblem(fields: BackupHeaderFields): string | null {
  const stringProblem = findStringProblem(fields);
  if (stringProblem) return stringProblem;
  const { extentBytes, sourceCapacityBytes } = fields;
  if (!Number.isSafeInteger(extentBytes) || extentBytes < 512 || extentBytes > 0xffff_ffff || (extentBytes & (extentBytes - 1)) !== 0) return `extentBytes ${extentBytes} is not a power of two of at least 512`;
  if (!Number.isSafeInteger(sourceCapacityBytes) || sourceCapacityBytes < 0) return `sourceCapacityBytes ${sourceCapacityBytes} is not a byte count`;
  if (!Number.isSafeInteger(fields.createdAtMs) || fields.createdAtMs < 0) return `createdAtMs ${fields.createdAtMs} is not a time`;
  const mapProblem = findRunsProblem(fields.allocationRuns, sourceExtentCount(sourceCapacityBytes, extentBytes));
  if (mapProblem) return mapProblem;
  const tableProblem = findCorrespondenceProblem(fields.correspondence, fields.allocationRuns);
  if (tableProblem) return tableProblem;
  if (fields.kind === 'full' && fields.correspondence.length !== countMapped(fields.allocationRuns)) {
    return `a full backup holds every mapped extent: ${fields.correspondence.length} records for ${countMapped(fields.allocationRuns)} mapped extents`;
  }
  return null;
}

function findStringProblem(fields: BackupHeaderFields): string | null {
  if (!BACKUP_ID_PATTERN.test(fields.backupId) || Buffer.byteLength(fields.backupId) > BACKUP_LIMITS.backupIdBytesMax) {
    return `backupId ${JSON.stringify(fields.backupId)} must be 1-${BACKUP_LIMITS.backupIdBytesMax} of [A-Za-z0-9._-]`;
  }
  if (fields.kind !== 'full' && fields.kind !== 'incremental') return `kind ${JSON.stringify(fields.kind)} is not full or incremental`;
  const parent = fields.parentBackupId ?? '';
  if (fields.kind === 'incremental' && !BACKUP_ID_PATTERN.test(parent)) return 'an incremental backup needs parentBackupId';
  if (fields.kind === 'full' && parent !== '') return 'a full backup has no parentBackupId';
  for (const [name, value] of [['sourceName', fields.sourceName], ['sourceUuid', fields.sourceUuid], ['parentBackupId', parent]] as const) {
    if (Buffer.byteLength(value) > BACKUP_LIMITS.nameBytesMax) return `${name} is longer than ${BACKUP_LIMITS.nameBytesMax} bytes`;
  }
  if (fields.sourceName === '') return 'sourceName is empty';
  if (Buffer.byteLength(fields.description) > BACKUP_LIMITS.descriptionBytesMax) return `description is longer than ${BACKUP_LIMITS.descriptionBytesMax} bytes`;
  if (fields.labels.length > BACKUP_LIMITS.labelsMax) return `more than ${BACKUP_LIMITS.labelsMax} labels`;
  for (const label of fields.labels) {
    if (Buffer.byteLength(label) > BACKUP_LIMITS.labelBytesMax) return `a label is longer than ${BACKUP_LIMITS.labelBytesMax} bytes`;
  }
  return null;
}

function countMapped(runs: ArrayLike<number>): number {
  let count = 0;
  for (let i = 1; i < runs.length; i += 2) count += runs[i]!;
  return count;
}

function findRunsProblem(runs: ArrayLike<number>, extentCount: number): string | null {
  if (runs.length % 2 !== 0) return 'allocationRuns must hold (first, count) pairs';
  let end = -1;
  for (let i = 0; i < runs.length; i += 2) {
    const first = runs[i]!;
    const count = runs[i + 1]!;
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || count < 1) return `allocation run ${i / 2} (${first}+${count}) is not a run of extents`;
    if (first <= end) return `allocation run ${i / 2} (first extent ${first}) does not come after the previous run (ends at ${end - 1}) with a gap`;
    end = first + count;
    if (end > extentCount) return `allocation run ${i / 2} (${first}+${count}) goes past the source's ${extentCount} extents`;
  }
  return null;
}

/** Every record's extent is distinct and was mapped at the point in time (only mapped extents are copied). */
function findCorrespondenceProblem(table: ArrayLike<number>, runs: ArrayLike<number>): string | null {
  const sorted = Float64Array.from(table).sort();
  let run = 0;
  for (let i = 0; i < sorted.length; i++) {
    const extent = sorted[i]!;
    if (!Number.isSafeInteger(extent) || extent < 0) return `correspondence entry ${extent} is not an extent number`;
    if (i > 0 && extent === sorted[i - 1]) return `source extent ${extent} appears twice in the correspondence table`;
    while (run < runs.length && runs[run]! + runs[run + 1]! <= extent) run += 2;
    if (run >= runs.length || runs[run]! > extent) return `correspondence table names source extent ${extent}, which the allocation map says was not mapped`;
  }
  return null;
}

/** HEAD payload: fixed fields (layout.ts HEAD), then u16-length-prefixed UTF-8 strings, then u16 label count and labels. */
export function renderHeadPayload(fields: BackupHeaderFields, counts: { mappedExtentCount: number; dataBytes: number }): Buffer {
  const strings = [fields.backupId, fields.parentBackupId ?? '', fields.sourceName, fields.sourceUuid, fields.description];
  const parts: Buffer[] = [];
  const fixed = Buffer.alloc(HEAD.fixedBytes);
  fixed.writeUInt8(KIND_CODE[fields.kind], HEAD.kind);
  fixed.writeUInt32LE(fields.extentBytes, HEAD.extentBytes);
  writeU64(fixed, fields.sourceCapacityBytes, HEAD.sourceCapacityBytes);
  writeU64(fixed, fields.createdAtMs, HEAD.createdAtMs);
  writeU64(fixed, fields.allocationRuns.length / 2, HEAD.allocationRunCount);
  writeU64(fixed, counts.mappedExtentCount, HEAD.mappedExtentCount);
  writeU64(fixed, fields.correspondence.length, HEAD.recordCount);
  writeU64(fixed, counts.dataBytes, HEAD.dataBytes);
  parts.push(fixed);
  for (const text of strings) parts.push(lengthPrefixed(text));
  const labelCount = Buffer.alloc(2);
  labelCount.writeUInt16LE(fields.labels.length);
  parts.push(labelCount);
  for (const label of fields.labels) parts.push(lengthPrefixed(label));
  return Buffer.concat(parts);
}

function lengthPrefixed(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const prefixed = Buffer.alloc(2 + bytes.length);
  prefixed.writeUInt16LE(bytes.length);
  bytes.copy(prefixed, 2);
  return prefixed;
}

/** Fields of a HEAD payload, without the tables (they come in later frames). Returns a problem string when malformed. */
export interface HeadFields {
  kind: BackupKind;
  extentBytes: number;
  sourceCapacityBytes: number;
  createdAtMs: number;
  allocationRunCount: number;
  mappedExtentCount: number;
  recordCount: number;
  dataBytes: number;
  backupId: string;
  parentBackupId: string;
  sourceName: string;
  sourceUuid: string;
  description: string;
  labels: string[];
}

export function parseHeadPayload(payload: Buffer): HeadFields | string {
  if (payload.length < HEAD.fixedBytes + 12) return `HEAD payload of ${payload.length} bytes is too short`;
  const kindCode = payload.readUInt8(HEAD.kind);
  const kind: BackupKind | undefined = kindCode === KIND_CODE.full ? 'full' : kindCode === KIND_CODE.incremental ? 'incremental' : undefined;
  if (!kind) return `unknown backup kind code ${kindCode}`;
  const numbers = [HEAD.sourceCapacityBytes, HEAD.createdAtMs, HEAD.allocationRunCount, HEAD.mappedExtentCount, HEAD.recordCount, HEAD.dataBytes].map((offset) => readU64(payload, offset));
  if (numbers.some((n) => n < 0)) return 'a HEAD count is beyond 2^53';
  const cursor = { offset: HEAD.fixedBytes };
  const strings: string[] = [];
  for (let i = 0; i < 5; i++) {
    const text = readLengthPrefixed(payload, cursor);
    if (text === null) return 'HEAD strings run past the payload';
    strings.push(text);
  }
  if (cursor.offset + 2 > payload.length) return 'HEAD label count runs past the payload';
  const labelCount = payload.readUInt16LE(cursor.offset);
  cursor.offset += 2;
  const labels: string[] = [];
  for (let i = 0; i < labelCount; i++) {
    const label = readLengthPrefixed(payload, cursor);
    if (label === null) return 'HEAD labels run past the payload';
    labels.push(label);
  }
  if (cursor.offset !== payload.length) return `${payload.length - cursor.offset} stray bytes at the end of the HEAD payload`;
  const [sourceCapacityBytes, createdAtMs, allocationRunCount, mappedExtentCount, recordCount, dataBytes] = numbers as [number, number, number, number, number, number];
  const [backupId, parentBackupId, sourceName, sourceUuid, description] = strings as [string, string, string, string, string];
  return { kind, extentBytes: payload.readUInt32LE(HEAD.extentBytes), sourceCapacityBytes, createdAtMs, allocationRunCount, mappedExtentCount, recordCount, dataBytes, backupId, parentBackupId, sourceName, sourceUuid, description, labels };
}

function readLengthPrefixed(payload: Buffer, cursor: { offset: number }): string | null {
  if (cursor.offset + 2 > payload.length) return null;
  const length = payload.readUInt16LE(cursor.offset);
  if (cursor.offset + 2 + length > payload.length) return null;
  const text = payload.toString('utf8', cursor.offset + 2, cursor.offset + 2 + length);
  cursor.offset += 2 + length;
  return text;
}

/** Mapped extents and data bytes the header announces, computed from the fields. */
export function countsOf(fields: BackupHeaderFields): { mappedExtentCount: number; dataBytes: number } {
  let dataBytes = 0;
  for (let i = 0; i < fields.correspondence.length; i++) dataBytes += recordBytesFor(fields.correspondence[i]!, fields.sourceCapacityBytes, fields.extentBytes);
  return { mappedExtentCount: countMapped(fields.allocationRuns), dataBytes };
}
