/** A fixed-size bitmap over 32-bit words, with a fast search for the next clear bit. */
import { assert } from './assert.js';

export class Bitmap {
  readonly bitCount: number;
  readonly words: Uint32Array;
  #setCount = 0;

  constructor(bitCount: number, words?: Uint32Array) {
    assert(Number.isSafeInteger(bitCount) && bitCount >= 0, 'bitCount must be a non-negative integer');
    this.bitCount = bitCount;
    const wordCount = Math.ceil(bitCount / 32);
    if (words) {
      assert(words.length === wordCount, 'bitmap words do not match bitCount');
      this.words = words;
      this.#setCount = countSetBits(words);
    } else {
      this.words = new Uint32Array(wordCount);
    }
  }

  get setCount(): number {
    return this.#setCount;
  }

  get(bit: number): boolean {
    assert(bit >= 0 && bit < this.bitCount, `bit ${bit} out of range ${this.bitCount}`);
    return ((this.words[bit >>> 5]! >>> (bit & 31)) & 1) === 1;
  }

  set(bit: number): void {
    assert(!this.get(bit), `bit ${bit} already set`);
    this.words[bit >>> 5]! |= 1 << (bit & 31);
    this.#setCount++;
  }

  clear(bit: number): void {
    assert(this.get(bit), `bit ${bit} already clear`);
    this.words[bit >>> 5]! &= ~(1 << (bit & 31));
    this.#setCount--;
  }

  /** First clear bit at or after `fromBit`, wrapping around once; -1 when every bit is set. */
  findClear(fromBit: number): number {
    if (this.#setCount >= this.bitCount) return -1;
    if (fromBit >= this.bitCount) fromBit = 0; // past the end: the wrap-around, straight away
    const wordCount = this.words.length;
    const startWord = Math.min(fromBit >>> 5, Math.max(wordCount - 1, 0));
    for (let step = 0; step <= wordCount; step++) {
      const wordIndex = (startWord + step) % wordCount;
      // The first visit to the start word ignores the bits below fromBit; the wrap-around's second visit does not.
      const ignoredLowBits = step === 0 ? fromBit & 31 : 0;
      const word = (this.words[wordIndex]! | ((1 << ignoredLowBits) - 1)) >>> 0;
      if (word === 0xffff_ffff) continue;
      for (let bitInWord = 0; bitInWord < 32; bitInWord++) {
        const bit = wordIndex * 32 + bitInWord;
        if (bit >= this.bitCount) break;
        if (((word >>> bitInWord) & 1) === 0) return bit;
      }
    }
    return -1;
  }
}

export function countSetBits(words: Uint32Array): number {
  let count = 0;
  for (let i = 0; i < words.length; i++) {
    let v = words[i]!;
    v = v - ((v >>> 1) & 0x5555_5555);
    v = (v & 0x3333_3333) + ((v >>> 2) & 0x3333_3333);
    count += (((v + (v >>> 4)) & 0x0f0f_0f0f) * 0x0101_0101) >>> 24;
  }
  return count;
}
