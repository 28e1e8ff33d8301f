/** Fixed-newstyle option haggling: reads options, answers them, and yields the negotiated export. */
import { LIMITS } from '../lib/limits.js';
import type { Logger } from '../lib/log.js';
import type { BlockDevice } from '../volume/block-device.js';
import { ByteQueue } from './byte-queue.js';
import { isWellFormedQuery, type MetaContext, type MetaContextRegistry } from './meta-contexts.js';
import * as P from './protocol.js';
import { optionReply, writeUInt64BE } from './replies.js';

export interface NbdExport {
  device: BlockDevice;
  description?: string;
}

export interface HandshakeConfig {
  lookupExport(name: string): NbdExport | undefined;
  listExports(): string[];
  metaContexts: MetaContextRegistry;
  tlsAvailable: boolean;
  tlsRequired: boolean;
}

export interface SelectedContext {
  id: number;
  context: MetaContext;
}

/** What option haggling settled; fixed for the transmission phase. */
export interface Negotiated {
  exportName: string;
  device: BlockDevice;
  structured: boolean;
  contexts: SelectedContext[];
}

/** What the handshake needs from the connection that owns the socket. */
export interface HandshakeHost {
  send(data: Buffer): void;
  /** Sends the ACK, then upgrades the socket; calls Handshake.onTlsReady once TLS is up. */
  startTls(ack: Buffer): void;
  /** Transmission begins; `leftover` are bytes already received after the final option. */
  enterTransmission(negotiated: Negotiated, leftover: Buffer[]): void;
  /** Soft end after NBD_OPT_ABORT: flush what was sent, then close. */
  end(): void;
  /** Hard disconnect for a protocol violation or an impossible request. */
  disconnect(reason: string): void;
}

type State = 'clientFlags' | 'optionHeader' | 'optionData' | 'optionSkip' | 'tls' | 'done';

