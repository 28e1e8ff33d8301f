/**
 * Runs every long operation (copy, backup, restore, resync, verify) as a job inside the daemon:
 * persisted before it starts, progress with a moving-window rate and ETA, cancel through an
 * AbortSignal, and resumption from the handler's last checkpoint after a restart or a crash.
 * Kinds are registered by the layers that own the work; this file knows none of them.
 */
import { assert, assertSafeInteger } from '../lib/assert.js';
import { isThinError, messageOf, ThinError } from '../lib/errors.js';
import { LIMITS } from '../lib/limits.js';
import type { Logger } from '../lib/log.js';
import { formatBytes } from '../lib/sizes.js';
import type { MetaStore } from '../meta/store.js';
import { isFinished, JobStore, type JobRow, type JobState } from './job-store.js';
import { etaSeconds, RateMeter } from './rate-meter.js';

export type { JobState } from './job-store.js';

export interface JobProgress {
  doneBytes: number;
  totalBytes: number;
  rateBytesPerSec: number;
  etaSeconds: number | null;
}

export interface JobError {
  /** A ThinError code of the handler, INTERNAL, INTERRUPTED (daemon stopped, kind cannot resume) or CANCELLED. */
  code: string;
  message: string;
}

export interface JobInfo {
  id: string;
  kind: string;
  state: JobState;
  description: string;
  params: unknown;
  progress: JobProgress;
  result?: unknown;
  error?: JobError;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  /** Set while a cancelled job is still running: its handler has been told and is winding down. */
  cancelling?: boolean;
}

export interface JobContext {
  readonly id: string;
  /** Aborted on cancel or daemon shutdown; handlers check it between units of work. */
  readonly signal: AbortSignal;
  /** What the handler last saved, when resuming after a restart; undefined on a first run. */
  readonly checkpoint: unknown | undefined;
  setTotal(bytes: number): void;
  addDone(bytes: number): void;
  /**
   * Remembers a resumable state (JSON) together with the bytes done so far; written at most
   * every LIMITS.jobPersistIntervalMs and always at the end. Save only what is already durable
   * (the work it claims must survive a crash, e.g. after array.sync()), and call it after the
   * addDone() for that work: a resumed job starts at the doneBytes of its last saved checkpoint.
   */
  save(checkpoint: unknown): void;
  readonly logger: Logger;
}

export interface JobKind {
  name: string;
  /** True when run() can continue from ctx.checkpoint after a restart; false ends such jobs INTERRUPTED. */
  resumable: boolean;
  /** The result (JSON) ends in JobInfo.result. Throw a ThinError to fail with its code. */
  run(ctx: JobContext, params: unknown): Promise<unknown>;
  /**
   * Called once when a job of this kind ends in any state — also cancelled while still queued,
   * when run() never started — to release what was set aside for it when it was started.
   */
  finished?(params: unknown, info: JobInfo): void;
}

export interface JobManagerOptions {
  /** Tests shrink these; production uses LIMITS. */
  runningMax?: number;
  activeMax?: number;
  finishedKeptMax?: number;
  persistIntervalMs?: number;
  closeGraceMs?: number;
  nowMs?: () => number;
}

/** Why a job's signal was aborted. A handler that rethrows `signal.reason` throws one of these. */
export class JobAbortError extends Error {
  override name = 'JobAbortError';
  constructor(
    readonly why: 'cancel' | 'shutdown' | 'fault',
    message: string,
    /** For 'fault': the failure the job ends with. */
    readonly fault?: ThinError,
  ) {
    super(message);
  }
}

/** Progress as stored: checkpointDoneBytes is where a resumed job starts. */
interface StoredProgress {
  doneBytes: number;
  totalBytes: number;
  checkpointDoneBytes?: number;
}

type Outcome =
  | { state: 'succeeded'; resultJson: string | null }
  | { state: 'failed' | 'cancelled'; error: JobError }
  | { state: 'interrupted' };

interface Waiter {
  resolve(info: JobInfo): void;
}

/** A queued or running job: lives in memory until it finishes; the row mirrors it. */
interface ActiveJob {
  // Set at creation, never changed.
  readonly id: string;
  readonly kind: JobKind;
  readonly description: string;
  readonly paramsJson: string;
  readonly params: unknown;
  readonly createdAt: string;
  readonly controller: AbortController;
  readonly logger: Logger;
  /** The checkpoint it was resumed with (undefined on a first run). */
  readonly resumeCheckpoint: unknown | undefined;
  readonly waiters: Set<Waiter>;

