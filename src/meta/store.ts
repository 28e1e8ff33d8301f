/**
 * The metadata store: SQLite through better-sqlite3 in WAL mode with synchronous=FULL, so a
 * committed transaction survives power loss and a crash at any moment leaves the last committed
 * state. Every statement the array runs lives here; layers above call named methods.
 */
import Database from 'better-sqlite3';
import { MIGRATIONS } from './schema.js';
import { ThinError } from '../lib/errors.js';
import { assert } from '../lib/assert.js';

export interface DiskRow {
  id: number;
  path: string;
  kind: 'file' | 'block';
  sizeBytes: number;
  firstExtent: number;
  extentCount: number;
  addedAt: string;
}

export interface VolumeRow {
  id: number;
  name: string;
  uuid: string;
  capacityBytes: number;
  attr: 'user' | 'work';
  readOnly: boolean;
  state: string;
  createdAt: string;
}

export interface PageRow {
  pageIndex: number;
  blob: Buffer;
}

export class MetaStore {
  readonly path: string;
  readonly #db: Database.Database;
  readonly #statements;

  constructor(path: string) {
    this.path = path;
    try {
      this.#db = new Database(path);
    } catch (error) {
      throw new ThinError('IO_ERROR', `cannot open metadata store ${path}: ${(error as Error).message}`, { cause: error });
    }
    this.#db.pragma('journal_mode = WAL');
    // FULL: every commit is fsync'ed; the array commits in groups, so the cost is shared.
    this.#db.pragma('synchronous = FULL');
    this.#db.pragma('foreign_keys = ON');
    this.#migrate();
    const db = this.#db;
    this.#statements = {
      getSetting: db.prepare<[string], { value: string }>('SELECT value FROM settings WHERE key = ?'),
      putSetting: db.prepare('INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value'),
      listDisks: db.prepare('SELECT id, path, kind, size_bytes AS sizeBytes, first_extent AS firstExtent, extent_count AS extentCount, added_at AS addedAt FROM disks ORDER BY id'),
      insertDisk: db.prepare('INSERT INTO disks (path, kind, size_bytes, first_extent, extent_count, added_at) VALUES (?, ?, ?, ?, ?, ?)'),
      bitmapPages: db.prepare<[number], { pageIndex: number; blob: Buffer }>('SELECT page_index AS pageIndex, bits AS blob FROM disk_bitmap_pages WHERE disk_id = ? ORDER BY page_index'),
      putBitmapPage: db.prepare('INSERT INTO disk_bitmap_pages (disk_id, page_index, bits) VALUES (?, ?, ?) ON CONFLICT(disk_id, page_index) DO UPDATE SET bits = excluded.bits'),
      deleteBitmapPage: db.prepare('DELETE FROM disk_bitmap_pages WHERE disk_id = ? AND page_index = ?'),
      listVolumes: db.prepare('SELECT id, name, uuid, capacity_bytes AS capacityBytes, attr, read_only AS readOnly, state, created_at AS createdAt FROM volumes ORDER BY name'),
      insertVolume: db.prepare('INSERT INTO volumes (name, uuid, capacity_bytes, attr, read_only, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      updateVolume: db.prepare('UPDATE volumes SET capacity_bytes = ?, attr = ?, read_only = ?, state = ? WHERE id = ?'),
      deleteVolume: db.prepare('DELETE FROM volumes WHERE id = ?'),
      deleteVolumePages: db.prepare('DELETE FROM map_pages WHERE volume_id = ?'),
      changePages: db.prepare<[number, string], { pageIndex: number; blob: Buffer }>('SELECT page_index AS pageIndex, bits AS blob FROM change_pages WHERE volume_id = ? AND slot = ? ORDER BY page_index'),
      putChangePage: db.prepare('INSERT INTO change_pages (volume_id, slot, page_index, bits) VALUES (?, ?, ?, ?) ON CONFLICT(volume_id, slot, page_index) DO UPDATE SET bits = excluded.bits'),
      deleteChangePage: db.prepare('DELETE FROM change_pages WHERE volume_id = ? AND slot = ? AND page_index = ?'),
      deleteChangeSlot: db.prepare('DELETE FROM change_pages WHERE volume_id = ? AND slot = ?'),
      deleteVolumeChanges: db.prepare('DELETE FROM change_pages WHERE volume_id = ?'),
      mapPages: db.prepare<[number], { pageIndex: number; blob: Buffer }>('SELECT page_index AS pageIndex, entries AS blob FROM map_pages WHERE volume_id = ? ORDER BY page_index'),
      putMapPage: db.prepare('INSERT INTO map_pages (volume_id, page_index, entries) VALUES (?, ?, ?) ON CONFLICT(volume_id, page_index) DO UPDATE SET entries = excluded.entries'),
      deleteMapPage: db.prepare('DELETE FROM map_pages WHERE volume_id = ? AND page_index = ?'),
    };
  }