/** Transmission flags for an export; fixed once the handshake ends. */
export function transmissionFlags(device: BlockDevice, structured: boolean): number {
  let flags = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_CACHE | P.NBD_FLAG_CAN_MULTI_CONN;
  if (structured) flags |= P.NBD_FLAG_SEND_DF;
  if (device.readOnly) {
    flags |= P.NBD_FLAG_READ_ONLY;
  } else {
    flags |= P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES | P.NBD_FLAG_SEND_FAST_ZERO;
  }
  return flags;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A protocol string (export name, query): at most 4096 bytes of UTF-8 without NUL, else undefined. */
function decodeString(bytes: Buffer): string | undefined {
  if (bytes.length > P.NBD_STRING_BYTES_MAX || bytes.includes(0)) return undefined;
  try {
    return utf8.decode(bytes);
  } catch {
    return undefined;
  }
}

/** Thrown while parsing an option whose contents do not match its length. */
class MalformedOption extends Error {}

/** Reads an option payload front to back; every read is bounds-checked against the payload. */
class OptionReader {
  private at = 0;
  constructor(private readonly payload: Buffer) {}
  get remaining(): number {
    return this.payload.length - this.at;
  }
  u16(): number {
    if (this.remaining < 2) throw new MalformedOption('option too short');
    const value = this.payload.readUInt16BE(this.at);
    this.at += 2;
    return value;
  }
  u32(): number {
    if (this.remaining < 4) throw new MalformedOption('option too short');
    const value = this.payload.readUInt32BE(this.at);
    this.at += 4;
    return value;
  }
  string(length: number): string {
    if (length > this.remaining) throw new MalformedOption('string length runs past the option');
    const value = decodeString(this.payload.subarray(this.at, this.at + length));
    if (value === undefined) throw new MalformedOption('string is not valid UTF-8, has NUL, or is over 4096 bytes');
    this.at += length;
    return value;
  }
  /** The option's length must cover exactly what was parsed: extra bytes are not the next option. */
  end(): void {
    if (this.remaining !== 0) throw new MalformedOption(`${this.remaining} unparsed bytes at the end of the option`);
  }
}

export class Handshake {
  // ---- Set at creation, never changed.
  private readonly queue = new ByteQueue();

  // ---- Changes during the handshake.
  private state: State = 'clientFlags';
  private noZeroes = false;
  private tlsActive = false;
  private structured = false;
  private contexts: SelectedContext[] = [];
  /** Export the current contexts were selected for: GO/EXPORT_NAME of another name drops them. */
  private contextsExportName: string | undefined;
  private optionCount = 0;
  private option = 0;
  private optionBytes = 0;

  constructor(
    private readonly config: HandshakeConfig,
    private readonly host: HandshakeHost,
    private readonly logger: Logger,
  ) {}

  /** The server greeting: magic, IHAVEOPT, handshake flags. */
  greeting(): Buffer {
    const out = Buffer.allocUnsafe(P.NBD_SERVER_GREETING_BYTES);
    out.writeBigUInt64BE(P.NBD_MAGIC, 0);
    out.writeBigUInt64BE(P.NBD_IHAVEOPT, 8);
    out.writeUInt16BE(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES, 16);
    return out;
  }

  receive(chunk: Buffer): void {
    if (this.state === 'done') return;
    if (this.state === 'tls') {
      // The client must wait for our ACK before starting TLS; bytes here break that rule.
      this.fail('data received between STARTTLS and the TLS handshake');
      return;
    }
    this.queue.push(chunk);
    this.pump();
  }

  /** TLS is up: negotiation restarts with no state carried over (the spec requires it). */
  onTlsReady(): void {
    this.tlsActive = true;
    this.structured = false;
    this.contexts = [];
    this.contextsExportName = undefined;
    this.state = 'optionHeader';
    this.pump();
  }

  private pump(): void {
    for (;;) {
      switch (this.state) {
        case 'clientFlags':
          if (this.queue.length < P.NBD_CLIENT_FLAGS_BYTES) return;
          this.onClientFlags(this.queue.take(P.NBD_CLIENT_FLAGS_BYTES).readUInt32BE(0));
          break;
        case 'optionHeader':
          if (this.queue.length < P.NBD_OPTION_HEADER_BYTES) return;
          this.onOptionHeader(this.queue.take(P.NBD_OPTION_HEADER_BYTES));
          break;
        case 'optionData':
          if (this.queue.length < this.optionBytes) return;
          this.state = 'optionHeader';
          this.onOption(this.option, this.queue.take(this.optionBytes));
          break;
        case 'optionSkip':
          this.optionBytes -= this.queue.skip(this.optionBytes);
          if (this.optionBytes > 0) return;
          this.state = 'optionHeader';
          this.replyError(this.option, P.NBD_REP_ERR_TOO_BIG, `option longer than ${LIMITS.nbdOptionBytesMax} bytes`);
          break;
        case 'tls':
        case 'done':
          return;
      }
    }
  }

  private onClientFlags(flags: number): void {
    const known = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES;
    if ((flags & P.NBD_FLAG_C_FIXED_NEWSTYLE) === 0) return this.fail('client did not set FIXED_NEWSTYLE');
    if ((flags & ~known) !== 0) return this.fail(`unknown client flags 0x${flags.toString(16)}`);
    this.noZeroes = (flags & P.NBD_FLAG_C_NO_ZEROES) !== 0;
    this.state = 'optionHeader';
  }

  private onOptionHeader(header: Buffer): void {
    if (header.readBigUInt64BE(0) !== P.NBD_IHAVEOPT) return this.fail('bad option magic');
    if (++this.optionCount > LIMITS.nbdHandshakeOptionsMax) return this.fail('too many options');
    this.option = header.readUInt32BE(8);
    this.optionBytes = header.readUInt32BE(12);
    if (this.optionBytes <= LIMITS.nbdOptionBytesMax) {
      this.state = 'optionData';
      return;
    }
    // EXPORT_NAME cannot be answered with an error; a huge payload is not worth skipping.
    if (this.option === P.NBD_OPT_EXPORT_NAME) return this.fail('oversized EXPORT_NAME');
    if (this.optionBytes > LIMITS.nbdOptionDiscardBytesMax) {
      this.replyError(this.option, P.NBD_REP_ERR_TOO_BIG, 'option far too long');
      return this.fail(`option of ${this.optionBytes} bytes`);
    }
    this.state = 'optionSkip';
  }

  private onOption(option: number, payload: Buffer): void {
    this.logger.debug({ option: P.OPTION_NAMES[option] ?? option, bytes: payload.length }, 'nbd option');
    if (this.config.tlsRequired && !this.tlsActive && option !== P.NBD_OPT_STARTTLS && option !== P.NBD_OPT_ABORT) {
      if (option === P.NBD_OPT_EXPORT_NAME) return this.fail('EXPORT_NAME before the required TLS');
      return this.replyError(option, P.NBD_REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS');
    }
    try {
      this.dispatchOption(option, payload);
    } catch (error) {
      if (!(error instanceof MalformedOption)) throw error;
      this.replyError(option, P.NBD_REP_ERR_INVALID, error.message);
    }
  }

  private dispatchOption(option: number, payload: Buffer): void {
    switch (option) {
      case P.NBD_OPT_EXPORT_NAME:
        return this.onExportName(payload);
      case P.NBD_OPT_ABORT:
        // The spec says to ignore any data sent with ABORT.
        this.state = 'done';
        this.host.send(optionReply(option, P.NBD_REP_ACK));
        return this.host.end();
      case P.NBD_OPT_LIST:
        return this.onList(payload);
      case P.NBD_OPT_STARTTLS:
        return this.onStartTls(payload);
      case P.NBD_OPT_INFO:
      case P.NBD_OPT_GO:
        return this.onInfoOrGo(option, payload);
      case P.NBD_OPT_STRUCTURED_REPLY:
        if (payload.length !== 0) throw new MalformedOption('STRUCTURED_REPLY takes no data');
        this.structured = true;
        return this.host.send(optionReply(option, P.NBD_REP_ACK));
      case P.NBD_OPT_LIST_META_CONTEXT:
      case P.NBD_OPT_SET_META_CONTEXT:
        return this.onMetaContext(option, payload);
      case P.NBD_OPT_EXTENDED_HEADERS:
        return this.replyError(option, P.NBD_REP_ERR_UNSUP, 'extended headers are not supported');
      default:
        return this.replyError(option, P.NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private onExportName(payload: Buffer): void {
    const name = decodeString(payload);
    const entry = name === undefined || name === '' ? undefined : this.config.lookupExport(name);
    if (name === undefined || entry === undefined) return this.fail(`EXPORT_NAME of unknown export ${JSON.stringify(name ?? '<invalid>')}`);
    const out = Buffer.alloc(10 + (this.noZeroes ? 0 : P.NBD_EXPORT_NAME_PADDING_BYTES));
    writeUInt64BE(out, entry.device.sizeBytes, 0);
    out.writeUInt16BE(transmissionFlags(entry.device, this.structured), 8);
    this.host.send(out);
    this.finish(name, entry.device);
  }

  private onList(payload: Buffer): void {
    if (payload.length !== 0) throw new MalformedOption('LIST takes no data');
    for (const name of this.config.listExports()) {
      const nameBytes = Buffer.from(name, 'utf8');
      const data = Buffer.allocUnsafe(4 + nameBytes.length);
      data.writeUInt32BE(nameBytes.length, 0);
      nameBytes.copy(data, 4);
      this.host.send(optionReply(P.NBD_OPT_LIST, P.NBD_REP_SERVER, data));
    }
    this.host.send(optionReply(P.NBD_OPT_LIST, P.NBD_REP_ACK));
  }

  private onStartTls(payload: Buffer): void {
    if (!this.config.tlsAvailable) return this.replyError(P.NBD_OPT_STARTTLS, P.NBD_REP_ERR_UNSUP, 'TLS is not configured');
    if (payload.length !== 0) throw new MalformedOption('STARTTLS takes no data');
    if (this.tlsActive) throw new MalformedOption('TLS is already active');
    if (this.queue.length !== 0) return this.fail('data pipelined after STARTTLS');
    this.state = 'tls';
    this.host.startTls(optionReply(P.NBD_OPT_STARTTLS, P.NBD_REP_ACK));
  }

  private onInfoOrGo(option: number, payload: Buffer): void {
    const reader = new OptionReader(payload);
    const name = reader.string(reader.u32());
    const requestCount = reader.u16();
    const requests = new Set<number>();
    for (let i = 0; i < requestCount; i++) requests.add(reader.u16());
    reader.end();

    const entry = name === '' ? undefined : this.config.lookupExport(name);
    if (entry === undefined) {
      return this.replyError(option, P.NBD_REP_ERR_UNKNOWN, name === '' ? 'there is no default export' : `no export named ${JSON.stringify(name)}`);
    }
    const device = entry.device;
    const exportInfo = Buffer.allocUnsafe(12);
    exportInfo.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
    writeUInt64BE(exportInfo, device.sizeBytes, 2);
    exportInfo.writeUInt16BE(transmissionFlags(device, this.structured), 10);
    this.host.send(optionReply(option, P.NBD_REP_INFO, exportInfo));
    if (requests.has(P.NBD_INFO_NAME)) this.sendInfoString(option, P.NBD_INFO_NAME, name);
    if (requests.has(P.NBD_INFO_DESCRIPTION) && entry.description) {
      this.sendInfoString(option, P.NBD_INFO_DESCRIPTION, entry.description);
    }
    // Sent even unrequested: our maximum differs from the default, so clients should know it.
    const blockSize = Buffer.allocUnsafe(14);
    blockSize.writeUInt16BE(P.NBD_INFO_BLOCK_SIZE, 0);
    blockSize.writeUInt32BE(1, 2);
    blockSize.writeUInt32BE(LIMITS.nbdPreferredBlockBytes, 6);
    blockSize.writeUInt32BE(LIMITS.nbdPayloadBytesMax, 10);
    this.host.send(optionReply(option, P.NBD_REP_INFO, blockSize));
    this.host.send(optionReply(option, P.NBD_REP_ACK));
    if (option === P.NBD_OPT_GO) this.finish(name, device);
  }

  private sendInfoString(option: number, infoType: number, text: string): void {
    const bytes = Buffer.from(text, 'utf8').subarray(0, P.NBD_STRING_BYTES_MAX);
    const data = Buffer.allocUnsafe(2 + bytes.length);
    data.writeUInt16BE(infoType, 0);
    bytes.copy(data, 2);
    this.host.send(optionReply(option, P.NBD_REP_INFO, data));
  }

  private onMetaContext(option: number, payload: Buffer): void {
    const isSet = option === P.NBD_OPT_SET_META_CONTEXT;
    if (isSet) {
      // SET replaces the selection even when it fails.
      this.contexts = [];
      this.contextsExportName = undefined;
    }
    if (!this.structured) return this.replyError(option, P.NBD_REP_ERR_INVALID, 'negotiate structured replies first');
    const reader = new OptionReader(payload);
    const name = reader.string(reader.u32());
    const queryCount = reader.u32();
    // Each query takes at least its 4-byte length: a larger count is a lie, not a big request.
    if (queryCount * 4 > reader.remaining) throw new MalformedOption('query count runs past the option');
    if (queryCount > LIMITS.nbdMetaContextQueriesMax) {
      return this.replyError(option, P.NBD_REP_ERR_TOO_BIG, `at most ${LIMITS.nbdMetaContextQueriesMax} queries`);
    }
    const queries: string[] = [];
    for (let i = 0; i < queryCount; i++) {
      const query = reader.string(reader.u32());
      if (!isWellFormedQuery(query)) throw new MalformedOption(`query ${JSON.stringify(query)} has no namespace`);
      queries.push(query);
    }
    reader.end();

    const entry = name === '' ? undefined : this.config.lookupExport(name);
    if (entry === undefined) return this.replyError(option, P.NBD_REP_ERR_UNKNOWN, `no export named ${JSON.stringify(name)}`);
    const registry = this.config.metaContexts;
    const found =
      !isSet && queries.length === 0 ? registry.all(entry.device) : registry.match(entry.device, queries, !isSet);
    const selected = found.map((context, i) => ({ id: isSet ? i + 1 : 0, context }));
    for (const { id, context } of selected) {
      const nameBytes = Buffer.from(context.name, 'utf8');
      const data = Buffer.allocUnsafe(4 + nameBytes.length);
      data.writeUInt32BE(id, 0);
      nameBytes.copy(data, 4);
      this.host.send(optionReply(option, P.NBD_REP_META_CONTEXT, data));
    }
    if (isSet) {
      this.contexts = selected;
      this.contextsExportName = name;
    }
    this.host.send(optionReply(option, P.NBD_REP_ACK));
  }

  private finish(exportName: string, device: BlockDevice): void {
    this.state = 'done';
    const contexts = this.contextsExportName === exportName ? this.contexts : [];
    this.host.enterTransmission({ exportName, device, structured: this.structured, contexts }, this.queue.drain());
  }

  private replyError(option: number, replyType: number, message: string): void {
    this.logger.debug({ option: P.OPTION_NAMES[option] ?? option, replyType, message }, 'nbd option refused');
    this.host.send(optionReply(option, replyType, Buffer.from(message, 'utf8')));
  }

  private fail(reason: string): void {
    this.state = 'done';
    this.host.disconnect(reason);
  }
}
