/** The transmission phase of one connection: parses requests off the socket, runs them concurrently, replies. */
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { LIMITS } from '../lib/limits.js';
import { acquireBuffer, releaseBuffer } from '../lib/buffer-pool.js';
import { assert } from '../lib/assert.js';
import type { Logger } from '../lib/log.js';
import type { BlockDevice } from '../volume/block-device.js';
import { failureFromError } from './errno.js';
import type { Negotiated, SelectedContext } from './handshake.js';
import * as P from './protocol.js';
import { blockStatusChunk, errorChunk, readChunkHeader, simpleReply } from './replies.js';

export interface NbdMetrics {
  observeRequest(command: string, bytes: number, seconds: number, errno: number): void;
}

/** What the transmission needs from the connection that owns the socket. */
export interface TransmissionHost {
  /** Every request is answered and no more will be read: flush and close. */
  finished(): void;
  /** Hard disconnect for a protocol violation. */
  disconnect(reason: string): void;
}

/** One request, from its header to its reply. A class so every request has the same shape. */
class Request {
  constructor(
    readonly type: number,
    readonly flags: number,
    readonly handleHi: number,
    readonly handleLo: number,
    readonly offsetBytes: number,
    readonly lengthBytes: number,
    /** Bytes this request holds in buffers (READ data, WRITE payload) while in flight. */
    readonly bufferBytes: number,
    readonly startMs: number,
  ) {}
}

/** A refusal decided from the header alone; shared constants, so refusing allocates nothing. */
interface Rejection {
  readonly errno: number;
  readonly message: string;
}
const rejection = (errno: number, message: string): Rejection => Object.freeze({ errno, message });
const REJECT_FLAGS = rejection(P.NBD_EINVAL, 'command flags not valid for this command');
const REJECT_RANGE = rejection(P.NBD_EINVAL, 'offset and length go beyond the end of the export');
const REJECT_WRITE_RANGE = rejection(P.NBD_ENOSPC, 'write goes beyond the end of the export');
const REJECT_EMPTY = rejection(P.NBD_EINVAL, 'length must not be 0');
const REJECT_TOO_LONG = rejection(P.NBD_EINVAL, `length over the maximum block size (${LIMITS.nbdPayloadBytesMax})`);
const REJECT_READ_ONLY = rejection(P.NBD_EPERM, 'the export is read-only');
const REJECT_FLUSH_ARGS = rejection(P.NBD_EINVAL, 'flush offset and length must be 0');
const REJECT_NO_CONTEXT = rejection(P.NBD_EINVAL, 'no metadata context was negotiated');
const REJECT_UNKNOWN = rejection(P.NBD_EINVAL, 'unknown command');

const TWO_POW_32 = 2 ** 32;

const enum ParseState {
  Header,
  Payload,
  Discard,
}

/** Runs deferred on the next tick: every reply queued in this tick goes out in one writev. */
function uncork(transmission: Transmission): void {
  transmission.uncork();
}

export class Transmission {
  // ---- Set at creation, never changed.
  private readonly device: BlockDevice;
  private readonly sizeBytes: number;
  private readonly readOnly: boolean;
  private readonly structured: boolean;
  private readonly contexts: readonly SelectedContext[];
  /** Header bytes that arrived split across socket chunks are assembled here (parsed at once, so reused). */
  private readonly headerScratch = Buffer.allocUnsafe(P.NBD_REQUEST_HEADER_BYTES);
  /** Command flags each command accepts, indexed by command type. */
  private readonly allowedFlags = new Uint16Array(P.NBD_CMD_BLOCK_STATUS + 1);

  // ---- Parser state: changes with every byte received.
  private parseState = ParseState.Header;
  private headerFill = 0;
  /** The WRITE whose payload is being received or discarded. */
  private current: Request | undefined;
  private currentRejection: Rejection | undefined;
  /** The accepted WRITE's payload, a recycled buffer (src/lib/buffer-pool.ts) filled as it arrives. */
  private payload: Buffer | undefined;
  private payloadFilled = 0;
  private payloadRemaining = 0;
  /** Chunks received but not parsed yet (reading is stopped at a request boundary). */
  private readonly stash: Buffer[] = [];
  private pumping = false;

  // ---- Flow control and lifetime.
  private inflight = 0;
  private inflightBufferBytes = 0;
  private socketPaused = false;
  private corked = false;
  /** DISC received, the client half-closed, or the server is shutting down: read nothing more. */
  private stopping = false;
  private closed = false;

