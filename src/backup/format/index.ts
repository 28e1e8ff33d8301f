/** The backup stream format, version 2 (docs/format.md). */
export { BackupStreamWriter, type BackupStreamSummary } from './writer.js';
export { BackupStreamReader, type BackupRecord, type BackupTrailer } from './reader.js';
export { inspectStream, type StreamSummary } from './inspect.js';
export { BackupCorruptError, type CorruptPosition } from './corrupt.js';
export { allocationRunsFromExtents, extentsOfRuns, recordBytesFor, type BackupHeader, type BackupHeaderFields, type BackupKind } from './header.js';
export { BACKUP_LIMITS } from './limits.js';
export { FORMAT_VERSION } from './layout.js';
