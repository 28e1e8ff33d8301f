/**
 * Every limit in one place, each with its reason. Changing one is a design decision.
 */
import { KiB, MiB, GiB } from './sizes.js';

export const LIMITS = {
  /** Extent sizes a pool may be created with (SPEC §1). Below 4 KiB the map costs more than the data. */
  extentBytesMin: 4 * KiB,
  extentBytesMax: 4 * MiB,
  extentBytesDefault: 64 * KiB,

  /**
   * Map entries are uint32 physical extent numbers with 0 meaning "unmapped", so a pool holds at
   * most 2^32 - 2 extents (256 TiB at the default 64 KiB extent).
   */
  poolExtentsMax: 0xffff_fffe,

  /** Map entries per persisted page: one 2 KiB blob each; a volume's memory grows with pages touched. */
  mapEntriesPerPage: 512,
  /** Allocation-bitmap bits per persisted page (8 KiB blobs). */
  bitmapBitsPerPage: 65536,

  /** Largest volume: 2^63 is NBD's limit; we keep offsets exact in a JS number (2^53). */
  volumeBytesMax: 2 ** 52,
  /** Size of the pool file `serve` creates on first start (sparse: costs nothing until written). */
  defaultPoolFileBytes: 64 * GiB,

  /** NBD: largest READ/WRITE payload we accept (advertised as the maximum block size). */
  nbdPayloadBytesMax: 32 * MiB,
  /** NBD: preferred block size advertised; smaller writes still work but may read-modify-write. */
  nbdPreferredBlockBytes: 4 * KiB,
  /** NBD: an option during the handshake larger than this is refused (names and contexts are small). */
  nbdOptionBytesMax: 64 * KiB,
  /** NBD: requests a single connection may have in progress before we stop reading its socket. */
  nbdInflightRequestsMax: 128,
  /** Each plain NBD connection's reusable read buffer (headers, small requests; WRITE payloads are read into their own). */
  nbdReadSlabBytes: 256 * KiB,
  /** NBD: at most this many meta contexts per SET_META_CONTEXT / LIST (we only have a handful). */
  nbdMetaContextQueriesMax: 64,

  /**
   * A WRITE whose length is over the maximum block size but at most this is read and discarded,
   * then failed with EINVAL, so a confused client keeps its connection. Beyond it the payload
   * costs more than the connection is worth and we disconnect (the spec allows it above 32 MiB).
   */
  nbdWriteDiscardBytesMax: 128 * MiB,
  /**
   * An option longer than LIMITS.nbdOptionBytesMax but at most this is skipped without
   * buffering and answered NBD_REP_ERR_TOO_BIG; a longer one disconnects.
   */
  nbdOptionDiscardBytesMax: 16 * MiB,
  /** Options one handshake may send before we hang up (a client looping on options is broken). */
  nbdHandshakeOptionsMax: 1024,
  /** A client that has not finished the handshake after this long is disconnected. */
  nbdHandshakeTimeoutMs: 60_000,
  /**
   * READ and WRITE bytes a connection may have in progress; beyond it we stop reading the socket
   * (with LIMITS.nbdInflightRequestsMax, this bounds a connection's buffers to about this much).
   */
  nbdInflightBytesMax: 256 * MiB,
  /** Reply bytes queued in the socket before we stop reading requests (a client not reading). */
  nbdReplyQueuedBytesMax: 64 * MiB,
  /** NbdServer.close() waits this long for connections to answer what is in flight, then cuts them. */
  nbdCloseGraceMs: 30_000,
  /** Longest human-readable message we put in an error reply. */
  nbdErrorMessageBytesMax: 1024,

  /** NBD: bound on block-status descriptors in one reply, so a huge request is answered in pieces. */
  nbdBlockStatusDescriptorsMax: 65536,

  /** Reads up to this size are served with synchronous pread (page-cache hits beat a thread hop). */
  syncReadBytesMax: 64 * KiB,
  /**
   * Writes up to this size use synchronous pwritev: 2.2x the 4 KiB random-write IOPS of the thread
   * pool (measured with fio QD32). The cost: a writer throttled by dirty-page writeback stalls the
   * event loop for that time, so the bound stays small.
   */
  syncWriteBytesMax: 64 * KiB,

  /** Reads at least this large use recycled buffers (src/lib/buffer-pool.ts); smaller ones come from Node's slab. */
  pooledBufferBytesMin: 128 * KiB,
  /** Largest pooled buffer: the largest NBD payload. */
  pooledBufferBytesMax: 32 * MiB,
  /** Idle pooled buffers kept at most; beyond it released buffers are left to the collector. */
  pooledBuffersBytesMax: 128 * MiB,

  /** Copy engine: extents per batch (one read of adjacent extents) and batches in flight: ≤ 4 MiB of buffers at 64 KiB extents. */
  copyBatchExtentsMax: 16,
  copyBatchesInFlightMax: 4,
  /** `backup candidates`: cartridge sets listed per media root (each costs a readdir). */
  backupCandidateSetsMax: 64,
  /** Restore (remap): records written to new extents in one batch, and batches in flight. */
  restoreBatchExtentsMax: 32,
  restoreBatchesInFlightMax: 4,
  /** Extent-list pages (4096 entries, 32 KiB each) per transaction after a copy's setup: ~1 MiB, a few ms. */
  copyListPagesPerTransaction: 32,

  /** Extents a volume delete unmaps before it lets other I/O run (a few ms of work). */
  deleteExtentsPerSlice: 65536,

  /** Metadata is committed at least this often even without FLUSH, bounding lost work after a crash. */
  commitIntervalMs: 1000,

  /** HTTP API: largest request body. */
  apiBodyBytesMax: 1 * MiB,
  // jobs
  /** Finished jobs kept in the store (newest first); older ones are deleted as new ones finish. */
  jobsFinishedKeptMax: 1000,
  /** Jobs queued or running at once; beyond it start() is refused BUSY (a runaway script, not a workload). */
  jobsActiveMax: 256,
  /**
   * Jobs whose handlers run at once; the rest wait 'queued'. Every job streams data through the
   * same pool disks, so more at once only slices the same bandwidth thinner. A handler must
   * never wait for another job (it could be queued behind it); call the engine directly instead.
   */
  jobsRunningMax: 8,
  /** Progress and checkpoints are written at most this often (each write is an fsync'ed commit). */
  jobPersistIntervalMs: 1000,
  /** Rate and ETA come from the progress of this last window: recent enough to follow changes, long enough to be steady. */
  jobRateWindowMs: 10_000,
  /** Longest long-poll (`GET /jobs/:id?waitMs=`): below the CLI's and proxies' usual idle timeouts. */
  jobWaitMsMax: 30_000,
  /** close() waits this long for handlers to notice the abort; a handler that ignores it is logged and left behind. */
  jobCloseGraceMs: 30_000,
  /** Largest checkpoint (JSON) a handler may save: it is rewritten every second; bulk state belongs in the handler's own tables. */
  jobCheckpointBytesMax: 1 * MiB,
  /** Largest params (JSON) a job may be started with. */
  jobParamsBytesMax: 64 * KiB,
  /** Longest description, in characters. */
  jobDescriptionCharsMax: 500,

  /** Backup stream format and media (src/backup): changing one of these is a format decision. */
  backup: {
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
    /**
     * Chunks handed to the medium and not yet written: with the one being filled, the writer holds
     * at most 9 MiB. Enough for two gathered O_DIRECT writes (below) while the next is filled.
     */
    writeChunksInFlightMax: 8,
    /** DirectFileWriter: waiting chunks gathered into one O_DIRECT pwritev up to this, and such writes at once. */
    directWriteBytesMax: 4 * MiB,
    directWritesInFlightMax: 2,
    /**
     * File media (and restores, for the pool) start a background fdatasync after the first
     * syncBehindFirstBytes written, then after twice as much, … up to every syncBehindBytes (see WriteBehind).
     */
    syncBehindFirstBytes: 4 * MiB,
    syncBehindBytes: 64 * MiB,
    /** File media are read in chunks of this size, into a ring of reused buffers (SequentialFileReader); at least writeChunkBytes (see above). */
    readChunkBytes: 1 * MiB,
    /** Smallest cartridge: the 128-byte label plus room for data; tests use small ones to make many. */
    cartridgeBytesMin: 4 * KiB,
    /** Cartridges per backup: the file suffix has four digits at least; beyond it names just grow. */
    cartridgesMax: 999_999,
  },
} as const;
