/** NBD-only limits not (yet) in src/lib/limits.ts, each with its reason; candidates to move there. */
import { MiB } from '../lib/sizes.js';

export const NBD_LIMITS = {
  /**
   * A WRITE whose length is over the maximum block size but at most this is read and discarded,
   * then failed with EINVAL, so a confused client keeps its connection. Beyond it the payload
   * costs more than the connection is worth and we disconnect (the spec allows it above 32 MiB).
   */
  nbdWriteDiscardBytesMax: 128 * MiB,
  /**
   * An option longer than LIMITS.nbdOptionBytesMax but at most this is skipped without
   * buffering and answered NBD_REP_ERR_TOO_BIG; a longer one disconnects.
   */
  nbdOptionDiscardBytesMax: 16 * MiB,
  /** Options one handshake may send before we hang up (a client looping on options is broken). */
  nbdHandshakeOptionsMax: 1024,
  /** A client that has not finished the handshake after this long is disconnected. */
  nbdHandshakeTimeoutMs: 60_000,
  /**
   * READ and WRITE bytes a connection may have in progress; beyond it we stop reading the socket
   * (with LIMITS.nbdInflightRequestsMax, this bounds a connection's buffers to about this much).
   */
  nbdInflightBytesMax: 256 * MiB,
  /** Reply bytes queued in the socket before we stop reading requests (a client not reading). */
  nbdReplyQueuedBytesMax: 64 * MiB,
  /** NbdServer.close() waits this long for connections to answer what is in flight, then cuts them. */
  nbdCloseGraceMs: 30_000,
  /** Longest human-readable message we put in an error reply. */
  nbdErrorMessageBytesMax: 1024,
} as const;
