/**
 * The metadata schema and its migrations. The schema version lives in SQLite's user_version;
 * each migration moves it up by one inside a transaction, so a crash mid-migration leaves the
 * old version intact.
 */

export const MIGRATIONS: readonly string[] = [
  // 1: pool, disks, allocation bitmaps, volumes, allocation maps.
  `
  CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) STRICT;

  CREATE TABLE disks (
    id            INTEGER PRIMARY KEY,
    path          TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL CHECK (kind IN ('file', 'block')),
    size_bytes    INTEGER NOT NULL,
    -- Global number of this disk's first physical extent; physical extents are numbered across
    -- disks so that one uint32 names any extent of the pool.
    first_extent  INTEGER NOT NULL,
    extent_count  INTEGER NOT NULL,
    added_at      TEXT NOT NULL
  ) STRICT;

  -- Which physical extents are in use, as bitmap pages of LIMITS.bitmapBitsPerPage bits.
  -- A page that is absent is all clear.
  CREATE TABLE disk_bitmap_pages (
    disk_id     INTEGER NOT NULL REFERENCES disks(id),
    page_index  INTEGER NOT NULL,
    bits        BLOB NOT NULL,
    PRIMARY KEY (disk_id, page_index)
  ) STRICT, WITHOUT ROWID;

  CREATE TABLE volumes (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    uuid            TEXT NOT NULL UNIQUE,
    capacity_bytes  INTEGER NOT NULL,
    attr            TEXT NOT NULL DEFAULT 'user' CHECK (attr IN ('user', 'work')),
    read_only       INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'ready',
    created_at      TEXT NOT NULL
  ) STRICT;

  -- Allocation maps: LIMITS.mapEntriesPerPage little-endian uint32 entries per page; an entry is
  -- (global physical extent + 1), 0 meaning unmapped. A page that is absent is all unmapped, so
  -- the store grows with mapped extents, not with capacity.
  CREATE TABLE map_pages (
    volume_id   INTEGER NOT NULL REFERENCES volumes(id),
    page_index  INTEGER NOT NULL,
    entries     BLOB NOT NULL,
    PRIMARY KEY (volume_id, page_index)
  ) STRICT, WITHOUT ROWID;
  `,
  // 2: jobs — long operations with progress, cancel, and resumption after a restart.
  `
  CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    description  TEXT NOT NULL,
    params       TEXT NOT NULL,   -- JSON, as the job was started
    checkpoint   TEXT,            -- JSON, the handler's resumable state (null before the first)
    progress     TEXT NOT NULL,   -- JSON: doneBytes, totalBytes
    result       TEXT,            -- JSON, on success
    error        TEXT,            -- JSON {code, message}, on failure
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT
  ) STRICT;
  CREATE INDEX jobs_by_state ON jobs(state);
  `,
  // 3: point-in-time copies and their extent lists (the seed's correspondence table).
  `
  CREATE TABLE copies (
    id                     INTEGER PRIMARY KEY,
    source_volume_id       INTEGER NOT NULL REFERENCES volumes(id),
    target_volume_id       INTEGER NOT NULL REFERENCES volumes(id),
    mode                   TEXT NOT NULL CHECK (mode IN ('instant', 'compact')),
    state                  TEXT NOT NULL CHECK (state IN ('copying', 'complete', 'failed')),
    extent_bytes           INTEGER NOT NULL,
    source_capacity_bytes  INTEGER NOT NULL,
    source_name            TEXT NOT NULL,
    source_uuid            TEXT NOT NULL,
    extent_count           INTEGER NOT NULL,   -- source extents mapped at the point in time
    metadata_extents       INTEGER NOT NULL,   -- compact: extents of the self-describing header
    job_id                 TEXT,
    point_in_time          TEXT NOT NULL,
    finished_at            TEXT
  ) STRICT;

  -- The source's logical extents mapped at the point in time, ascending, as pages of
  -- little-endian float64 (exact integers up to 2^53). Entry i is copied to target extent
  -- i + metadata_extents (compact) or to the same logical extent (instant).
  CREATE TABLE copy_extent_pages (
    copy_id     INTEGER NOT NULL REFERENCES copies(id),
    page_index  INTEGER NOT NULL,
    entries     BLOB NOT NULL,
    PRIMARY KEY (copy_id, page_index)
  ) STRICT, WITHOUT ROWID;
  `,
  // 4: the backup catalog (seed 003: management information kept in the array with each backup).
  `
  CREATE TABLE backups (
    id              TEXT PRIMARY KEY,      -- bk-000001
    number          INTEGER NOT NULL UNIQUE,
    volume_name     TEXT NOT NULL,
    volume_uuid     TEXT NOT NULL,
    point_in_time   TEXT NOT NULL,
    method          TEXT NOT NULL,         -- compact (the array's compact copy of the volume)
    kind            TEXT NOT NULL CHECK (kind IN ('full', 'incremental')),
    parent_id       TEXT,
    generation      INTEGER NOT NULL,      -- 1 for a volume's first backup, then 2, 3, …
    medium          TEXT NOT NULL,         -- file:/…, dir:/…
    state           TEXT NOT NULL CHECK (state IN ('running', 'complete', 'failed')),
    stream_bytes    INTEGER NOT NULL DEFAULT 0,
    data_bytes      INTEGER NOT NULL DEFAULT 0,
    extents         INTEGER NOT NULL DEFAULT 0,
    capacity_bytes  INTEGER NOT NULL,
    extent_bytes    INTEGER NOT NULL,
    digest          TEXT,
    labels          TEXT NOT NULL,         -- JSON array of strings
    description     TEXT NOT NULL,
    job_id          TEXT,
    copied_from     TEXT,
    error           TEXT,
    created_at      TEXT NOT NULL,
    finished_at     TEXT
  ) STRICT;
  CREATE INDEX backups_by_volume ON backups(volume_name, number);
  `,
  // 5: change tracking for incremental backups (src/volume/change-tracker.ts). Slot 'current':
  // extents changed since the last backup's point in time; slot 'held': those a running
  // incremental backup is streaming. Pages of LIMITS.bitmapBitsPerPage bits; absent = all clear.
  `
  CREATE TABLE change_pages (
    volume_id   INTEGER NOT NULL REFERENCES volumes(id),
    slot        TEXT NOT NULL CHECK (slot IN ('current', 'held')),
    page_index  INTEGER NOT NULL,
    bits        BLOB NOT NULL,
    PRIMARY KEY (volume_id, slot, page_index)
  ) STRICT, WITHOUT ROWID;
  `,
  // 6: a copy's extent list is written after its setup, in chunks (the source does not wait for
  // it); a copy whose list never completed (crash) is abandoned at the next start.
  `
  ALTER TABLE copies ADD COLUMN list_complete INTEGER NOT NULL DEFAULT 1;
  `,
];
