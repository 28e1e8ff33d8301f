/** One client connection: owns the socket (and its TLS upgrade), runs the handshake, then the transmission. */
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import { LIMITS } from '../lib/limits.js';
import type { Logger } from '../lib/log.js';
import { Handshake, type HandshakeConfig, type Negotiated } from './handshake.js';
import { Transmission, type NbdMetrics } from './transmission.js';
import { adoptWithUserBuffers, type UserBufferReader } from './user-buffer-socket.js';

export interface ConnectionOptions {
  handshake: HandshakeConfig;
  secureContext: SecureContext | undefined;
  metrics: NbdMetrics | undefined;
  handshakeTimeoutMs: number;
  logger: Logger;
}

type Phase = 'handshake' | 'transmission' | 'closing' | 'closed';

export class NbdConnection implements UserBufferReader {
  // ---- Set at creation, never changed.
  readonly closed: Promise<void>;
  private readonly logger: Logger;
  private readonly handshake: Handshake;
  private resolveClosed!: () => void;
  /** What plain-socket reads land in, except WRITE payloads, which are read straight into their own buffer. */
  private readonly readSlab = Buffer.allocUnsafeSlow(LIMITS.nbdReadSlabBytes);

  // ---- Changes during the connection's life.
  /** The plain socket, then the TLS socket wrapping it after STARTTLS. */
  private socket: Socket;
  private phase: Phase = 'handshake';
  private transmission: Transmission | undefined;
  /** The export being served and whether hosts may write it, once in transmission. */
  served: { exportName: string; writable: boolean } | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;

  /** `accepted` comes from a server with pauseOnConnect: its handle moves into this connection's own socket. */
  constructor(
    accepted: Socket,
    readonly id: number,
    private readonly options: ConnectionOptions,
  ) {
    this.logger = options.logger.child({ nbdConnection: id, remote: `${accepted.remoteAddress}:${accepted.remotePort}` });
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.handshake = new Handshake(options.handshake, this.handshakeHost(), this.logger);
    const socket = adoptWithUserBuffers(accepted, this);
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('close', this.onClose);
    socket.on('error', this.onError);
    this.listen(socket);
  }

  // ---- Reads of the plain socket (UserBufferReader); after STARTTLS, TLS owns the reads and emits 'data'.

  nextReadBuffer(): Buffer {
    return this.phase === 'transmission' ? this.transmission!.nextReadBuffer(this.readSlab) : this.readSlab;
  }

  onRead(bytes: number, buffer: Buffer): void {
    try {
      if (this.phase === 'transmission') this.transmission!.onRead(bytes, buffer, this.readSlab);
      // The handshake keeps what it receives, and the slab is reused: give it a copy.
      else if (this.phase === 'handshake') this.handshake.receive(Buffer.from(buffer.subarray(0, bytes)));
    } catch (error) {
      this.logger.error({ err: error }, 'nbd connection failed');
      this.disconnect('internal error');
    }
  }

  start(): void {
    this.logger.debug('nbd connection opened');
    this.handshakeTimer = setTimeout(() => this.disconnect('handshake timed out'), this.options.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    this.socket.write(this.handshake.greeting());
  }

  /** Server shutdown: finish in-flight requests, then close; a handshake in progress is cut. */
  shutdown(): void {
    if (this.phase === 'transmission') this.transmission!.stop();
    else if (this.phase === 'handshake') this.disconnect('server shutting down');
  }

  /** Server shutdown took too long (a client not reading its replies): cut the connection. */
  abort(): void {
    this.disconnect('server shutdown grace period over');
  }

  private listen(socket: Socket): void {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
  }

  // Arrow properties: bound once per connection, usable as listeners and removable.
  private readonly onData = (chunk: Buffer): void => {
    try {
      if (this.phase === 'handshake') this.handshake.receive(chunk);
      else if (this.phase === 'transmission') this.transmission!.receive(chunk);
    } catch (error) {
      // A bug in parsing must cost this connection only, never the process.
      this.logger.error({ err: error }, 'nbd connection failed');
      this.disconnect('internal error');
    }
  };

  /** The client half-closed: during transmission, answer what is in flight first. */
  private readonly onEnd = (): void => {
    if (this.phase === 'transmission') this.transmission!.stop();
    else if (this.phase === 'handshake') this.disconnect('client closed during the handshake');
  };

  private readonly onError = (error: Error): void => {
    this.logger.debug({ err: error }, 'nbd socket error');
  };

  private readonly onClose = (): void => {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    clearTimeout(this.handshakeTimer);
    this.transmission?.onSocketClosed();
    this.logger.debug('nbd connection closed');
    this.resolveClosed();
  };

  private handshakeHost() {
    return {
      send: (data: Buffer) => {
        if (this.phase !== 'closed') this.socket.write(data);
      },
      startTls: (ack: Buffer) => this.startTls(ack),
      enterTransmission: (negotiated: Negotiated, leftover: Buffer[]) => this.enterTransmission(negotiated, leftover),
      end: () => this.endGracefully(),
      disconnect: (reason: string) => this.disconnect(reason),
    };
  }

  private startTls(ack: Buffer): void {
    const raw = this.socket;
    raw.removeListener('data', this.onData);
    raw.removeListener('end', this.onEnd);
    raw.write(ack);
    // Wrapped in the same tick as the ACK is written: the client's ClientHello cannot be read
    // by the plain socket in between.
    const secure = new TLSSocket(raw, { isServer: true, secureContext: this.options.secureContext! });
    this.socket = secure;
    secure.on('error', (error) => {
      this.logger.info({ err: error }, 'nbd TLS failed');
      this.disconnect('TLS error');
    });
    secure.on('close', this.onClose);
    secure.once('secure', () => {
      this.logger.debug('nbd TLS established');
      this.handshake.onTlsReady();
    });
    this.listen(secure);
  }

  private enterTransmission(negotiated: Negotiated, leftover: Buffer[]): void {
    this.served = { exportName: negotiated.exportName, writable: !negotiated.device.readOnly };
    clearTimeout(this.handshakeTimer);
    this.logger.info(
      { export: negotiated.exportName, structured: negotiated.structured, contexts: negotiated.contexts.map((c) => c.context.name) },
      'nbd transmission started',
    );
    this.phase = 'transmission';
    this.transmission = new Transmission(
      this.socket,
      negotiated,
      { finished: () => this.endGracefully(), disconnect: (reason) => this.disconnect(reason) },
      this.logger,
      this.options.metrics,
    );
    for (const chunk of leftover) this.transmission.receive(chunk);
  }

  /** Soft end: everything written so far reaches the client, then the socket closes. */
  private endGracefully(): void {
    if (this.phase === 'closing' || this.phase === 'closed') return;
    this.phase = 'closing';
    const socket = this.socket;
    socket.end();
    // The client may never close its side; once our bytes are in the kernel, let go.
    socket.once('finish', () => socket.destroy());
  }

  /** Hard disconnect: a protocol violation, a timeout, or a fault in this connection. */
  private disconnect(reason: string): void {
    if (this.phase === 'closed') return;
    this.logger.info({ reason }, 'nbd connection dropped');
    this.phase = 'closing';
    this.socket.destroy();
  }
}
