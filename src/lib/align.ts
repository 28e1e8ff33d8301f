/**
 * Splits a byte range into per-extent pieces. Every layer that walks a range extent by extent
 * uses this one helper, so head/body/tail handling is written once.
 */
import { assert, assertSafeInteger } from './assert.js';

export interface ExtentPiece {
  /** Logical extent index. */
  extentIndex: number;
  /** Offset of the piece within the extent, in bytes. */
  offsetInExtentBytes: number;
  /** Length of the piece, in bytes; equals the extent size when the piece covers it whole. */
  lengthBytes: number;
  /** Offset of the piece relative to the start of the whole range. */
  offsetInRangeBytes: number;
}

export function* splitByExtent(offsetBytes: number, lengthBytes: number, extentBytes: number): Generator<ExtentPiece> {
  assertSafeInteger(offsetBytes, 'offsetBytes');
  assertSafeInteger(lengthBytes, 'lengthBytes');
  assert(extentBytes > 0, 'extentBytes must be positive');
  let position = offsetBytes;
  const end = offsetBytes + lengthBytes;
  while (position < end) {
    const extentIndex = Math.floor(position / extentBytes);
    const offsetInExtentBytes = position - extentIndex * extentBytes;
    const pieceBytes = Math.min(extentBytes - offsetInExtentBytes, end - position);
    yield { extentIndex, offsetInExtentBytes, lengthBytes: pieceBytes, offsetInRangeBytes: position - offsetBytes };
    position += pieceBytes;
  }
}

export function isWholeExtent(piece: ExtentPiece, extentBytes: number): boolean {
  return piece.offsetInExtentBytes === 0 && piece.lengthBytes === extentBytes;
}
