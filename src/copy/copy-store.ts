/** SQL for copies and their extent lists (tables in src/meta/schema.ts, migration 3). */
import type { MetaStore } from '../meta/store.js';

export type CopyMode = 'instant' | 'compact';
export type CopyState = 'copying' | 'complete' | 'failed';

export interface CopyRow {
  id: number;
  sourceVolumeId: number;
  targetVolumeId: number;
  mode: CopyMode;
  state: CopyState;
  extentBytes: number;
  sourceCapacityBytes: number;
  sourceName: string;
  sourceUuid: string;
  extentCount: number;
  metadataExtents: number;
  jobId: string | null;
  pointInTime: string;
  finishedAt: string | null;
  /** 0 while the extent list is still being written (after setup, in chunks). */
  listComplete: number;
}

/** Entries per stored page of the extent list (8 bytes each: 32 KiB blobs). */
export const EXTENT_LIST_PAGE_ENTRIES = 4096;

const COLUMNS = `id, source_volume_id AS sourceVolumeId, target_volume_id AS targetVolumeId, mode, state,
  extent_bytes AS extentBytes, source_capacity_bytes AS sourceCapacityBytes, source_name AS sourceName,
  source_uuid AS sourceUuid, extent_count AS extentCount, metadata_extents AS metadataExtents,
  job_id AS jobId, point_in_time AS pointInTime, finished_at AS finishedAt, list_complete AS listComplete`;

export class CopyStore {
  readonly #statements;

  constructor(store: MetaStore) {
    this.#statements = {
      list: store.prepare<[], CopyRow>(`SELECT ${COLUMNS} FROM copies ORDER BY id`),
      insert: store.prepare(`INSERT INTO copies (source_volume_id, target_volume_id, mode, state, extent_bytes, source_capacity_bytes,
        source_name, source_uuid, extent_count, metadata_extents, job_id, point_in_time, list_complete) VALUES (?, ?, ?, 'copying', ?, ?, ?, ?, ?, ?, NULL, ?, 0)`),
      listComplete: store.prepare('UPDATE copies SET list_complete = 1 WHERE id = ?'),
      putPage: store.prepare('INSERT INTO copy_extent_pages (copy_id, page_index, entries) VALUES (?, ?, ?)'),
      pages: store.prepare<[number], { pageIndex: number; blob: Buffer }>('SELECT page_index AS pageIndex, entries AS blob FROM copy_extent_pages WHERE copy_id = ? ORDER BY page_index'),
      setJob: store.prepare('UPDATE copies SET job_id = ? WHERE id = ?'),
      finish: store.prepare('UPDATE copies SET state = ?, finished_at = ? WHERE id = ?'),
      deletePages: store.prepare('DELETE FROM copy_extent_pages WHERE copy_id = ?'),
      forgetVolume: store.prepare('DELETE FROM copies WHERE source_volume_id = ? OR target_volume_id = ?'),
    };
  }

  list(): CopyRow[] {
    return this.#statements.list.all();
  }

  /** Inserts the copy, its list not written yet; call inside the transaction that creates the target. */
  insert(row: Omit<CopyRow, 'id' | 'state' | 'jobId' | 'finishedAt' | 'listComplete'>): number {
    const result = this.#statements.insert.run(row.sourceVolumeId, row.targetVolumeId, row.mode, row.extentBytes, row.sourceCapacityBytes,
      row.sourceName, row.sourceUuid, row.extentCount, row.metadataExtents, row.pointInTime);
    return Number(result.lastInsertRowid);
  }

  /** Writes pages [firstPage, endPage) of the extent list (one transaction per call, by the caller). */
  putListPages(copyId: number, sourceExtents: Float64Array, firstPage: number, endPage: number): void {
    for (let page = firstPage; page < endPage && page * EXTENT_LIST_PAGE_ENTRIES < sourceExtents.length; page++) {
      const entries = sourceExtents.subarray(page * EXTENT_LIST_PAGE_ENTRIES, (page + 1) * EXTENT_LIST_PAGE_ENTRIES);
      this.#statements.putPage.run(copyId, page, Buffer.from(entries.buffer, entries.byteOffset, entries.byteLength));
    }
  }

  markListComplete(copyId: number): void {
    this.#statements.listComplete.run(copyId);
  }

  sourceExtents(copyId: number, extentCount: number): Float64Array {
    const list = new Float64Array(extentCount);
    for (const { pageIndex, blob } of this.#statements.pages.all(copyId)) {
      const entries = new Float64Array(blob.buffer.slice(blob.byteOffset, blob.byteOffset + blob.byteLength));
      list.set(entries, pageIndex * EXTENT_LIST_PAGE_ENTRIES);
    }
    return list;
  }

  setJob(copyId: number, jobId: string): void {
    this.#statements.setJob.run(jobId, copyId);
  }

  /** Ends a copy; its extent list stays (it is the compact copy's correspondence table). */
  finish(copyId: number, state: CopyState): void {
    this.#statements.finish.run(state, new Date().toISOString(), copyId);
  }

  /** A volume is deleted: copies that name it go too (run in the delete's transaction). */
  forgetVolume(volumeId: number): void {
    for (const row of this.list().filter((copy) => copy.sourceVolumeId === volumeId || copy.targetVolumeId === volumeId)) {
      this.#statements.deletePages.run(row.id);
    }
    this.#statements.forgetVolume.run(volumeId, volumeId);
  }
}
