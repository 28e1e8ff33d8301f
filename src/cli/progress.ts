/**
 * Following a job from the CLI: long-polls `GET /jobs/:id?waitMs=` and shows its progress — a
 * cli-progress bar on stderr when stderr is a terminal, plain lines on stdout (at most one every
 * PLAIN_LINE_INTERVAL_MS) otherwise, nothing but the final JSON with --json. A job that fails or
 * is cancelled ends the command non-zero with the job's own message. Long commands (`copy
 * create`, `backup create`) call followJob unless --no-wait, in which case they print the id.
 */
import cliProgress from 'cli-progress';
import type { JobInfo } from '../array/types.js';
import type { ApiClient } from './client.js';
import type { CliContext, CliIo } from './context.js';
import { CliError, EXIT_CODES } from './errors.js';
import { formatBytes, percentOf } from './format.js';

/** A terminal bar redraws this often (the poll returns early when the job ends). */
const BAR_POLL_MS = 1000;
/** Without a terminal (logs, CI), one progress line at most this often. */
const PLAIN_LINE_INTERVAL_MS = 5000;

export interface FollowOptions {
  json: boolean;
  io: CliIo;
  /** Give up (exit 1, the job keeps running) after this long; default: wait for the end. */
  timeoutMs?: number;
  /** Where the bar is drawn, and whether it is a terminal (tests pass a fake). */
  terminal?: NodeJS.WriteStream;
}

/** Waits for the job to finish; returns its info on success, throws CliError otherwise. */
export async function followJob(client: ApiClient, id: string, options: FollowOptions): Promise<JobInfo> {
  const terminal = options.terminal ?? process.stderr;
  const display = options.json ? undefined : terminal.isTTY ? new BarDisplay(terminal) : new PlainDisplay(options.io);
  const deadlineMs = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
  const pollMs = display instanceof BarDisplay ? BAR_POLL_MS : PLAIN_LINE_INTERVAL_MS;
  let info = await client.get<JobInfo>(jobPath(id));
  try {
    while (!isFinishedState(info.state)) {
      display?.show(info);
      const remainingMs = deadlineMs - Date.now();
      if (remainingMs <= 0) {
        throw new CliError(`job ${info.id} is still ${info.state} (${describeProgress(info)}); follow it with: thinarray job wait ${info.id}`, EXIT_CODES.failed);
      }
      info = await client.get<JobInfo>(`${jobPath(id)}?waitMs=${Math.min(pollMs, Math.ceil(remainingMs))}`);
    }
  } finally {
    display?.stop(info);
  }
  return reportEnd(info, options);
}

/**
 * What a long command (`copy create`, `backup create`…) does with the job the API answered:
 * with --no-wait, print its id (and the JSON with --json) and return; otherwise follow it.
 */
export async function finishStartedJob(context: CliContext, started: JobInfo, options: { noWait?: boolean }): Promise<JobInfo> {
  if (options.noWait) {
    context.output(started, (info) => `started job ${info.id}: ${info.description} (follow it with: thinarray job wait ${info.id})`);
    return started;
  }
  return followJob(context.api(), started.id, { json: context.json, io: context.io });
}

/** Prints how the job ended; a failed or cancelled job becomes the command's error. */
function reportEnd(info: JobInfo, options: FollowOptions): JobInfo {
  options.io.stdout(options.json ? JSON.stringify(info, null, 2) : describeEnd(info));
  if (info.state === 'succeeded') return info;
  const reason = info.error ? `${info.error.message} (${info.error.code})` : 'no reason recorded';
  throw new CliError(`job ${info.id} ${info.state}: ${reason}`, EXIT_CODES.failed, info.error?.code);
}

export function describeEnd(info: JobInfo): string {
  const elapsed = info.startedAt && info.finishedAt ? ` in ${formatDuration((Date.parse(info.finishedAt) - Date.parse(info.startedAt)) / 1000)}` : '';
  return `job ${info.id} ${info.state}: ${info.description} (${formatBytes(info.progress.doneBytes)}${elapsed})`;
}

