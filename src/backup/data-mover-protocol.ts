/**
 * What the backup job's thread and its data mover worker share (src/backup/data-mover.ts): the
 * indexes of the control words and the layout of the shared memory. Imported by both sides, so it
 * imports nothing of the daemon.
 */

/** Int32 words of the control array. Counters only grow during a run; each side writes its own. */
export const CONTROL = {
  /** Worker: chunks sealed (every byte final) since the run began. */
  sealed: 0,
  /** Job: chunks the medium has, in order, since the run began: their slots may be reused. */
  released: 1,
  /** Job: 1 asks the worker to stop the run at the next record. */
  stop: 2,
  /** Worker: the run's state (RUN_STATE). */
  state: 3,
  /** Job: messages posted to the worker (a run, then record batches). */
  posted: 4,
  /** Worker: record batches taken. */
  batchesTaken: 5,
  /** Worker: bumped and notified on every event the job may be waiting for. */
  events: 6,
  /** Worker: length of the error text in the error area. */
  errorBytes: 7,
} as const;
export const CONTROL_WORDS = 8;

export const RUN_STATE = { idle: 0, running: 1, done: 2, failed: 3, stopped: 4 } as const;

/** Float64 words of the result area, written by the worker before it sets a final state. */
export const RESULT = { tailBytes: 0, records: 1, dataBytes: 2 } as const;
export const RESULT_WORDS = 3;

/** Numbers per record in a batch: source extent, disk descriptor (−1: reads as zeros), disk position, length. */
export const RECORD_FIELDS = 4;

export const ERROR_AREA_BYTES = 4096;

/** The worker's memory, given once when it starts; slots are reused run after run. */
export interface MoverMemory {
  /** slotCount × slotBytes: the chunks being laid out, page-aligned for O_DIRECT. */
  ring: SharedArrayBuffer;
  /** Int32 × CONTROL_WORDS. */
  control: SharedArrayBuffer;
  /** Per slot: the DATA frame headers that start in it (headersPerSlotMax × 32 bytes each). */
  headerLog: SharedArrayBuffer;
  /** Int32 per slot: how many headers its log holds. */
  headerCounts: SharedArrayBuffer;
  /** Float64 × RESULT_WORDS. */
  result: SharedArrayBuffer;
  /** UTF-8 text of a failure. */
  error: SharedArrayBuffer;
  slotBytes: number;
  slotCount: number;
  headersPerSlotMax: number;
}

/** What the job posts to start a run (record batches follow). */
export interface RunMessage {
  type: 'run';
  /** Numbers the run: the worker drops batches of other runs (an earlier run's, left when it stopped). */
  generation: number;
  /** Bytes already in slot 0 (the end of the stream header). */
  startBytes: number;
  recordCount: number;
}

/** The next records of a run, RECORD_FIELDS numbers each. */
export interface BatchMessage {
  type: 'batch';
  generation: number;
  records: Float64Array;
}