  constructor(
    private readonly socket: Socket,
    negotiated: Negotiated,
    private readonly host: TransmissionHost,
    private readonly logger: Logger,
    private readonly metrics: NbdMetrics | undefined,
  ) {
    this.device = negotiated.device;
    this.sizeBytes = negotiated.device.sizeBytes;
    this.readOnly = negotiated.device.readOnly;
    this.structured = negotiated.structured;
    this.contexts = negotiated.contexts;
    this.initAllowedFlags();
    socket.on('drain', () => this.onCapacity());
  }

  /** FUA is valid on every command (clients are known to set it anywhere); the rest per command. */
  private initAllowedFlags(): void {
    const fua = P.NBD_CMD_FLAG_FUA;
    const allowed = this.allowedFlags;
    allowed[P.NBD_CMD_READ] = fua | (this.structured ? P.NBD_CMD_FLAG_DF : 0);
    allowed[P.NBD_CMD_WRITE] = fua;
    allowed[P.NBD_CMD_DISC] = fua;
    allowed[P.NBD_CMD_FLUSH] = fua;
    allowed[P.NBD_CMD_TRIM] = fua;
    allowed[P.NBD_CMD_CACHE] = fua;
    allowed[P.NBD_CMD_WRITE_ZEROES] = fua | P.NBD_CMD_FLAG_NO_HOLE | P.NBD_CMD_FLAG_FAST_ZERO;
    allowed[P.NBD_CMD_BLOCK_STATUS] = fua | P.NBD_CMD_FLAG_REQ_ONE;
  }

  get requestsInFlight(): number {
    return this.inflight;
  }

  /**
   * Bytes received. `reusedBuffer`: `chunk` lies in a buffer the next read will overwrite (the
   * connection's slab), so whatever is kept beyond this call is copied; otherwise (a TLS socket's
   * fresh chunks, the handshake's leftovers) views of it may be kept.
   */
  receive(chunk: Buffer, reusedBuffer = false): void {
    if (this.closed || this.stopping) return; // nothing may follow DISC; it is ignored
    this.stash.push(chunk);
    this.pump();
    if (reusedBuffer) {
      for (let i = 0; i < this.stash.length; i++) {
        if (this.stash[i]!.buffer === chunk.buffer) this.stash[i] = Buffer.from(this.stash[i]!);
      }
    }
  }

  /**
   * Where the next socket read should land: straight into the payload being received when
   * nothing is stashed before it (no copy at all), else the connection's slab.
   */
  nextReadBuffer(slab: Buffer): Buffer {
    if (this.parseState !== ParseState.Payload || this.payload === undefined || this.stash.length > 0 || this.closed || this.stopping) return slab;
    return this.payload.subarray(this.payloadFilled, this.payloadFilled + this.payloadRemaining);
  }

  /** A read into the buffer nextReadBuffer gave: the slab (parse it) or the payload (count it). */
  onRead(bytes: number, buffer: Buffer, slab: Buffer): void {
    if (buffer.buffer === slab.buffer) {
      this.receive(buffer.subarray(0, bytes), true);
      return;
    }
    // A direct payload read. After a stop the request was dropped: its bytes are not wanted.
    if (this.closed || this.stopping || this.parseState !== ParseState.Payload) return;
    assert(bytes <= this.payloadRemaining, 'a direct read stays inside the payload it was given');
    this.payloadFilled += bytes;
    this.payloadRemaining -= bytes;
    if (this.payloadRemaining === 0) this.onPayloadComplete();
    this.updateFlow();
  }

  /** The client half-closed or the server shuts down: answer what is in flight, then finish. */
  stop(): void {
    if (this.stopping || this.closed) return;
    this.stopping = true;
    this.stash.length = 0;
    this.dropPartialWrite();
    this.updateFlow();
    this.finishIfIdle();
  }

  /** A WRITE whose payload will never arrive cannot be answered; forget it so the close is not held up. */
  private dropPartialWrite(): void {
    const request = this.current;
    if (request === undefined) return;
    this.current = undefined;
    this.currentRejection = undefined;
    // Not recycled: the socket may still hold a view of it as its next read buffer.
    this.payload = undefined;
    this.parseState = ParseState.Header;
    this.inflight--;
    this.inflightBufferBytes -= request.bufferBytes;
  }