  // Changes during the run.
  state: 'queued' | 'running';
  startedAt: string | undefined;
  doneBytes: number;
  totalBytes: number;
  meter: RateMeter;
  /** The handler's latest checkpoint and the doneBytes when it was saved; serialised at persist. */
  pendingCheckpoint: { value: unknown; doneBytes: number } | undefined;
  /** The last checkpoint written to the store (JSON) and its doneBytes. */
  checkpointJson: string | null;
  checkpointDoneBytes: number | undefined;
  /** Something changed since the row was last written. */
  dirty: boolean;
  cancelling: boolean;
  /** The handler's run, from launch until the outcome is recorded. */
  running: Promise<void> | undefined;
}

export class JobManager {
  // Set at creation, never changed.
  readonly #store: JobStore;
  readonly #logger: Logger;
  readonly #kinds = new Map<string, JobKind>();
  readonly #runningMax: number;
  readonly #activeMax: number;
  readonly #finishedKeptMax: number;
  readonly #closeGraceMs: number;
  readonly #nowMs: () => number;
  readonly #persistTimer: NodeJS.Timeout;

  // Changes during the daemon's life.
  readonly #active = new Map<string, ActiveJob>();
  /** Ids waiting for a run slot, oldest first. */
  readonly #queue: string[] = [];
  #resumed = false;
  #closing: Promise<void> | undefined;
  /** After close(): nothing may touch the store (it is closed next). */
  #closed = false;

  constructor(store: MetaStore, logger: Logger, options: JobManagerOptions = {}) {
    this.#store = new JobStore(store);
    this.#logger = logger;
    this.#runningMax = options.runningMax ?? LIMITS.jobsRunningMax;
    this.#activeMax = options.activeMax ?? LIMITS.jobsActiveMax;
    this.#finishedKeptMax = options.finishedKeptMax ?? LIMITS.jobsFinishedKeptMax;
    this.#closeGraceMs = options.closeGraceMs ?? LIMITS.jobCloseGraceMs;
    this.#nowMs = options.nowMs ?? Date.now;
    this.#persistTimer = setInterval(() => this.#persistDirty(), options.persistIntervalMs ?? LIMITS.jobPersistIntervalMs);
    this.#persistTimer.unref();
  }

