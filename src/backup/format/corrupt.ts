/** The error a damaged or truncated backup stream raises: CORRUPT, with where and what. */
import { ThinError } from '../../lib/errors.js';

export interface CorruptPosition {
  /** Stream offset of the damaged or missing byte (or of the start of the damaged part). */
  offsetBytes: number;
  /** The part of the stream: "preamble", "HEAD frame", "AMAP frame 3", "record 17 frame header", "record 17 data", "trailer". */
  section: string;
  /** The data record concerned, when there is one. */
  recordIndex?: number;
}

export class BackupCorruptError extends ThinError {
  readonly offsetBytes: number;
  readonly section: string;
  readonly recordIndex: number | undefined;
  /** What is wrong, without the position (the message has both). */
  readonly reason: string;

  constructor(position: CorruptPosition, reason: string, medium?: string) {
    const record = position.recordIndex === undefined ? '' : ` (record ${position.recordIndex})`;
    const where = medium ? ` of ${medium}` : '';
    super('CORRUPT', `backup stream${where} corrupt at byte ${position.offsetBytes}, ${position.section}${record}: ${reason}`);
    this.offsetBytes = position.offsetBytes;
    this.section = position.section;
    this.recordIndex = position.recordIndex;
    this.reason = reason;
  }
}