  /** The socket is gone: in-flight requests still complete against the device, their replies are dropped. */
  onSocketClosed(): void {
    this.closed = true;
    this.stash.length = 0;
    this.payload = undefined; // not recycled: see dropPartialWrite
  }

  uncork(): void {
    this.corked = false;
    if (!this.closed) this.socket.uncork();
  }

  // ---- Parsing -------------------------------------------------------------------------------

  private pump(): void {
    if (this.pumping) return; // a request completing synchronously must not re-enter the parser
    this.pumping = true;
    try {
      while (this.stash.length > 0 && !this.closed) {
        const chunk = this.stash[0]!;
        const used = this.consume(chunk);
        if (used === chunk.length) {
          this.stash.shift();
        } else {
          this.stash[0] = chunk.subarray(used);
          break;
        }
      }
    } finally {
      this.pumping = false;
    }
    this.updateFlow();
  }

  /** Parses as much of `chunk` as allowed; returns the bytes used (less when reading must stop). */
  private consume(chunk: Buffer): number {
    let at = 0;
    while (at < chunk.length && !this.closed) {
      if (this.parseState === ParseState.Header) {
        if (this.headerFill === 0 && this.mustStopReading()) return at;
        if (this.headerFill === 0 && chunk.length - at >= P.NBD_REQUEST_HEADER_BYTES) {
          at += P.NBD_REQUEST_HEADER_BYTES; // parsed in place: no copy for whole headers
          this.onHeader(chunk, at - P.NBD_REQUEST_HEADER_BYTES);
        } else {
          const n = Math.min(P.NBD_REQUEST_HEADER_BYTES - this.headerFill, chunk.length - at);
          chunk.copy(this.headerScratch, this.headerFill, at, at + n);
          this.headerFill += n;
          at += n;
          if (this.headerFill === P.NBD_REQUEST_HEADER_BYTES) {
            this.headerFill = 0;
            this.onHeader(this.headerScratch, 0);
          }
        }
      } else {
        const n = Math.min(this.payloadRemaining, chunk.length - at);
        if (this.parseState === ParseState.Payload) {
          chunk.copy(this.payload!, this.payloadFilled, at, at + n);
          this.payloadFilled += n;
        }
        this.payloadRemaining -= n;
        at += n;
        if (this.payloadRemaining === 0) this.onPayloadComplete();
      }
      if (this.stopping) return chunk.length; // DISC: whatever follows is ignored
    }
    return at;
  }

  private onHeader(buf: Buffer, at: number): void {
    if (buf.readUInt32BE(at) !== P.NBD_REQUEST_MAGIC) {
      this.host.disconnect('bad request magic');
      return;
    }
    const flags = buf.readUInt16BE(at + 4);
    const type = buf.readUInt16BE(at + 6);
    // Offsets over 2^53 lose precision here, but anything over 2^52 is past any export anyway.
    const offsetBytes = buf.readUInt32BE(at + 16) * TWO_POW_32 + buf.readUInt32BE(at + 20);
    const lengthBytes = buf.readUInt32BE(at + 24);
    if (type === P.NBD_CMD_DISC) return this.onDisc();
    const carriesBuffer = type === P.NBD_CMD_READ || type === P.NBD_CMD_WRITE;
    const request = new Request(
      type,
      flags,
      buf.readUInt32BE(at + 8),
      buf.readUInt32BE(at + 12),
      offsetBytes,
      lengthBytes,
      carriesBuffer && lengthBytes <= LIMITS.nbdPayloadBytesMax ? lengthBytes : 0,
      this.metrics === undefined ? 0 : performance.now(),
    );
    this.inflight++;
    this.inflightBufferBytes += request.bufferBytes;
    if (type === P.NBD_CMD_WRITE) this.beginWritePayload(request);
    else void this.execute(request, undefined);
  }

  private beginWritePayload(request: Request): void {
    const length = request.lengthBytes;
    if (length > LIMITS.nbdWriteDiscardBytesMax) {
      this.host.disconnect(`WRITE payload of ${length} bytes`);
      return;
    }
    const rejected = this.check(request);
    if (length === 0) {
      void this.execute(request, undefined); // nothing to read; check() refuses it
      return;
    }
    this.current = request;
    this.currentRejection = rejected;
    if (rejected === undefined) {
      this.payload = acquireBuffer(length);
      this.payloadFilled = 0;
    }
    this.payloadRemaining = length;
    this.parseState = rejected === undefined ? ParseState.Payload : ParseState.Discard;
  }

