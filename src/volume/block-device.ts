/**
 * The volume-like interface every layer above the volume speaks: the NBD server, copies, pairs,
 * copy-before-write sessions and backups. A layer that wraps a BlockDevice implements every
 * operation explicitly — no silent pass-through (a forgotten trim on a mirror is corruption).
 *
 * All offsets and lengths are in bytes and must lie inside [0, sizeBytes). Callers check ranges
 * and report errors to their own clients; implementations assert them again.
 */

export interface WriteOptions {
  /** Force unit access: the data is on stable storage (and the map committed) before resolve. */
  fua: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** Whole extents may be unmapped (NBD: the NO_HOLE flag is absent). */
  mayUnmap: boolean;
  /** Fail with UNSUPPORTED instead of writing zeros slowly (NBD FAST_ZERO). Nothing is changed then. */
  fastOnly: boolean;
}

/** One run of a block-status answer: `lengthBytes` bytes that share the same state. */
export interface BlockStatusRun {
  lengthBytes: number;
  /** No physical extent behind the run (NBD_STATE_HOLE). */
  hole: boolean;
  /** The run reads as zeros (NBD_STATE_ZERO). */
  zero: boolean;
}

/** One run of a change-status answer: extents changed since the last backup, or not. */
export interface ChangeStatusRun {
  lengthBytes: number;
  changed: boolean;
}

export interface BlockDevice {
  readonly name: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** Allocation unit: block status answers and unmapping happen at this granularity. */
  readonly extentBytes: number;

  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /** `data` may be several chunks (as they came off a socket); their total is the write length. */
  write(offsetBytes: number, data: Buffer | readonly Buffer[], options: WriteOptions): Promise<void>;
  /** Advisory: whole extents inside the range are unmapped; partial extents are left as they are. */
  trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void>;
  writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void>;
  /** Every write that completed before the call is on stable storage when this resolves. */
  flush(): Promise<void>;
  /** Hint that the range will be read soon. */
  cache(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Runs covering [offset, offset+length) in order, adjacent runs merged; at most maxRuns (then they cover a prefix). */
  blockStatus(offsetBytes: number, lengthBytes: number, maxRuns?: number): BlockStatusRun[];
  /**
   * Volumes that track changes (once backed up): runs telling which bytes lie in extents changed
   * since the last backup's point in time. Absent on devices that do not track changes.
   */
  changeStatus?(offsetBytes: number, lengthBytes: number, maxRuns: number): ChangeStatusRun[];
}