/** "1.2 GiB of 4 GiB (30.0%), 120 MiB/s, ETA 25s" — what both displays say. */
export function describeProgress(info: JobInfo): string {
  const { doneBytes, totalBytes, rateBytesPerSec, etaSeconds } = info.progress;
  const parts = [totalBytes > 0 ? `${formatBytes(doneBytes)} of ${formatBytes(totalBytes)} (${percentOf(doneBytes, totalBytes)})` : `${formatBytes(doneBytes)}`];
  if (info.state === 'running') {
    parts.push(`${formatBytes(rateBytesPerSec)}/s`, `ETA ${etaSeconds === null ? '?' : formatDuration(etaSeconds)}`);
  }
  if (info.cancelling) parts.push('cancelling');
  return parts.join(', ');
}

/** "45s", "3m05s", "2h07m". */
export function formatDuration(seconds: number): string {
  const total = Math.max(0, Math.round(seconds));
  if (total < 60) return `${total}s`;
  if (total < 3600) return `${Math.floor(total / 60)}m${String(total % 60).padStart(2, '0')}s`;
  return `${Math.floor(total / 3600)}h${String(Math.floor((total % 3600) / 60)).padStart(2, '0')}m`;
}

function isFinishedState(state: JobInfo['state']): boolean {
  return state === 'succeeded' || state === 'failed' || state === 'cancelled';
}

function jobPath(id: string): string {
  return `/jobs/${encodeURIComponent(id)}`;
}

interface Display {
  show(info: JobInfo): void;
  stop(info: JobInfo): void;
}

/** The bar counts bytes; its own ETA is replaced by the daemon's (a moving window over the job). */
class BarDisplay implements Display {
  readonly #bar: cliProgress.SingleBar;
  #started = false;

  constructor(stream: NodeJS.WriteStream) {
    this.#bar = new cliProgress.SingleBar(
      {
        format: '{id} [{bar}] {percentage}% | {doneText} of {totalText} | {rateText} | ETA {etaText}',
        stream,
        hideCursor: true,
        // The daemon's numbers are shown as they come; cli-progress need not redraw between polls.
        noTTYOutput: false,
        etaBuffer: 1,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  show(info: JobInfo): void {
    const { doneBytes, totalBytes } = info.progress;
    const payload = {
      id: info.id,
      doneText: formatBytes(doneBytes),
      totalText: totalBytes > 0 ? formatBytes(totalBytes) : '?',
      rateText: `${formatBytes(info.progress.rateBytesPerSec)}/s`,
      etaText: info.progress.etaSeconds === null ? '?' : formatDuration(info.progress.etaSeconds),
    };
    // cli-progress needs a total above 0 to draw; an unknown total draws an empty bar.
    const barTotal = Math.max(totalBytes, 1);
    if (!this.#started) {
      this.#bar.start(barTotal, Math.min(doneBytes, barTotal), payload);
      this.#started = true;
      return;
    }
    this.#bar.setTotal(barTotal);
    this.#bar.update(Math.min(doneBytes, barTotal), payload);
  }

  stop(info: JobInfo): void {
    if (!this.#started) return;
    if (info.state === 'succeeded') this.show({ ...info, progress: { ...info.progress, etaSeconds: 0 } });
    this.#bar.stop();
  }
}

/** For logs and pipes: a line when the job starts being followed, then at most one per interval. */
class PlainDisplay implements Display {
  readonly #io: CliIo;
  #lastLineAtMs = -Infinity;

  constructor(io: CliIo) {
    this.#io = io;
  }

  show(info: JobInfo): void {
    const nowMs = Date.now();
    if (nowMs - this.#lastLineAtMs < PLAIN_LINE_INTERVAL_MS) return;
    this.#lastLineAtMs = nowMs;
    this.#io.stdout(`job ${info.id} ${info.state}: ${describeProgress(info)}`);
  }

  stop(): void {}
}
