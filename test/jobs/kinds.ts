/**
 * Job kinds for tests only (production registers none from here): a counter that sleeps between
 * steps and saves a checkpoint after each, and a kind driven step by step by the test.
 * Not a test file; `node --test dist/test/jobs/` loads it and finds nothing to run.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { JobContext, JobKind } from '../../src/jobs/job-manager.js';

export interface CountParams {
  steps: number;
  stepBytes: number;
  sleepMs: number;
  /** Throw this at this step (a ThinError code, or 'TypeError' for an unexpected error). */
  failAtStep?: number;
  failWith?: string;
}

export interface CountCheckpoint {
  step: number;
}

/** What the counting kind saw, for assertions. */
export interface CountObservations {
  runs: number;
  resumedFrom: (number | undefined)[];
  abortReasons: unknown[];
}

export function countingKind(options: { name?: string; resumable?: boolean; failure?: (params: CountParams) => Error } = {}): JobKind & { seen: CountObservations } {
  const seen: CountObservations = { runs: 0, resumedFrom: [], abortReasons: [] };
  return {
    name: options.name ?? 'count',
    resumable: options.resumable ?? true,
    seen,
    async run(ctx: JobContext, raw: unknown): Promise<unknown> {
      const params = raw as CountParams;
      seen.runs += 1;
      const checkpoint = ctx.checkpoint as CountCheckpoint | undefined;
      seen.resumedFrom.push(checkpoint?.step);
      ctx.setTotal(params.steps * params.stepBytes);
      for (let step = checkpoint?.step ?? 0; step < params.steps; step++) {
        if (ctx.signal.aborted) {
          seen.abortReasons.push(ctx.signal.reason);
          throw ctx.signal.reason;
        }
        if (params.failAtStep === step) throw options.failure?.(params) ?? new Error('no failure given');
        await sleep(params.sleepMs);
        ctx.addDone(params.stepBytes);
        ctx.save({ step: step + 1 } satisfies CountCheckpoint);
      }
      return { counted: params.steps };
    },
  };
}

/** A kind the test drives: each run exposes its context and ends when the test says so. */
export class ManualKind implements JobKind {
  readonly name: string;
  readonly resumable: boolean;
  readonly contexts: JobContext[] = [];
  #finishers: { resolve(value: unknown): void; reject(error: unknown): void }[] = [];
  #started: (() => void)[] = [];

  constructor(name = 'manual', resumable = false) {
    this.name = name;
    this.resumable = resumable;
  }

  run(ctx: JobContext): Promise<unknown> {
    this.contexts.push(ctx);
    for (const notify of this.#started.splice(0)) notify();
    return new Promise((resolve, reject) => {
      this.#finishers.push({ resolve, reject });
      // Like a well-behaved handler: stop when told to.
      ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true });
    });
  }

  /** Resolves once `count` runs have started. */
  async started(count = 1): Promise<JobContext> {
    while (this.contexts.length < count) await new Promise<void>((resolve) => this.#started.push(resolve));
    return this.contexts[count - 1]!;
  }

  finish(index: number, result: unknown): void {
    this.#finishers[index]!.resolve(result);
  }

  fail(index: number, error: unknown): void {
    this.#finishers[index]!.reject(error);
  }
}
