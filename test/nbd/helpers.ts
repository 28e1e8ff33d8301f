/** Test helpers: a server on a free port with in-memory exports, real-tool runners, and a raw protocol client. */
import { execFile } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { silentLogger } from '../../src/lib/log.js';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.js';
import * as P from '../../src/nbd/protocol.js';
import { MemoryDevice } from './memory-device.js';

export interface TestServer {
  server: NbdServer;
  port: number;
  exports: Map<string, MemoryDevice>;
  uri(name: string): string;
  close(): Promise<void>;
}

export async function startServer(
  exports: Record<string, MemoryDevice>,
  extra: Partial<NbdServerOptions> = {},
): Promise<TestServer> {
  const map = new Map(Object.entries(exports));
  const server = new NbdServer({
    lookupExport: (name) => {
      const device = map.get(name);
      return device === undefined ? undefined : { device, description: `test export ${name}` };
    },
    listExports: () => [...map.keys()],
    logger: silentLogger(),
    ...extra,
  });
  const { port } = await server.listen('127.0.0.1', 0);
  return {
    server,
    port,
    exports: map,
    uri: (name) => `nbd://127.0.0.1:${port}/${name}`,
    close: () => server.close(),
  };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a real client; never rejects on a non-zero exit (tests look at the code). */
export function run(file: string, args: string[], timeoutMs = 30_000): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

/** qemu-io exits 0 even when a pattern check fails, so the output is inspected as well. */
export async function qemuIo(uri: string, commands: string[], extraArgs: string[] = []): Promise<RunResult> {
  const args = ['-f', 'raw', ...extraArgs, uri];
  for (const command of commands) args.push('-c', command);
  return run('qemu-io', args);
}

export function qemuIoFailed(result: RunResult): boolean {
  const text = result.stdout + result.stderr;
  return result.code !== 0 || /Pattern verification failed|failed:|error/i.test(text);
}

// ---- Raw protocol client ---------------------------------------------------------------------

export class RawClient {
  readonly socket: Socket;
  private buffered = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  ended = false;
  readonly closed: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.setNoDelay(true); // pipelined requests must not wait for Nagle
    socket.on('data', (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
      this.wake();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      }),
    );
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
  }

  /** A client over an already connected socket (e.g. the TLS socket after STARTTLS). */
  static wrap(socket: Socket): RawClient {
    return new RawClient(socket);
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  /** Exactly `count` bytes, or undefined if the server closed first. */
  async read(count: number, timeoutMs = 5000): Promise<Buffer | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered.length < count) {
      if (this.ended) return undefined;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} bytes (have ${this.buffered.length})`);
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 50);
      });
    }
    const out = this.buffered.subarray(0, count);
    this.buffered = this.buffered.subarray(count);
    return out;
  }

  /** Resolves true when the server closes the connection within the time. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const timer = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), timeoutMs));
    return Promise.race([this.closed.then(() => true), timer]);
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Reads the greeting and answers with client flags. */
  async greet(clientFlags = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const greeting = await this.read(18);
    if (greeting === undefined) throw new Error('no greeting');
    if (greeting.readBigUInt64BE(0) !== P.NBD_MAGIC || greeting.readBigUInt64BE(8) !== P.NBD_IHAVEOPT) throw new Error('bad greeting');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags);
    this.write(flags);
    return greeting.readUInt16BE(16);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(P.NBD_IHAVEOPT, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(lengthOverride ?? data.length, 12);
    this.write(Buffer.concat([header, data]));
  }

  /** One option reply: { option, type, data }, or undefined if the server closed. */
  async readOptionReply(): Promise<{ option: number; type: number; data: Buffer } | undefined> {
    const header = await this.read(20);
    if (header === undefined) return undefined;
    if (header.readBigUInt64BE(0) !== P.NBD_REP_MAGIC) throw new Error('bad option reply magic');
    const length = header.readUInt32BE(16);
    const data = length === 0 ? Buffer.alloc(0) : await this.read(length);
    if (data === undefined) return undefined;
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data };
  }

  /** Replies up to and including the final one (ACK or error). */
  async readOptionReplies(): Promise<{ option: number; type: number; data: Buffer }[]> {
    const replies = [];
    for (;;) {
      const reply = await this.readOptionReply();
      if (reply === undefined) throw new Error('server closed during option replies');
      replies.push(reply);
      if (reply.type === P.NBD_REP_ACK || reply.type >= P.NBD_REP_FLAG_ERROR) return replies;
    }
  }

  /** Negotiates (optionally structured replies and base:allocation) and enters transmission with GO. */
  async go(name: string, options: { structured?: boolean; metaContexts?: string[] } = {}): Promise<{ size: number; flags: number }> {
    await this.greet();
    if (options.structured) {
      this.sendOption(P.NBD_OPT_STRUCTURED_REPLY);
      const [reply] = await this.readOptionReplies();
      if (reply!.type !== P.NBD_REP_ACK) throw new Error('structured replies refused');
    }
    if (options.metaContexts) {
      this.sendOption(P.NBD_OPT_SET_META_CONTEXT, metaContextPayload(name, options.metaContexts));
      await this.readOptionReplies();
    }
    this.sendOption(P.NBD_OPT_GO, infoPayload(name, []));
    const replies = await this.readOptionReplies();
    const last = replies[replies.length - 1]!;
    if (last.type !== P.NBD_REP_ACK) throw new Error(`GO refused: ${last.type}`);
    const exportInfo = replies.find((r) => r.type === P.NBD_REP_INFO && r.data.readUInt16BE(0) === P.NBD_INFO_EXPORT)!;
    return { size: Number(exportInfo.data.readBigUInt64BE(2)), flags: exportInfo.data.readUInt16BE(10) };
  }

  sendRequest(type: number, handle: bigint, offset: number, length: number, flags = 0, payload?: Buffer, magic = P.NBD_REQUEST_MAGIC): void {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(magic, 0);
    header.writeUInt16BE(flags, 4);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(handle, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    this.write(payload ? Buffer.concat([header, payload]) : header);
  }

  /** A simple reply; `dataBytes` is read after it when the error is 0. */
  async readSimpleReply(dataBytes = 0): Promise<{ errno: number; handle: bigint; data?: Buffer } | undefined> {
    const header = await this.read(16);
    if (header === undefined) return undefined;
    if (header.readUInt32BE(0) !== P.NBD_SIMPLE_REPLY_MAGIC) throw new Error(`bad simple reply magic ${header.readUInt32BE(0).toString(16)}`);
    const errno = header.readUInt32BE(4);
    const handle = header.readBigUInt64BE(8);
    if (errno !== 0 || dataBytes === 0) return { errno, handle };
    const data = await this.read(dataBytes);
    return data === undefined ? undefined : { errno, handle, data };
  }

  /** One structured chunk (or a simple reply, reported with type -1). */
  async readChunk(): Promise<{ flags: number; type: number; handle: bigint; payload: Buffer; errno: number } | undefined> {
    const magicBytes = await this.read(4);
    if (magicBytes === undefined) return undefined;
    const magic = magicBytes.readUInt32BE(0);
    if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
      const rest = await this.read(12);
      if (rest === undefined) return undefined;
      return { flags: P.NBD_REPLY_FLAG_DONE, type: -1, handle: rest.readBigUInt64BE(4), payload: Buffer.alloc(0), errno: rest.readUInt32BE(0) };
    }
    if (magic !== P.NBD_STRUCTURED_REPLY_MAGIC) throw new Error(`bad reply magic ${magic.toString(16)}`);
    const rest = await this.read(16);
    if (rest === undefined) return undefined;
    const length = rest.readUInt32BE(12);
    const payload = length === 0 ? Buffer.alloc(0) : await this.read(length);
    if (payload === undefined) return undefined;
    const type = rest.readUInt16BE(2);
    const errno = (type & 0x8000) !== 0 ? payload.readUInt32BE(0) : 0;
    return { flags: rest.readUInt16BE(0), type, handle: rest.readBigUInt64BE(4), payload, errno };
  }
}

export function infoPayload(name: string, infos: number[]): Buffer {
  const nameBytes = Buffer.from(name);
  const out = Buffer.alloc(4 + nameBytes.length + 2 + 2 * infos.length);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  out.writeUInt16BE(infos.length, 4 + nameBytes.length);
  infos.forEach((info, i) => out.writeUInt16BE(info, 6 + nameBytes.length + 2 * i));
  return out;
}

export function metaContextPayload(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const u32 = (value: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(value);
    return b;
  };
  parts.push(u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length));
  for (const query of queries) parts.push(u32(Buffer.byteLength(query)), Buffer.from(query));
  return Buffer.concat(parts);
}

/** A pattern that differs at every byte position, so misplaced data is caught. */
export function patternBytes(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return out;
}
