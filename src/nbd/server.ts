/** The NBD server: listens on TCP, accepts connections and tracks them until they close. */
import { LIMITS } from '../lib/limits.js';
import { createServer, type Server, type Socket } from 'node:net';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { Logger } from '../lib/log.js';
import { NbdConnection } from './connection.js';
import type { NbdExport } from './handshake.js';
import { MetaContextRegistry } from './meta-contexts.js';
import type { NbdMetrics } from './transmission.js';

export type { NbdExport } from './handshake.js';
export type { NbdMetrics } from './transmission.js';

export interface NbdServerOptions {
  /** The export a client names; undefined refuses it. There is no default export. */
  lookupExport(name: string): NbdExport | undefined;
  listExports(): string[];
  logger: Logger;
  /** TLS with this key and certificate; `required` refuses every option but STARTTLS/ABORT before it. */
  tls?: { key: Buffer; cert: Buffer; required: boolean };
  metrics?: NbdMetrics;
  /** Meta contexts offered; defaults to base:allocation only. */
  metaContexts?: MetaContextRegistry;
  /** Defaults to LIMITS.nbdHandshakeTimeoutMs. */
  handshakeTimeoutMs?: number;
  /** How long close() waits for connections to drain before cutting them; LIMITS.nbdCloseGraceMs. */
  closeGraceMs?: number;
}

export class NbdServer {
  // ---- Set at creation, never changed.
  private readonly server: Server;
  private readonly connections = new Set<NbdConnection>();
  private readonly secureContext: SecureContext | undefined;
  private readonly metaContexts: MetaContextRegistry;

  // ---- Changes while serving.
  private readonly closeGraceMs: number;
  private nextConnectionId = 1;
  private closing = false;

  constructor(private readonly options: NbdServerOptions) {
    this.secureContext = options.tls ? createSecureContext({ key: options.tls.key, cert: options.tls.cert }) : undefined;
    this.metaContexts = options.metaContexts ?? new MetaContextRegistry();
    this.closeGraceMs = options.closeGraceMs ?? LIMITS.nbdCloseGraceMs;
    // Half-open: a client may send DISC and shut its side; we still owe it the in-flight replies.
    // pauseOnConnect: nothing is read before the connection takes the socket over (user-buffer-socket.ts).
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.onConnection(socket));
    this.server.on('error', (error) => options.logger.error({ err: error }, 'nbd server error'));
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Connections serving `exportName` read-write right now (a restore into it is refused). */
  writersOf(exportName: string): number {
    let writers = 0;
    for (const connection of this.connections) {
      if (connection.served?.exportName === exportName && connection.served.writable) writers++;
    }
    return writers;
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.removeListener('error', onError);
        const address = this.server.address();
        if (address === null || typeof address === 'string') return reject(new Error('nbd server has no TCP address'));
        this.options.logger.info({ host: address.address, port: address.port }, 'nbd server listening');
        resolve({ host: address.address, port: address.port });
      });
    });
  }

  /** Stops accepting, lets every connection finish its in-flight requests, then resolves. */
  async close(): Promise<void> {
    this.closing = true;
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const connections = [...this.connections];
    for (const connection of connections) connection.shutdown();
    const allClosed = Promise.all(connections.map((connection) => connection.closed));
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), this.closeGraceMs)));
    if ((await Promise.race([allClosed, graceOver])) === 'timeout') {
      this.options.logger.warn({ connections: this.connections.size }, 'nbd connections still open after the grace period');
      for (const connection of this.connections) connection.abort();
      await allClosed;
    }
    clearTimeout(timer);
    await stopped;
  }

  private onConnection(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const tls = this.options.tls;
    const connection = new NbdConnection(socket, this.nextConnectionId++, {
      handshake: {
        lookupExport: (name) => this.options.lookupExport(name),
        listExports: () => this.options.listExports(),
        metaContexts: this.metaContexts,
        tlsAvailable: tls !== undefined,
        tlsRequired: tls?.required ?? false,
      },
      secureContext: this.secureContext,
      metrics: this.options.metrics,
      handshakeTimeoutMs: this.options.handshakeTimeoutMs ?? LIMITS.nbdHandshakeTimeoutMs,
      logger: this.options.logger,
    });
    this.connections.add(connection);
    void connection.closed.then(() => this.connections.delete(connection));
    connection.start();
  }
}