  register(kind: JobKind): void {
    assert(typeof kind.name === 'string' && /^[a-z][a-z0-9-]*$/.test(kind.name), `job kind name ${JSON.stringify(kind.name)} must be lower-case words joined by '-'`);
    assert(!this.#kinds.has(kind.name), `job kind ${kind.name} registered twice`);
    this.#kinds.set(kind.name, kind);
  }

  /** Persists the job, then runs it (or queues it behind LIMITS.jobsRunningMax running jobs). */
  start(kindName: string, params: unknown, description: string): JobInfo {
    if (this.#closing) throw new ThinError('BUSY', 'the daemon is shutting down; no new jobs start');
    const kind = this.#kinds.get(kindName);
    if (!kind) throw new ThinError('INVALID_ARGUMENT', `kind: no job kind ${JSON.stringify(kindName)} in this daemon`, { field: 'kind' });
    if (this.#active.size >= this.#activeMax) {
      throw new ThinError('BUSY', `${this.#active.size} jobs are queued or running (at most ${this.#activeMax}); wait for some to finish`);
    }
    const paramsJson = toJson(params, 'params', LIMITS.jobParamsBytesMax) ?? 'null';
    const createdAt = new Date(this.#nowMs()).toISOString();
    const progress: StoredProgress = { doneBytes: 0, totalBytes: 0 };
    const row = { kind: kind.name, state: 'queued' as const, description: boundDescription(description), paramsJson, progressJson: JSON.stringify(progress), createdAt };
    const id = this.#store.insert(row);
    const job = this.#newActive({ ...row, id, checkpointJson: null, resultJson: null, errorJson: null, startedAt: null, finishedAt: null }, kind);
    this.#logger.info({ job: id, kind: kind.name, description: job.description }, 'job created');
    this.#enqueue(job);
    return this.#activeInfo(job);
  }

  /**
   * At daemon start, once every kind is registered: jobs a previous daemon left queued or
   * running continue from their checkpoint when their kind is resumable, and otherwise end
   * 'failed' with code INTERRUPTED. None is left behind looking alive.
   */
  resumeAll(): void {
    assert(!this.#resumed, 'resumeAll() runs once, at daemon start');
    this.#resumed = true;
    for (const row of this.#store.listActive()) {
      if (this.#active.has(row.id)) continue; // started by this daemon before resumeAll
      const kind = this.#kinds.get(row.kind);
      const refusal = kind === undefined ? `no job kind ${JSON.stringify(row.kind)} in this daemon` : kind.resumable ? undefined : `a ${row.kind} job cannot resume`;
      if (refusal !== undefined) {
        this.#failInterrupted(row, refusal);
        continue;
      }
      const job = this.#newActive(row, kind!);
      this.#logger.info({ job: row.id, kind: row.kind, doneBytes: job.doneBytes, hasCheckpoint: job.resumeCheckpoint !== undefined }, 'job resumed after restart');
      this.#enqueue(job);
    }
  }

  /** Every job kept, newest first. */
  list(): JobInfo[] {
    return this.#store.list().map((row) => {
      const job = this.#active.get(row.id);
      return job ? this.#activeInfo(job) : rowInfo(row);
    });
  }

  get(id: string): JobInfo {
    const job = typeof id === 'string' ? this.#active.get(id) : undefined;
    if (job) return this.#activeInfo(job);
    const row = typeof id === 'string' ? this.#store.get(id) : undefined;
    if (!row) throw new ThinError('NOT_FOUND', `no job ${JSON.stringify(id)}`, { field: 'id' });
    return rowInfo(row);
  }

  /**
   * A queued job ends 'cancelled' at once; a running one has its signal aborted and ends
   * 'cancelled' when its handler returns (the answer says `cancelling` meanwhile). A handler
   * that completes its work anyway ends 'succeeded': the result exists, so we say so.
   */
  cancel(id: string): JobInfo {
    const job = this.#active.get(id);
    if (!job) {
      const info = this.get(id);
      throw new ThinError('CONFLICT', `job ${info.id} has already ${info.state === 'cancelled' ? 'been cancelled' : info.state}; only a queued or running job can be cancelled`);
    }
    if (job.state === 'queued') {
      const queueIndex = this.#queue.indexOf(id);
      if (queueIndex >= 0) this.#queue.splice(queueIndex, 1); // absent once close() has emptied the queue
      this.#logger.info({ job: id }, 'queued job cancelled');
      return this.#finish(job, { state: 'cancelled', error: cancelledError(id) });
    }
    if (!job.cancelling) {
      job.cancelling = true;
      this.#logger.info({ job: id, doneBytes: job.doneBytes }, 'job cancel requested');
      job.controller.abort(new JobAbortError('cancel', `job ${id} was cancelled`));
    }
    return this.#activeInfo(job);
  }

  /** Resolves when the job finishes, at timeoutMs, or when `signal` aborts, with the info at that moment. */
  wait(id: string, timeoutMs: number, signal?: AbortSignal): Promise<JobInfo> {
    assertSafeInteger(timeoutMs, 'timeoutMs');
    const job = this.#active.get(id);
    if (!job || timeoutMs === 0 || signal?.aborted) {
      try {
        return Promise.resolve(this.get(id));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return new Promise((resolve) => {
      const done = (info: JobInfo): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        job.waiters.delete(waiter);
        resolve(info);
      };
      const waiter: Waiter = { resolve: done };
      const onAbort = (): void => done(this.#activeInfo(job));
      const timer = setTimeout(onAbort, timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      job.waiters.add(waiter);
    });
  }

  /**
   * Daemon shutdown: aborts running handlers (reason 'shutdown') and waits for them, up to
   * LIMITS.jobCloseGraceMs. Their rows stay 'running' with the last checkpoint so resumeAll()
   * picks them up at the next start; queued jobs stay queued.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    clearInterval(this.#persistTimer);
    this.#queue.length = 0;
    const runs: Promise<void>[] = [];
    for (const job of this.#active.values()) {
      for (const waiter of [...job.waiters]) waiter.resolve(this.#activeInfo(job));
      if (job.running === undefined) continue;
      job.controller.abort(new JobAbortError('shutdown', 'the daemon is shutting down'));
      runs.push(job.running);
    }
    let graceTimer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'timeout'>((resolve) => (graceTimer = setTimeout(resolve, this.#closeGraceMs, 'timeout')));
    const ended = await Promise.race([Promise.allSettled(runs), graceOver]);
    clearTimeout(graceTimer);
    if (ended === 'timeout') {
      const stuck = [...this.#active.values()].filter((job) => job.running !== undefined).map((job) => job.id);
      this.#logger.warn({ jobs: stuck, graceMs: this.#closeGraceMs }, 'jobs did not stop in time; they resume from their last checkpoint');
      for (const id of stuck) this.#persist(this.#active.get(id)!);
    }
    this.#closed = true;
  }

  // ---- running --------------------------------------------------------------------------------

  #newActive(row: JobRow, kind: JobKind): ActiveJob {
    const progress = JSON.parse(row.progressJson) as StoredProgress;
    const resumeCheckpoint = row.checkpointJson === null ? undefined : (JSON.parse(row.checkpointJson) as unknown);
    // A resumed job restarts where its checkpoint was saved; without one, from scratch.
    const doneBytes = resumeCheckpoint === undefined ? 0 : (progress.checkpointDoneBytes ?? 0);
    return {
      id: row.id,
      kind,
      description: row.description,
      paramsJson: row.paramsJson,
      // The handler sees the params as stored, so a first run and a resumed run see the same thing.
      params: JSON.parse(row.paramsJson) as unknown,
      createdAt: row.createdAt,
      controller: new AbortController(),
      logger: this.#logger.child({ job: row.id, kind: kind.name }),
      resumeCheckpoint,
      waiters: new Set(),
      state: 'queued',
      startedAt: row.startedAt ?? undefined,
      doneBytes,
      totalBytes: progress.totalBytes,
      meter: new RateMeter(LIMITS.jobRateWindowMs, this.#nowMs, doneBytes),
      pendingCheckpoint: undefined,
      checkpointJson: row.checkpointJson,
      checkpointDoneBytes: resumeCheckpoint === undefined ? undefined : doneBytes,
      dirty: false,
      cancelling: false,
      running: undefined,
    };
  }

  #enqueue(job: ActiveJob): void {
    this.#active.set(job.id, job);
    this.#queue.push(job.id);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#closing) return;
    let runningCount = [...this.#active.values()].filter((job) => job.state === 'running').length;
    while (runningCount < this.#runningMax && this.#queue.length > 0) {
      this.#launch(this.#active.get(this.#queue.shift()!)!);
      runningCount += 1;
    }
  }

  #launch(job: ActiveJob): void {
    job.state = 'running';
    job.startedAt ??= new Date(this.#nowMs()).toISOString();
    job.meter = new RateMeter(LIMITS.jobRateWindowMs, this.#nowMs, job.doneBytes);
    this.#persist(job);
    job.running = this.#run(job);
  }

  async #run(job: ActiveJob): Promise<void> {
    let outcome: Outcome;
    try {
      // Deferred a tick: start() returns before the handler's first synchronous step runs.
      const result = await Promise.resolve().then(() => job.kind.run(this.#context(job), job.params));
      outcome = { state: 'succeeded', resultJson: toJson(result, 'result', LIMITS.jobParamsBytesMax) };
    } catch (error) {
      outcome = this.#failure(job, error);
    }
    if (this.#closed) {
      job.logger.warn({ outcome: outcome.state }, 'job ended after the job manager closed; its row was left as it was');
      return;
    }
    if (outcome.state === 'interrupted') {
      this.#persist(job);
      job.logger.info({ doneBytes: job.doneBytes, totalBytes: job.totalBytes }, 'job stopped for shutdown; it resumes at the next start');
      return;
    }
    this.#finish(job, outcome);
    this.#schedule();
  }

  #failure(job: ActiveJob, error: unknown): Outcome {
    const reason = job.controller.signal.aborted ? (job.controller.signal.reason as unknown) : undefined;
    if (reason instanceof JobAbortError) {
      if (reason.why === 'cancel') return { state: 'cancelled', error: cancelledError(job.id) };
      if (reason.why === 'shutdown') return { state: 'interrupted' };
      return { state: 'failed', error: { code: reason.fault!.code, message: reason.fault!.message } };
    }
    if (isThinError(error)) return { state: 'failed', error: { code: error.code, message: error.message } };
    const detail = messageOf(error);
    job.logger.error({ err: error }, 'job failed with an unexpected error');
    return { state: 'failed', error: { code: 'INTERNAL', message: `unexpected error in the ${job.kind.name} job: ${detail} (details in the daemon log)` } };
  }

  #context(job: ActiveJob): JobContext {
    return {
      id: job.id,
      signal: job.controller.signal,
      checkpoint: job.resumeCheckpoint,
      logger: job.logger,
      setTotal: (bytes: number) => {
        assertSafeInteger(bytes, 'totalBytes');
        job.totalBytes = bytes;
        job.dirty = true;
      },
      addDone: (bytes: number) => {
        assertSafeInteger(bytes, 'doneBytes');
        job.doneBytes += bytes;
        job.meter.record(job.doneBytes);
        job.dirty = true;
      },
      save: (checkpoint: unknown) => {
        job.pendingCheckpoint = { value: checkpoint, doneBytes: job.doneBytes };
        job.dirty = true;
      },
    };
  }

  /** Records the outcome, tells the waiters, and prunes old finished jobs. */
  #finish(job: ActiveJob, outcome: Exclude<Outcome, { state: 'interrupted' }>): JobInfo {
    this.#active.delete(job.id);
    const finishedAt = new Date(this.#nowMs()).toISOString();
    const progress: StoredProgress = { doneBytes: job.doneBytes, totalBytes: job.totalBytes };
    const row: JobRow = {
      id: job.id,
      kind: job.kind.name,
      state: outcome.state,
      description: job.description,
      paramsJson: job.paramsJson,
      // A finished job never resumes; its checkpoint would only take space.
      checkpointJson: null,
      progressJson: JSON.stringify(progress),
      resultJson: outcome.state === 'succeeded' ? outcome.resultJson : null,
      errorJson: outcome.state === 'succeeded' ? null : JSON.stringify(outcome.error),
      createdAt: job.createdAt,
      startedAt: job.startedAt ?? null,
      finishedAt,
    };
    try {
      this.#store.update(row);
      this.#store.pruneFinished(this.#finishedKeptMax);
    } catch (error) {
      // The outcome is still told to waiters; the row shows the job as it was last written.
      job.logger.error({ err: error }, 'cannot record the end of a job');
    }
    const info = rowInfo(row);
    const level = outcome.state === 'succeeded' ? 'info' : 'warn';
    job.logger[level]({ state: outcome.state, doneBytes: job.doneBytes, ...(info.error ? { error: info.error } : {}) }, 'job finished');
    try {
      job.kind.finished?.(JSON.parse(job.paramsJson) as unknown, info);
    } catch (error) {
      job.logger.error({ err: error }, 'job end hook failed');
    }
    for (const waiter of [...job.waiters]) waiter.resolve(info);
    return info;
  }

  #failInterrupted(row: JobRow, refusal: string): void {
    const progress = JSON.parse(row.progressJson) as StoredProgress;
    const where = row.state === 'running' ? `while this job ran (at ${formatBytes(progress.doneBytes)} of ${formatBytes(progress.totalBytes)})` : 'before this job started';
    const error: JobError = { code: 'INTERRUPTED', message: `the daemon stopped ${where} and ${refusal}; start it again` };
    this.#store.update({ ...row, state: 'failed', checkpointJson: null, errorJson: JSON.stringify(error), finishedAt: new Date(this.#nowMs()).toISOString() });
    this.#store.pruneFinished(this.#finishedKeptMax);
    this.#logger.warn({ job: row.id, kind: row.kind, error }, 'job interrupted by a restart');
  }

  // ---- persistence ----------------------------------------------------------------------------

  #persistDirty(): void {
    if (this.#closed) return;
    // Not fsync'ed: on a disk busy with a job's own writes, the fsync of the metadata log each
    // second held the event loop, NBD included (one profiled 1 GiB remap restore on ext4 spent
    // 67 ms of its main thread there). Progress is advisory, and an older checkpoint is still valid.
    for (const job of this.#active.values()) if (job.dirty) this.#persist(job, { durable: false });
  }

  /** Writes the row of a queued or running job: state, progress, the latest valid checkpoint. */
  #persist(job: ActiveJob, options: { durable?: boolean } = {}): void {
    job.dirty = false;
    this.#takeCheckpoint(job);
    const progress: StoredProgress = { doneBytes: job.doneBytes, totalBytes: job.totalBytes };
    if (job.checkpointDoneBytes !== undefined) progress.checkpointDoneBytes = job.checkpointDoneBytes;
    try {
      this.#store.update({
        id: job.id,
        state: job.state,
        checkpointJson: job.checkpointJson,
        progressJson: JSON.stringify(progress),
        resultJson: null,
        errorJson: null,
        startedAt: job.startedAt ?? null,
        finishedAt: null,
      }, options);
    } catch (error) {
      // Progress is advisory; the next write tries again, and the end of the job is written at the end.
      job.dirty = true;
      job.logger.error({ err: error }, 'cannot write job progress');
    }
  }

  /** Serialises the handler's latest checkpoint; one that is not JSON or too large fails the job. */
  #takeCheckpoint(job: ActiveJob): void {
    const pending = job.pendingCheckpoint;
    if (pending === undefined) return;
    job.pendingCheckpoint = undefined;
    try {
      job.checkpointJson = toJson(pending.value, 'checkpoint', LIMITS.jobCheckpointBytesMax);
      job.checkpointDoneBytes = pending.doneBytes;
    } catch (error) {
      const fault = isThinError(error) ? error : new ThinError('INTERNAL', String(error));
      const message = `the ${job.kind.name} job saved a checkpoint that cannot be kept: ${fault.message}`;
      job.logger.error({ err: error }, message);
      job.controller.abort(new JobAbortError('fault', message, new ThinError('INTERNAL', message)));
    }
  }

  // ---- answers --------------------------------------------------------------------------------

  #activeInfo(job: ActiveJob): JobInfo {
    const rateBytesPerSec = job.state === 'running' ? job.meter.rateBytesPerSec(job.doneBytes) : 0;
    const info: JobInfo = {
      id: job.id,
      kind: job.kind.name,
      state: job.state,
      description: job.description,
      params: job.params,
      progress: { doneBytes: job.doneBytes, totalBytes: job.totalBytes, rateBytesPerSec, etaSeconds: etaSeconds(job.doneBytes, job.totalBytes, rateBytesPerSec) },
      createdAt: job.createdAt,
    };
    if (job.startedAt !== undefined) info.startedAt = job.startedAt;
    if (job.cancelling) info.cancelling = true;
    return info;
  }
}

function rowInfo(row: JobRow): JobInfo {
  const progress = JSON.parse(row.progressJson) as StoredProgress;
  const info: JobInfo = {
    id: row.id,
    kind: row.kind,
    state: row.state,
    description: row.description,
    params: JSON.parse(row.paramsJson) as unknown,
    progress: { doneBytes: progress.doneBytes, totalBytes: progress.totalBytes, rateBytesPerSec: 0, etaSeconds: null },
    createdAt: row.createdAt,
  };
  if (row.resultJson !== null) info.result = JSON.parse(row.resultJson) as unknown;
  if (row.errorJson !== null) info.error = JSON.parse(row.errorJson) as JobError;
  if (row.startedAt !== null) info.startedAt = row.startedAt;
  if (row.finishedAt !== null) info.finishedAt = row.finishedAt;
  return info;
}

export function isJobFinished(info: JobInfo): boolean {
  return isFinished(info.state);
}

function cancelledError(id: string): JobError {
  return { code: 'CANCELLED', message: `job ${id} was cancelled` };
}

/** JSON text of a value (null for undefined); not JSON-able or larger than maxBytes → INVALID_ARGUMENT. */
function toJson(value: unknown, field: string, maxBytes: number): string | null {
  if (value === undefined) return null;
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (error) {
    throw new ThinError('INVALID_ARGUMENT', `${field}: not representable as JSON (${(error as Error).message})`, { field });
  }
  if (text === undefined) throw new ThinError('INVALID_ARGUMENT', `${field}: not representable as JSON`, { field });
  const bytes = Buffer.byteLength(text);
  if (bytes > maxBytes) throw new ThinError('INVALID_ARGUMENT', `${field}: ${bytes} bytes of JSON, more than the ${maxBytes} allowed`, { field });
  return text;
}

function boundDescription(description: string): string {
  assert(typeof description === 'string', 'a job description is a string');
  return description.length <= LIMITS.jobDescriptionCharsMax ? description : description.slice(0, LIMITS.jobDescriptionCharsMax - 1) + '…';
}