  private onPayloadComplete(): void {
    const request = this.current!;
    const rejected = this.currentRejection;
    const payload = this.payload;
    this.current = undefined;
    this.currentRejection = undefined;
    this.payload = undefined;
    this.parseState = ParseState.Header;
    if (rejected !== undefined) this.finishRequest(request, rejected.errno, rejected.message);
    else void this.execute(request, payload);
  }

  private onDisc(): void {
    this.logger.debug({ inflight: this.inflight }, 'nbd client sent DISC');
    this.stop();
  }

  // ---- Flow control --------------------------------------------------------------------------

  private mustStopReading(): boolean {
    return (
      this.stopping ||
      this.inflight >= LIMITS.nbdInflightRequestsMax ||
      this.inflightBufferBytes >= LIMITS.nbdInflightBytesMax ||
      this.socket.writableLength >= LIMITS.nbdReplyQueuedBytesMax
    );
  }

  /** Pauses the socket between requests when a bound is reached, resumes when it is not. */
  private updateFlow(): void {
    if (this.closed) return;
    const stop = this.parseState === ParseState.Header && this.headerFill === 0 && this.mustStopReading();
    if (stop && !this.socketPaused) {
      this.socketPaused = true;
      this.socket.pause();
    } else if (!stop && this.socketPaused) {
      this.socketPaused = false;
      this.socket.resume();
    }
  }

  /** A request finished or the socket drained: parse what was held back. */
  private onCapacity(): void {
    if (this.stash.length > 0) this.pump();
    else this.updateFlow();
  }

  private finishIfIdle(): void {
    if (this.stopping && this.inflight === 0 && !this.closed) this.host.finished();
  }

  // ---- Execution -----------------------------------------------------------------------------

  /** Refusals decided from the header alone, in the order the spec suggests (EPERM before range). */
  private check(request: Request): Rejection | undefined {
    const { type, flags, offsetBytes, lengthBytes } = request;
    if (type > P.NBD_CMD_BLOCK_STATUS) return REJECT_UNKNOWN; // includes RESIZE, which we do not offer
    if ((flags & ~this.allowedFlags[type]!) !== 0) return REJECT_FLAGS;
    if (type === P.NBD_CMD_FLUSH) return offsetBytes === 0 && lengthBytes === 0 ? undefined : REJECT_FLUSH_ARGS;
    const writes = type === P.NBD_CMD_WRITE || type === P.NBD_CMD_TRIM || type === P.NBD_CMD_WRITE_ZEROES;
    if (writes && this.readOnly) return REJECT_READ_ONLY;
    if (type === P.NBD_CMD_BLOCK_STATUS && this.contexts.length === 0) return REJECT_NO_CONTEXT;
    if (lengthBytes === 0) return REJECT_EMPTY;
    // Only payload-carrying commands are bound by the maximum block size: TRIM, WRITE_ZEROES,
    // CACHE and BLOCK_STATUS of any length are cheap to serve, and some clients send them large.
    if ((type === P.NBD_CMD_READ || type === P.NBD_CMD_WRITE) && lengthBytes > LIMITS.nbdPayloadBytesMax) {
      return REJECT_TOO_LONG;
    }
    if (offsetBytes > this.sizeBytes || lengthBytes > this.sizeBytes - offsetBytes) {
      return type === P.NBD_CMD_WRITE || type === P.NBD_CMD_WRITE_ZEROES ? REJECT_WRITE_RANGE : REJECT_RANGE;
    }
    return undefined;
  }

  private async execute(request: Request, payload: Buffer | undefined): Promise<void> {
    const rejected = this.check(request);
    if (rejected !== undefined) {
      this.finishRequest(request, rejected.errno, rejected.message);
      return;
    }
    let errno = 0;
    let message = '';
    try {
      await this.perform(request, payload);
      // Written: the payload's buffer is recycled. Not after a failure, when a disk write of
      // another part may still be reading it; the collector takes it then.
      if (payload !== undefined) releaseBuffer(payload);
    } catch (error) {
      const failure = failureFromError(error);
      if (failure.unexpected) {
        this.logger.error({ err: error, command: P.commandName(request.type) }, 'nbd request failed unexpectedly');
      }
      errno = failure.errno;
      message = failure.message;
    }
    this.finishRequest(request, errno, message);
  }

