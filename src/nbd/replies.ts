/** Encoders for option replies and transmission replies; each returns a fresh buffer to hand to socket.write. */
import { LIMITS } from '../lib/limits.js';
import {
  NBD_OPTION_REPLY_HEADER_BYTES,
  NBD_REP_MAGIC,
  NBD_SIMPLE_REPLY_BYTES,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_HEADER_BYTES,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBD_OFFSET_DATA_PREFIX_BYTES,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_FLAG_DONE,
} from './protocol.js';
import type { StatusDescriptor } from './meta-contexts.js';

const TWO_POW_32 = 2 ** 32;

export function writeUInt64BE(target: Buffer, value: number, offset: number): void {
  target.writeUInt32BE(Math.floor(value / TWO_POW_32), offset);
  target.writeUInt32BE(value % TWO_POW_32, offset + 4);
}

/** Human-readable text for an error payload, cut to a bound on a UTF-8 boundary. */
export function messageBytes(message: string): Buffer {
  const bytes = Buffer.from(message, 'utf8');
  if (bytes.length <= LIMITS.nbdErrorMessageBytesMax) return bytes;
  let end = LIMITS.nbdErrorMessageBytesMax;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--; // do not split a multi-byte character
  return bytes.subarray(0, end);
}

// ---- Handshake -------------------------------------------------------------------------------

export function optionReply(option: number, replyType: number, data?: Buffer): Buffer {
  const dataBytes = data?.length ?? 0;
  const out = Buffer.allocUnsafe(NBD_OPTION_REPLY_HEADER_BYTES + dataBytes);
  out.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  out.writeUInt32BE(option, 8);
  out.writeUInt32BE(replyType, 12);
  out.writeUInt32BE(dataBytes, 16);
  if (data !== undefined) data.copy(out, NBD_OPTION_REPLY_HEADER_BYTES);
  return out;
}

// ---- Transmission ----------------------------------------------------------------------------
// Small headers come from Buffer.allocUnsafe, which carves them out of Node's shared slab: a
// bump allocation, no zeroing, and nothing to track until the socket has flushed them (reusing
// one header buffer per connection would need exactly that tracking).

export function simpleReply(errno: number, handleHi: number, handleLo: number): Buffer {
  const out = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_BYTES);
  out.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  out.writeUInt32BE(errno, 4);
  out.writeUInt32BE(handleHi, 8);
  out.writeUInt32BE(handleLo, 12);
  return out;
}

function writeStructuredHeader(
  out: Buffer,
  flags: number,
  type: number,
  handleHi: number,
  handleLo: number,
  payloadBytes: number,
): void {
  out.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  out.writeUInt16BE(flags, 4);
  out.writeUInt16BE(type, 6);
  out.writeUInt32BE(handleHi, 8);
  out.writeUInt32BE(handleLo, 12);
  out.writeUInt32BE(payloadBytes, 16);
}

/** Header of a final OFFSET_DATA chunk; the data follows in a separate write (never copied). */
export function readChunkHeader(handleHi: number, handleLo: number, offsetBytes: number, dataBytes: number): Buffer {
  const out = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_BYTES + NBD_OFFSET_DATA_PREFIX_BYTES);
  writeStructuredHeader(
    out,
    NBD_REPLY_FLAG_DONE,
    NBD_REPLY_TYPE_OFFSET_DATA,
    handleHi,
    handleLo,
    NBD_OFFSET_DATA_PREFIX_BYTES + dataBytes,
  );
  writeUInt64BE(out, offsetBytes, NBD_STRUCTURED_REPLY_HEADER_BYTES);
  return out;
}

/** A final NBD_REPLY_TYPE_ERROR chunk carrying the errno and a message. */
export function errorChunk(handleHi: number, handleLo: number, errno: number, message: string): Buffer {
  const text = messageBytes(message);
  const out = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_BYTES + 6 + text.length);
  writeStructuredHeader(out, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, handleHi, handleLo, 6 + text.length);
  out.writeUInt32BE(errno, NBD_STRUCTURED_REPLY_HEADER_BYTES);
  out.writeUInt16BE(text.length, NBD_STRUCTURED_REPLY_HEADER_BYTES + 4);
  text.copy(out, NBD_STRUCTURED_REPLY_HEADER_BYTES + 6);
  return out;
}

/** One BLOCK_STATUS chunk for one context; `descriptors` is non-empty. */
export function blockStatusChunk(
  handleHi: number,
  handleLo: number,
  done: boolean,
  contextId: number,
  descriptors: readonly StatusDescriptor[],
): Buffer {
  const payloadBytes = 4 + 8 * descriptors.length;
  const out = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
  writeStructuredHeader(out, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS, handleHi, handleLo, payloadBytes);
  let at = NBD_STRUCTURED_REPLY_HEADER_BYTES;
  out.writeUInt32BE(contextId, at);
  at += 4;
  for (const descriptor of descriptors) {
    out.writeUInt32BE(descriptor.lengthBytes, at);
    out.writeUInt32BE(descriptor.flags, at + 4);
    at += 8;
  }
  return out;
}
