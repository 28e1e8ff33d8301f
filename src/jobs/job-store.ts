/**
 * The jobs table (schema: migration 2 in src/meta/schema.ts): every statement the jobs layer
 * runs, through MetaStore.prepare. Values that are JSON in the table (params, checkpoint,
 * progress, result, error) are stored as the text the manager already serialised.
 */
import type Database from 'better-sqlite3';
import { assert } from '../lib/assert.js';
import type { MetaStore } from '../meta/store.js';

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export const FINISHED_STATES: readonly JobState[] = ['succeeded', 'failed', 'cancelled'];

export function isFinished(state: JobState): boolean {
  return FINISHED_STATES.includes(state);
}

/** One row as stored; JSON columns stay text here. */
export interface JobRow {
  id: string;
  kind: string;
  state: JobState;
  description: string;
  paramsJson: string;
  checkpointJson: string | null;
  progressJson: string;
  resultJson: string | null;
  errorJson: string | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
}

/** The columns that change while a job lives. */
export type JobRowUpdate = Pick<JobRow, 'id' | 'state' | 'checkpointJson' | 'progressJson' | 'resultJson' | 'errorJson' | 'startedAt' | 'finishedAt'>;

const COLUMNS =
  'id, kind, state, description, params AS paramsJson, checkpoint AS checkpointJson, progress AS progressJson, ' +
  'result AS resultJson, error AS errorJson, created_at AS createdAt, started_at AS startedAt, finished_at AS finishedAt';

/** Where the next job number is kept: monotonic even when old rows are pruned. */
const NEXT_NUMBER_SETTING = 'jobs.nextNumber';

export class JobStore {
  readonly #store: MetaStore;
  readonly #statements: {
    insert: Database.Statement<[string, string, string, string, string, string, string]>;
    update: Database.Statement<[string, string | null, string, string | null, string | null, string | null, string | null, string]>;
    get: Database.Statement<[string], JobRow>;
    // rowid order is insertion order; ids compare as text only up to job-999999.
    list: Database.Statement<[], JobRow>;
    listActive: Database.Statement<[], JobRow>;
    prune: Database.Statement<[number]>;
    maxNumber: Database.Statement<[], { number: number | null }>;
  };

  constructor(store: MetaStore) {
    this.#store = store;
    this.#statements = {
      insert: store.prepare('INSERT INTO jobs (id, kind, state, description, params, progress, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      update: store.prepare('UPDATE jobs SET state = ?, checkpoint = ?, progress = ?, result = ?, error = ?, started_at = ?, finished_at = ? WHERE id = ?'),
      get: store.prepare(`SELECT ${COLUMNS} FROM jobs WHERE id = ?`),
      list: store.prepare(`SELECT ${COLUMNS} FROM jobs ORDER BY rowid DESC`),
      listActive: store.prepare(`SELECT ${COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY rowid`),
      prune: store.prepare(
        `DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND rowid NOT IN
           (SELECT rowid FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') ORDER BY rowid DESC LIMIT ?)`,
      ),
      // Rows written before the setting existed (or a lost setting) still keep numbers unique.
      maxNumber: store.prepare(`SELECT MAX(CAST(substr(id, 5) AS INTEGER)) AS number FROM jobs WHERE id LIKE 'job-%'`),
    };
  }

  /** Takes the next job number and inserts the row in one transaction. */
  insert(row: Pick<JobRow, 'kind' | 'state' | 'description' | 'paramsJson' | 'progressJson' | 'createdAt'>): string {
    return this.#store.transaction(() => {
      const stored = Number(this.#store.getSetting(NEXT_NUMBER_SETTING) ?? '1');
      const number = Math.max(stored, (this.#statements.maxNumber.get()?.number ?? 0) + 1);
      const id = formatJobId(number);
      this.#statements.insert.run(id, row.kind, row.state, row.description, row.paramsJson, row.progressJson, row.createdAt);
      this.#store.putSetting(NEXT_NUMBER_SETTING, String(number + 1));
      return id;
    });
  }

  /**
   * `durable: false` for the periodic progress rows: committed atomically but not fsync'ed on
   * their own (MetaStore.lazyTransaction); they become durable with the next ordinary
   * transaction, and one lost to a power cut leaves the row at its previous progress and
   * checkpoint, from which a resumed job redoes a little more. A kill -9 loses none of them.
   */
  update(row: JobRowUpdate, { durable = true }: { durable?: boolean } = {}): void {
    const write = (): Database.RunResult =>
      this.#statements.update.run(row.state, row.checkpointJson, row.progressJson, row.resultJson, row.errorJson, row.startedAt, row.finishedAt, row.id);
    const result = durable ? this.#store.transaction(write) : this.#store.lazyTransaction(write);
    assert(result.changes === 1, `job ${row.id} must exist to be updated`);
  }

  get(id: string): JobRow | undefined {
    return this.#statements.get.get(id);
  }

  /** Newest first. */
  list(): JobRow[] {
    return this.#statements.list.all();
  }

  /** Jobs a previous daemon left queued or running, oldest first. */
  listActive(): JobRow[] {
    return this.#statements.listActive.all();
  }

  /** Deletes finished jobs beyond the newest `keepCount`; returns how many went. */
  pruneFinished(keepCount: number): number {
    return this.#store.transaction(() => this.#statements.prune.run(keepCount).changes);
  }
}

/** "job-000042": short, readable, sortable up to a million jobs (then simply longer). */
export function formatJobId(number: number): string {
  return `job-${String(number).padStart(6, '0')}`;
}