  /** Runs a checked request; sends the success reply for commands whose reply carries data. */
  private async perform(request: Request, payload: Buffer | undefined): Promise<void> {
    const device = this.device;
    const { offsetBytes, lengthBytes, flags } = request;
    const fua = (flags & P.NBD_CMD_FLAG_FUA) !== 0;
    switch (request.type) {
      case P.NBD_CMD_READ: {
        const data = await device.read(offsetBytes, lengthBytes);
        if (data.length !== lengthBytes) throw new Error(`device read returned ${data.length} of ${lengthBytes} bytes`);
        return this.replyRead(request, data);
      }
      case P.NBD_CMD_WRITE:
        return device.write(offsetBytes, [payload!], { fua });
      case P.NBD_CMD_FLUSH:
        return device.flush();
      case P.NBD_CMD_TRIM:
        return device.trim(offsetBytes, lengthBytes, { fua });
      case P.NBD_CMD_CACHE:
        return device.cache(offsetBytes, lengthBytes);
      case P.NBD_CMD_WRITE_ZEROES:
        return device.writeZeroes(offsetBytes, lengthBytes, {
          fua,
          mayUnmap: (flags & P.NBD_CMD_FLAG_NO_HOLE) === 0,
          fastOnly: (flags & P.NBD_CMD_FLAG_FAST_ZERO) !== 0,
        });
      case P.NBD_CMD_BLOCK_STATUS:
        return this.replyBlockStatus(request);
      default:
        throw new Error(`unchecked command ${request.type}`);
    }
  }

  /** Replies (unless perform already did), accounts, and lets reading continue. */
  private finishRequest(request: Request, errno: number, message: string): void {
    const type = request.type;
    if (errno !== 0) this.replyError(request, errno, message);
    else if (type !== P.NBD_CMD_READ && type !== P.NBD_CMD_BLOCK_STATUS) this.send(simpleReply(0, request.handleHi, request.handleLo));
    this.inflight--;
    this.inflightBufferBytes -= request.bufferBytes;
    if (this.metrics !== undefined) this.observe(request, errno);
    this.onCapacity();
    this.finishIfIdle();
  }

  private observe(request: Request, errno: number): void {
    const seconds = (performance.now() - request.startMs) / 1000;
    const bytes = errno === 0 && request.type !== P.NBD_CMD_FLUSH ? request.lengthBytes : 0;
    try {
      this.metrics!.observeRequest(P.commandName(request.type), bytes, seconds, errno);
    } catch (error) {
      this.logger.warn({ err: error }, 'nbd metrics observer failed'); // metrics must not break I/O
    }
  }

  // ---- Replies -------------------------------------------------------------------------------

  private send(header: Buffer, data?: Buffer): void {
    if (this.closed || this.socket.destroyed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(uncork, this);
    }
    this.socket.write(header);
    // Once the socket has taken READ data, its (possibly pooled) buffer can be recycled.
    if (data !== undefined) this.socket.write(data, () => releaseBuffer(data));
  }

  private replyRead(request: Request, data: Buffer): void {
    const header = this.structured
      ? readChunkHeader(request.handleHi, request.handleLo, request.offsetBytes, data.length)
      : simpleReply(0, request.handleHi, request.handleLo);
    this.send(header, data);
  }

  private replyError(request: Request, errno: number, message: string): void {
    // Structured clients get the message too; READ must never get a simple reply then.
    if (this.structured) this.send(errorChunk(request.handleHi, request.handleLo, errno, message));
    else this.send(simpleReply(errno, request.handleHi, request.handleLo));
  }

  /** One chunk per selected context; all are built before any is sent so a failure cannot split the reply. */
  private replyBlockStatus(request: Request): void {
    const descriptorsMax = (request.flags & P.NBD_CMD_FLAG_REQ_ONE) !== 0 ? 1 : LIMITS.nbdBlockStatusDescriptorsMax;
    const chunks: Buffer[] = [];
    for (let i = 0; i < this.contexts.length; i++) {
      const { id, context } = this.contexts[i]!;
      let descriptors = context.describe(this.device, request.offsetBytes, request.lengthBytes, descriptorsMax);
      if (descriptors.length > descriptorsMax) descriptors = descriptors.slice(0, descriptorsMax);
      if (descriptors.length === 0) throw new Error(`meta context ${context.name} returned no descriptors`);
      const last = i === this.contexts.length - 1;
      chunks.push(blockStatusChunk(request.handleHi, request.handleLo, last, id, descriptors));
    }
    for (const chunk of chunks) this.send(chunk);
  }
}
