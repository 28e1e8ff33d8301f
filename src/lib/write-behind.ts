/**
 * Write-behind for long sequential writers: after every `everyBytes` written, one sync starts in
 * the background (never two at once), so the disk writes overlap the writing and the durable sync
 * at the end finds little left. File media use it for backups (their fdatasync), restores for the
 * pool. It only gives the disk a head start: the writer's own final sync is still what counts.
 */
export class WriteBehind {
  readonly #sync: () => Promise<void>;
  readonly #everyBytes: number;
  #bytesSinceSync = 0;
  #running: Promise<void> | undefined;

  /** `sync` reports its own failures (the final sync will meet the same fault); a rejection is ignored here. */
  constructor(sync: () => Promise<void>, everyBytes: number) {
    this.#sync = sync;
    this.#everyBytes = everyBytes;
  }

  /** `bytes` more were written; starts a sync when enough have been since the last one started. */
  note(bytes: number): void {
    this.#bytesSinceSync += bytes;
    if (this.#running || this.#bytesSinceSync < this.#everyBytes) return;
    this.#bytesSinceSync = 0;
    this.#running = this.#sync()
      .catch(() => undefined)
      .finally(() => (this.#running = undefined));
  }

  /** Resolves once no background sync runs (before the descriptor closes, or the writer reports done). */
  async settled(): Promise<void> {
    await this.#running;
  }
}
