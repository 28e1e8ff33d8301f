/**
 * `-`: the CLI's stdout or stdin, carried by the API. The daemon sees an HTTP response to write
 * the backup stream into, or an HTTP request body to read one from; the CLI sees its own stdout
 * or stdin (and `medium inspect -` reads stdin directly). Both are strictly sequential byte
 * streams, like a FIFO, so the format needs nothing more; these adapters only turn Node streams
 * into a MediumWriter / MediumReader with the same error rules as the file media: a reader gone
 * midway is an IO_ERROR naming the medium, never a silent short stream.
 */
import type { Readable, Writable } from 'node:stream';
import { ThinError } from '../../lib/errors.js';
import type { MediumReader, MediumWriter } from './medium.js';

export class WritableMediumWriter implements MediumWriter {
  readonly description: string;
  readonly #out: Writable;
  #bytesWritten = 0;
  #error: ThinError | null = null;
  #ended = false;
  /** Rejecters of the writes not yet acknowledged: a destroyed stream may never call their callbacks. */
  readonly #pending = new Set<(error: ThinError) => void>();

  constructor(out: Writable, description: string) {
    this.#out = out;
    this.description = description;
    const gone = (cause?: Error): void => {
      this.#error ??= new ThinError('IO_ERROR', `${description}: the reader went away before the end of the stream${cause ? ` (${cause.message})` : ''}`, cause ? { cause } : {});
      for (const reject of this.#pending) reject(this.#error);
      this.#pending.clear();
    };
    out.on('error', gone);
    out.on('close', () => {
      if (!this.#ended) gone();
    });
  }

  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  /**
   * Writes a copy of `chunk`: a Writable may call back before the bytes are sent (a PassThrough
   * does once it has passed the chunk on, by reference, to a socket still holding it), and the
   * caller reuses its buffer as soon as this resolves. Resolving on the callback still gives
   * backpressure: it comes late when the reader is slow.
   */
  write(chunk: Buffer): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    const copy = Buffer.from(chunk);
    return new Promise((resolve, reject) => {
      this.#pending.add(reject);
      this.#out.write(copy, (error) => {
        this.#pending.delete(reject);
        if (error || this.#error) return reject(this.#error ?? new ThinError('IO_ERROR', `${this.description}: write failed: ${error!.message}`, { cause: error }));
        this.#bytesWritten += chunk.length;
        resolve();
      });
    });
  }

  async close(): Promise<void> {
    if (this.#error) throw this.#error;
    this.#ended = true;
    await new Promise<void>((resolve, reject) => {
      this.#out.end(() => (this.#error ? reject(this.#error) : resolve()));
    });
  }

  /** Cuts the stream: the reader sees it end early (the CLI reports the failure; a format reader calls it truncated). */
  async abort(): Promise<void> {
    this.#ended = true;
    this.#out.destroy();
  }
}

export class ReadableMediumReader implements MediumReader {
  readonly description: string;
  readonly #input: Readable;
  #bytesRead = 0;
  #ended = false;
  #error: ThinError | null = null;
  /** Chunks read ahead by 'data' events, taken by read(); the stream is paused while any wait here. */
  readonly #queued: Buffer[] = [];
  #waiting: (() => void) | null = null;

  constructor(input: Readable, description: string) {
    this.#input = input;
    this.description = description;
    // Events rather than an async iterator: leaving an iterator destroys the stream, and with an
    // HTTP request body the socket too, before the error answer could be sent.
    input.on('data', this.#onData).on('end', this.#onEnd).on('error', this.#onError).on('close', this.#onClose);
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#queued.push(chunk);
    this.#input.pause();
    this.#wake();
  };

  readonly #onEnd = (): void => {
    this.#ended = true;
    this.#wake();
  };

  readonly #onError = (error: Error): void => {
    this.#error ??= new ThinError('IO_ERROR', `${this.description}: read failed: ${error.message}`, { cause: error });
    this.#wake();
  };

  readonly #onClose = (): void => {
    if (!this.#ended) this.#error ??= new ThinError('IO_ERROR', `${this.description}: the writer went away before the end of the stream`);
    this.#wake();
  };

  get bytesRead(): number {
    return this.#bytesRead;
  }

  async read(): Promise<Buffer | null> {
    for (;;) {
      const chunk = this.#queued.shift();
      if (chunk) {
        this.#bytesRead += chunk.length;
        if (this.#queued.length === 0) this.#input.resume();
        return chunk;
      }
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      this.#input.resume();
      await new Promise<void>((resolve) => (this.#waiting = resolve));
    }
  }

  /**
   * Stops reading and lets go of the stream: what the writer still sends is left to its owner
   * (the API drains it or hangs up), which needs our listeners gone — 'data' pauses the stream.
   */
  async close(): Promise<void> {
    this.#input.off('data', this.#onData).off('end', this.#onEnd).off('error', this.#onError).off('close', this.#onClose);
    this.#input.pause();
    this.#queued.length = 0;
    this.#ended = true;
    this.#wake();
  }

  #wake(): void {
    const waiting = this.#waiting;
    this.#waiting = null;
    waiting?.();
  }
}
