/**
 * Limits of the backup stream format and media, each with its reason. They live beside the code
 * until src/lib/limits.ts (owned elsewhere) takes them in; changing one is a format decision.
 */
import { KiB, MiB } from '../../lib/sizes.js';

export const BACKUP_LIMITS = {
  /** HEAD payload: fixed fields plus names, labels and free text; bounded so a corrupt length cannot make us allocate much. */
  headPayloadBytesMax: 64 * KiB,
  /** Backup ids name cartridge files (`<backupId>.0001`) and fill a 64-byte label field. */
  backupIdBytesMax: 64,
  /** Volume names, uuids and a parent id. */
  nameBytesMax: 255,
  /** Free text from the requester (seed 003: management information), in UTF-8 bytes. */
  descriptionBytesMax: 4 * KiB,
  labelsMax: 32,
  labelBytesMax: 256,
  /** Allocation-map runs per AMAP frame: 4096 × 16 bytes = 64 KiB frames, so a map of millions of runs streams. */
  runsPerFrameMax: 4096,
  /** Correspondence entries per CORR frame: 8192 × 8 bytes = 64 KiB frames. */
  correspondencePerFrameMax: 8192,
  /**
   * The writer hands the medium chunks of exactly this size (the last one shorter): big enough that
   * syscalls cost nothing next to the copy, and a fixed block size is what a tape drive wants.
   * A reader of a variable-block tape needs a read buffer at least this big.
   */
  writeChunkBytes: 1 * MiB,
  /** Chunks handed to the medium and not yet written: with the one being filled, the writer holds at most 5 MiB. */
  writeChunksInFlightMax: 4,
  /** Read-ahead of the file media (fs stream highWaterMark), at least writeChunkBytes (see above). */
  readChunkBytes: 1 * MiB,
  /** Smallest cartridge: the 128-byte label plus room for data; tests use small ones to make many. */
  cartridgeBytesMin: 4 * KiB,
  /** Cartridges per backup: the file suffix has four digits at least; beyond it names just grow. */
  cartridgesMax: 999_999,
} as const;