  #migrate(): void {
    const version = this.#db.pragma('user_version', { simple: true }) as number;
    if (version > MIGRATIONS.length) {
      throw new ThinError('UNSUPPORTED', `metadata store ${this.path} has schema version ${version}, newer than this thinarray (${MIGRATIONS.length}); upgrade thinarray`);
    }
    for (let next = version; next < MIGRATIONS.length; next++) {
      this.#db.transaction(() => {
        this.#db.exec(MIGRATIONS[next]!);
        this.#db.pragma(`user_version = ${next + 1}`);
      })();
    }
  }

  /**
   * A prepared statement for a table another layer owns (jobs, later backups): its SQL stays in
   * that layer's store file, the schema stays in schema.ts.
   */
  prepare<Params extends unknown[] = unknown[], Row = unknown>(sql: string): Database.Statement<Params, Row> {
    return this.#db.prepare<Params, Row>(sql);
  }

  /**
   * A transaction that is atomic but not fsync'ed on its own (synchronous=NORMAL for it): in WAL
   * mode it becomes durable with the next FULL commit, which fsyncs the log it follows. For bulk
   * writes whose durability is only claimed by a later ordinary transaction (a copy's extent list,
   * completed by the transaction that marks it complete), so they do not stall the event loop on
   * an fsync each.
   */
  lazyTransaction<T>(work: () => T): T {
    this.#db.pragma('synchronous = NORMAL');
    try {
      return this.#db.transaction(work)();
    } finally {
      this.#db.pragma('synchronous = FULL');
    }
  }

  /** Runs `work` in one transaction: all of it is committed (and fsync'ed) or none of it. */
  transaction<T>(work: () => T): T {
    return this.#db.transaction(work)();
  }

  getSetting(key: string): string | undefined {
    return this.#statements.getSetting.get(key)?.value;
  }

  putSetting(key: string, value: string): void {
    this.#statements.putSetting.run(key, value);
  }

  listDisks(): DiskRow[] {
    return this.#statements.listDisks.all() as DiskRow[];
  }

  insertDisk(disk: Omit<DiskRow, 'id'>): number {
    const result = this.#statements.insertDisk.run(disk.path, disk.kind, disk.sizeBytes, disk.firstExtent, disk.extentCount, disk.addedAt);
    return Number(result.lastInsertRowid);
  }

  bitmapPages(diskId: number): PageRow[] {
    return this.#statements.bitmapPages.all(diskId);
  }

  /** Writes a bitmap page; a null blob (all clear) deletes it. */
  putBitmapPage(diskId: number, pageIndex: number, blob: Buffer | null): void {
    if (blob === null) this.#statements.deleteBitmapPage.run(diskId, pageIndex);
    else this.#statements.putBitmapPage.run(diskId, pageIndex, blob);
  }

  listVolumes(): VolumeRow[] {
    const rows = this.#statements.listVolumes.all() as Array<Omit<VolumeRow, 'readOnly'> & { readOnly: number }>;
    return rows.map((row) => ({ ...row, readOnly: row.readOnly !== 0 }));
  }

  insertVolume(volume: Omit<VolumeRow, 'id'>): number {
    const result = this.#statements.insertVolume.run(volume.name, volume.uuid, volume.capacityBytes, volume.attr, volume.readOnly ? 1 : 0, volume.state, volume.createdAt);
    return Number(result.lastInsertRowid);
  }

  updateVolume(volume: VolumeRow): void {
    const result = this.#statements.updateVolume.run(volume.capacityBytes, volume.attr, volume.readOnly ? 1 : 0, volume.state, volume.id);
    assert(result.changes === 1, `volume ${volume.id} must exist to be updated`);
  }

  deleteVolume(volumeId: number): void {
    this.#statements.deleteVolumeChanges.run(volumeId);
    this.#statements.deleteVolumePages.run(volumeId);
    this.#statements.deleteVolume.run(volumeId);
  }

  mapPages(volumeId: number): PageRow[] {
    return this.#statements.mapPages.all(volumeId);
  }

  /** Writes a map page; a null blob (all unmapped) deletes it. */
  putMapPage(volumeId: number, pageIndex: number, blob: Buffer | null): void {
    if (blob === null) this.#statements.deleteMapPage.run(volumeId, pageIndex);
    else this.#statements.putMapPage.run(volumeId, pageIndex, blob);
  }

  changePages(volumeId: number, slot: 'current' | 'held'): PageRow[] {
    return this.#statements.changePages.all(volumeId, slot);
  }

  /** Writes a change-tracking page; a null blob deletes it. */
  putChangePage(volumeId: number, slot: 'current' | 'held', pageIndex: number, blob: Buffer | null): void {
    if (blob === null) this.#statements.deleteChangePage.run(volumeId, slot, pageIndex);
    else this.#statements.putChangePage.run(volumeId, slot, pageIndex, blob);
  }

  clearChangeSlot(volumeId: number, slot: 'current' | 'held'): void {
    this.#statements.deleteChangeSlot.run(volumeId, slot);
  }

  close(): void {
    if (this.#db.open) this.#db.close();
  }
}
