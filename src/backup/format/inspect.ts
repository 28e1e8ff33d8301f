/** A summary of a whole backup stream, every check done, without keeping any data in memory. */
import type { MediumReader } from '../media/medium.js';
import type { BackupKind } from './header.js';
import { BackupStreamReader } from './reader.js';

export interface StreamSummary {
  medium: string;
  formatVersion: number;
  backupId: string;
  kind: BackupKind;
  parentBackupId: string | null;
  sourceName: string;
  sourceUuid: string;
  sourceCapacityBytes: number;
  extentBytes: number;
  createdAt: string;
  labels: string[];
  description: string;
  allocationRunCount: number;
  mappedExtentCount: number;
  recordCount: number;
  dataBytes: number;
  headerBytes: number;
  streamBytes: number;
  /** The stream digest (SHA-256 of the header and every DATA frame header; checked). */
  digestHex: string;
}

/** Reads the stream to its end through a BackupStreamReader; throws BackupCorruptError on any damage. */
export async function inspectStream(medium: MediumReader): Promise<StreamSummary> {
  const reader = new BackupStreamReader(medium);
  const header = await reader.readHeader();
  const trailer = await reader.verifyTrailer();
  return {
    medium: medium.description,
    formatVersion: header.formatVersion,
    backupId: header.backupId,
    kind: header.kind,
    parentBackupId: header.parentBackupId === '' ? null : header.parentBackupId,
    sourceName: header.sourceName,
    sourceUuid: header.sourceUuid,
    sourceCapacityBytes: header.sourceCapacityBytes,
    extentBytes: header.extentBytes,
    createdAt: new Date(header.createdAtMs).toISOString(),
    labels: [...header.labels],
    description: header.description,
    allocationRunCount: header.allocationRuns.length / 2,
    mappedExtentCount: header.mappedExtentCount,
    recordCount: trailer.recordCount,
    dataBytes: trailer.dataBytes,
    headerBytes: header.headerBytes,
    streamBytes: trailer.streamBytes,
    digestHex: trailer.digestHex,
  };
}
