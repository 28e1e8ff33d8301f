/**
 * Accepted connections read into buffers the connection chooses (net.Socket's `onread` option),
 * not into a fresh Buffer per read.
 *
 * Why: a fresh 64 KiB Buffer per socket read is external memory to V8, and V8 starts a
 * mark-compact every ~64 MiB of it. At 2 GB/s of NBD writes that was 40 full collections and 80
 * scavenges a second ("external memory pressure" in --trace-gc), and the collector took 14% of
 * the daemon's main thread. With `onread`, a WRITE payload is read by the kernel straight into the
 * request's recycled buffer (src/lib/buffer-pool.ts), and everything else into one reusable slab.
 *
 * net.Server cannot pass `onread` to the sockets it accepts, so the server accepts with
 * pauseOnConnect (nothing read yet) and the accepted handle moves into a socket made with it.
 * That uses `_handle`, which is not public API; it is contained here, and the NBD tests cover it
 * with real clients (plain and STARTTLS, where TLS takes the handle over as before).
 */
import { Socket } from 'node:net';

export interface UserBufferReader {
  /** The buffer the next read fills (called after every read, and once at the start). */
  nextReadBuffer(): Buffer;
  /** `bytes` were read into the start of `buffer`, the one nextReadBuffer returned last. */
  onRead(bytes: number, buffer: Buffer): void;
}

/** Internal fields of net.Socket this module relies on (Node 20–24). */
interface SocketInternals {
  _handle: object | null;
}

/**
 * A socket on `accepted`'s connection that reads through `reader` (asked for its first buffer
 * at once). `accepted` must come from a server with pauseOnConnect: true and must not be used
 * afterwards.
 */
export function adoptWithUserBuffers(accepted: Socket, reader: UserBufferReader): Socket {
  const internals = accepted as unknown as SocketInternals;
  const handle = internals._handle;
  if (handle === null) throw new Error('adoptWithUserBuffers: the accepted socket has no handle (already closed)');
  // Detach first: destroying `accepted` then neither closes the handle nor reads from it, and it
  // still tells the server that this connection left its count.
  internals._handle = null;
  accepted.destroy();
  return new Socket({
    handle,
    allowHalfOpen: true,
    readable: true,
    writable: true,
    onread: {
      buffer: () => reader.nextReadBuffer(),
      callback: (bytes: number, buffer: Uint8Array) => {
        reader.onRead(bytes, buffer as Buffer);
        return true; // flow control pauses the socket itself (socket.pause() works in this mode)
      },
    },
  } as unknown as ConstructorParameters<typeof Socket>[0]);
}
