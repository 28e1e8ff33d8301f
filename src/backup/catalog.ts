/**
 * The backup catalog (seed 003): one entry per backup, kept in the array's own metadata — what
 * was backed up, when, how, where it went, how big it is and its digest, with the requester's
 * labels and free text. SQL for the `backups` table (src/meta/schema.ts, migration 4).
 */
import type { MetaStore } from '../meta/store.js';

export type BackupState = 'running' | 'complete' | 'failed';

export interface BackupEntry {
  id: string;
  number: number;
  volumeName: string;
  volumeUuid: string;
  pointInTime: string;
  method: string;
  kind: 'full' | 'incremental';
  parentId: string | null;
  generation: number;
  medium: string;
  state: BackupState;
  streamBytes: number;
  dataBytes: number;
  extents: number;
  capacityBytes: number;
  extentBytes: number;
  digest: string | null;
  labels: string[];
  description: string;
  jobId: string | null;
  copiedFrom: string | null;
  error: string | null;
  createdAt: string;
  finishedAt: string | null;
}

interface Row extends Omit<BackupEntry, 'labels'> {
  labels: string;
}

const COLUMNS = `id, number, volume_name AS volumeName, volume_uuid AS volumeUuid, point_in_time AS pointInTime, method, kind,
  parent_id AS parentId, generation, medium, state, stream_bytes AS streamBytes, data_bytes AS dataBytes, extents,
  capacity_bytes AS capacityBytes, extent_bytes AS extentBytes, digest, labels, description, job_id AS jobId,
  copied_from AS copiedFrom, error, created_at AS createdAt, finished_at AS finishedAt`;

export class BackupCatalog {
  readonly #store: MetaStore;
  readonly #statements;

  constructor(store: MetaStore) {
    this.#store = store;
    this.#statements = {
      all: store.prepare<[], Row>(`SELECT ${COLUMNS} FROM backups ORDER BY number`),
      one: store.prepare<[string], Row>(`SELECT ${COLUMNS} FROM backups WHERE id = ?`),
      liveOnMedium: store.prepare<[string], Row>(`SELECT ${COLUMNS} FROM backups WHERE medium = ? AND state != 'failed' ORDER BY number`),
      lastNumber: store.prepare<[], { n: number | null }>('SELECT MAX(number) AS n FROM backups'),
      lastGeneration: store.prepare<[string], { g: number | null }>("SELECT MAX(generation) AS g FROM backups WHERE volume_uuid = ? AND state = 'complete'"),
      insert: store.prepare(`INSERT INTO backups (id, number, volume_name, volume_uuid, point_in_time, method, kind, parent_id, generation, medium,
        state, capacity_bytes, extent_bytes, labels, description, copied_from, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)`),
      setJob: store.prepare('UPDATE backups SET job_id = ? WHERE id = ?'),
      complete: store.prepare(`UPDATE backups SET state = 'complete', stream_bytes = ?, data_bytes = ?, extents = ?, digest = ?, point_in_time = ?, finished_at = ? WHERE id = ?`),
      fail: store.prepare(`UPDATE backups SET state = 'failed', error = ?, finished_at = ? WHERE id = ?`),
      remove: store.prepare('DELETE FROM backups WHERE id = ?'),
      repointCopies: store.prepare('UPDATE backups SET copied_from = ? WHERE copied_from = ?'),
    };
  }

  list(): BackupEntry[] {
    return this.#statements.all.all().map(toEntry);
  }

  /** The entries, running or complete, that name `medium` (as formatMedium writes it). */
  liveOnMedium(medium: string): BackupEntry[] {
    return this.#statements.liveOnMedium.all(medium).map(toEntry);
  }

  get(id: string): BackupEntry | undefined {
    const row = this.#statements.one.get(id);
    return row ? toEntry(row) : undefined;
  }

  nextNumber(): number {
    return (this.#statements.lastNumber.get()?.n ?? 0) + 1;
  }

  nextGeneration(volumeUuid: string): number {
    return (this.#statements.lastGeneration.get(volumeUuid)?.g ?? 0) + 1;
  }

  insert(entry: Pick<BackupEntry, 'id' | 'number' | 'volumeName' | 'volumeUuid' | 'pointInTime' | 'method' | 'kind' | 'parentId' | 'generation' | 'medium' | 'capacityBytes' | 'extentBytes' | 'labels' | 'description' | 'copiedFrom' | 'createdAt'>): void {
    this.#statements.insert.run(entry.id, entry.number, entry.volumeName, entry.volumeUuid, entry.pointInTime, entry.method, entry.kind, entry.parentId,
      entry.generation, entry.medium, entry.capacityBytes, entry.extentBytes, JSON.stringify(entry.labels), entry.description, entry.copiedFrom, entry.createdAt);
  }

  setJob(id: string, jobId: string): void {
    this.#statements.setJob.run(jobId, id);
  }

  complete(id: string, result: { streamBytes: number; dataBytes: number; extents: number; digest: string; pointInTime: string }): void {
    this.#statements.complete.run(result.streamBytes, result.dataBytes, result.extents, result.digest, result.pointInTime, new Date().toISOString(), id);
  }

  fail(id: string, message: string): void {
    this.#statements.fail.run(message, new Date().toISOString(), id);
  }

  /**
   * Removes an entry. `streamId`: the backup whose stream it holds; copies that named this entry
   * as their source name that one instead, in the same transaction (catalogs from before copies
   * named the original stream), so they still find their cartridges.
   */
  remove(id: string, streamId: string = id): void {
    this.#store.transaction(() => {
      if (streamId !== id) this.#statements.repointCopies.run(streamId, id);
      this.#statements.remove.run(id);
    });
  }
}

function toEntry(row: Row): BackupEntry {
  return { ...row, labels: JSON.parse(row.labels) as string[] };
}
