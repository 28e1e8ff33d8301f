/**
 * dir:PATH — the stream split across fixed-size cartridge files PATH/<backupId>.0001, .0002, …
 * Each cartridge starts with a 128-byte label (magic, backup id, cartridge number, cartridge
 * size, stream offset), so a missing, swapped or foreign cartridge is named when it is read.
 * Every cartridge but the last is exactly the cartridge size; a stream that would end exactly at
 * the end of a cartridge gets one more, label-only cartridge, so "this one is full" always means
 * "another follows" and a lost last cartridge is never mistaken for the end.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../../lib/errors.js';
import { BackupCorruptError } from '../format/corrupt.js';
import { crc32, hex32, readU64, writeU64 } from '../format/layout.js';
import { BACKUP_LIMITS } from '../format/limits.js';
import { SequentialFileReader, SequentialFileWriter } from './file-medium.js';
import { mediumError, type MediumReader, type MediumWriter } from './medium.js';

export const CARTRIDGE_MAGIC = Buffer.from('THINCART', 'latin1');
export const LABEL_VERSION = 1;
export const LABEL_BYTES = 128;
const LABEL = {
  magic: 0,
  version: 8, // u16
  labelBytes: 10, // u16
  cartridgeNumber: 12, // u32, from 1
  cartridgeBytes: 16, // u64, label included
  streamOffset: 24, // u64, stream offset of the first byte after the label
  backupId: 32, // 64 bytes UTF-8, NUL padded
  crc: 124, // CRC-32 of bytes 0..124
} as const;
const BACKUP_ID_FIELD_BYTES = 64;

export function cartridgeFileName(backupId: string, cartridgeNumber: number): string {
  return `${backupId}.${String(cartridgeNumber).padStart(4, '0')}`;
}

export interface CartridgeLabel {
  cartridgeNumber: number;
  cartridgeBytes: number;
  streamOffset: number;
  backupId: string;
}

export function renderLabel(label: CartridgeLabel): Buffer {
  const bytes = Buffer.alloc(LABEL_BYTES);
  CARTRIDGE_MAGIC.copy(bytes, LABEL.magic);
  bytes.writeUInt16LE(LABEL_VERSION, LABEL.version);
  bytes.writeUInt16LE(LABEL_BYTES, LABEL.labelBytes);
  bytes.writeUInt32LE(label.cartridgeNumber, LABEL.cartridgeNumber);
  writeU64(bytes, label.cartridgeBytes, LABEL.cartridgeBytes);
  writeU64(bytes, label.streamOffset, LABEL.streamOffset);
  bytes.write(label.backupId, LABEL.backupId, BACKUP_ID_FIELD_BYTES, 'utf8');
  bytes.writeUInt32LE(crc32(bytes.subarray(0, LABEL.crc)), LABEL.crc);
  return bytes;
}

/** Parses a label; returns what is wrong with it instead when it is not a good one. */
export function parseLabel(bytes: Buffer): CartridgeLabel | string {
  if (!bytes.subarray(0, 8).equals(CARTRIDGE_MAGIC)) return 'not a thinarray cartridge (label magic "THINCART" missing)';
  const stored = bytes.readUInt32LE(LABEL.crc);
  const computed = crc32(bytes.subarray(0, LABEL.crc));
  if (stored !== computed) return `cartridge label fails its CRC-32 (stored ${hex32(stored)}, computed ${hex32(computed)})`;
  const version = bytes.readUInt16LE(LABEL.version);
  if (version !== LABEL_VERSION || bytes.readUInt16LE(LABEL.labelBytes) !== LABEL_BYTES) return `cartridge label version ${version} is not supported`;
  const idBytes = bytes.subarray(LABEL.backupId, LABEL.backupId + BACKUP_ID_FIELD_BYTES);
  const idEnd = idBytes.indexOf(0);
  return {
    cartridgeNumber: bytes.readUInt32LE(LABEL.cartridgeNumber),
    cartridgeBytes: readU64(bytes, LABEL.cartridgeBytes),
    streamOffset: readU64(bytes, LABEL.streamOffset),
    backupId: idBytes.toString('utf8', 0, idEnd < 0 ? BACKUP_ID_FIELD_BYTES : idEnd),
  };
}

export interface DirWriterOptions {
  backupId: string;
  /** Size of each cartridge file, label included (`--media-size`). */
  cartridgeBytes: number;
}

export async function openDirWriter(dirPath: string, options: DirWriterOptions): Promise<MediumWriter> {
  const { backupId, cartridgeBytes } = options;
  if (!/^[A-Za-z0-9._-]+$/.test(backupId) || Buffer.byteLength(backupId) > BACKUP_ID_FIELD_BYTES) throw new ThinError('INVALID_ARGUMENT', `backup id ${JSON.stringify(backupId)} cannot name cartridge files`, { field: 'backupId' });
  if (!Number.isSafeInteger(cartridgeBytes) || cartridgeBytes < BACKUP_LIMITS.cartridgeBytesMin) {
    throw new ThinError('INVALID_ARGUMENT', `media size ${cartridgeBytes} must be a whole number of bytes of at least ${BACKUP_LIMITS.cartridgeBytesMin}`, { field: 'mediaSize' });
  }
  await expectDirectory(dirPath);
  const existing = (await fs.promises.readdir(dirPath)).filter((name) => name.startsWith(`${backupId}.`) && /^\d{4,}$/.test(name.slice(backupId.length + 1)));
  if (existing.length > 0) throw new ThinError('ALREADY_EXISTS', `dir:${dirPath} already holds cartridges of backup ${backupId} (${existing.sort()[0]}, …)`, { field: 'medium' });
  return new DirMediumWriter(dirPath, backupId, cartridgeBytes);
}

async function expectDirectory(dirPath: string): Promise<void> {
  let stats: fs.Stats;
  try {
    stats = await fs.promises.stat(dirPath);
  } catch (error) {
    throw mediumError(error, `dir:${dirPath}`, 'stat');
  }
  if (!stats.isDirectory()) throw new ThinError('INVALID_ARGUMENT', `dir:${dirPath} is not a directory`, { field: 'medium' });
}

class DirMediumWriter implements MediumWriter {
  // Set at creation.
  readonly #dirPath: string;
  readonly #backupId: string;
  readonly #cartridgeBytes: number;
  readonly #payloadBytesPerCartridge: number;

  // Changes during the run.
  #cartridge: SequentialFileWriter | null = null;
  #cartridgeNumber = 0;
  #payloadBytesInCartridge = 0;
  #bytesWritten = 0;
  /** Writes run one after another: each may close one cartridge and open the next. */
  #tail: Promise<void> = Promise.resolve();

  constructor(dirPath: string, backupId: string, cartridgeBytes: number) {
    this.#dirPath = dirPath;
    this.#backupId = backupId;
    this.#cartridgeBytes = cartridgeBytes;
    this.#payloadBytesPerCartridge = cartridgeBytes - LABEL_BYTES;
  }

  get description(): string {
    return `dir:${this.#dirPath} (backup ${this.#backupId}, cartridge ${this.#cartridgeNumber})`;
  }

  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  write(chunk: Buffer): Promise<void> {
    const result = this.#tail.then(() => this.#writeInOrder(chunk));
    this.#tail = result.catch(() => undefined);
    return result;
  }

  async close(): Promise<void> {
    await this.#tail;
    // A full last cartridge would look like "more follows": end on one that is not full.
    if (this.#cartridge === null || this.#payloadBytesInCartridge === this.#payloadBytesPerCartridge) await this.#nextCartridge();
    await this.#cartridge!.close();
    this.#cartridge = null;
  }

  async abort(): Promise<void> {
    await this.#tail;
    await this.#cartridge?.abort();
    this.#cartridge = null;
  }

  async #writeInOrder(chunk: Buffer): Promise<void> {
    let written = 0;
    while (written < chunk.length) {
      if (this.#cartridge === null || this.#payloadBytesInCartridge === this.#payloadBytesPerCartridge) await this.#nextCartridge();
      const take = Math.min(chunk.length - written, this.#payloadBytesPerCartridge - this.#payloadBytesInCartridge);
      await this.#cartridge!.write(chunk.subarray(written, written + take));
      written += take;
      this.#payloadBytesInCartridge += take;
      this.#bytesWritten += take;
    }
  }

  async #nextCartridge(): Promise<void> {
    if (this.#cartridge) await this.#cartridge.close();
    this.#cartridge = null;
    if (this.#cartridgeNumber >= BACKUP_LIMITS.cartridgesMax) throw new ThinError('NO_SPACE', `${this.description}: more than ${BACKUP_LIMITS.cartridgesMax} cartridges`);
    this.#cartridgeNumber++;
    const filePath = path.join(this.#dirPath, cartridgeFileName(this.#backupId, this.#cartridgeNumber));
    this.#cartridge = await SequentialFileWriter.open(filePath, this.description, 'wx', true);
    await this.#cartridge.write(renderLabel({ cartridgeNumber: this.#cartridgeNumber, cartridgeBytes: this.#cartridgeBytes, streamOffset: this.#bytesWritten, backupId: this.#backupId }));
    this.#payloadBytesInCartridge = 0;
  }
}

/** The backup ids that have a first cartridge in `dirPath`. */
export async function backupIdsInDir(dirPath: string): Promise<string[]> {
  await expectDirectory(dirPath);
  const names = await fs.promises.readdir(dirPath);
  return names.filter((name) => /\.0001$/.test(name)).map((name) => name.slice(0, -'.0001'.length)).sort();
}

/** Opens dir:PATH for reading; without a backup id the directory must hold exactly one backup. */
export async function openDirReader(dirPath: string, options: { backupId?: string } = {}): Promise<MediumReader & { readonly cartridgesRead: number }> {
  let backupId = options.backupId;
  if (backupId === undefined) {
    const ids = await backupIdsInDir(dirPath);
    if (ids.length === 0) throw new ThinError('NOT_FOUND', `dir:${dirPath} holds no cartridges (no *.0001 file)`, { field: 'medium' });
    if (ids.length > 1) throw new ThinError('INVALID_ARGUMENT', `dir:${dirPath} holds several backups (${ids.join(', ')}): name the one to read`, { field: 'backupId' });
    backupId = ids[0]!;
  }
  return new DirMediumReader(dirPath, backupId);
}

class DirMediumReader implements MediumReader {
  // Set at creation.
  readonly #dirPath: string;
  readonly #backupId: string;

  // Changes during the read.
  #cartridge: SequentialFileReader | null = null;
  #cartridgeNumber = 0;
  /** Size every cartridge but the last has: from the first label. */
  #cartridgeBytes = 0;
  /** Bytes of the current cartridge file read so far, label included. */
  #bytesInCartridge = 0;
  #bytesRead = 0;
  #ended = false;

  constructor(dirPath: string, backupId: string) {
    this.#dirPath = dirPath;
    this.#backupId = backupId;
  }

  get description(): string {
    return `dir:${this.#dirPath} (backup ${this.#backupId}, cartridge ${this.#cartridgeNumber})`;
  }

  get bytesRead(): number {
    return this.#bytesRead;
  }

  get cartridgesRead(): number {
    return this.#cartridgeNumber;
  }

  async read(): Promise<Buffer | null> {
    while (!this.#ended) {
      if (this.#cartridge === null) {
        const first = await this.#openCartridge(this.#cartridgeNumber + 1);
        if (first === null) return null;
        if (first.length > 0) return this.#deliver(first);
        continue;
      }
      const chunk = await this.#cartridge.read();
      if (chunk !== null) {
        this.#bytesInCartridge += chunk.length;
        this.#checkNotOversized();
        return this.#deliver(chunk);
      }
      await this.#endOfCartridge();
    }
    return null;
  }

  async close(): Promise<void> {
    this.#ended = true;
    await this.#cartridge?.close();
    this.#cartridge = null;
  }

  #deliver(chunk: Buffer): Buffer {
    this.#bytesRead += chunk.length;
    return chunk;
  }

  #checkNotOversized(): void {
    if (this.#bytesInCartridge > this.#cartridgeBytes) {
      throw this.#corrupt(`cartridge ${this.#cartridgeNumber} is longer than the ${this.#cartridgeBytes} bytes its label says`);
    }
  }

  /** A full cartridge means the stream goes on in the next; a short one is the last. */
  async #endOfCartridge(): Promise<void> {
    await this.#cartridge!.close();
    this.#cartridge = null;
    if (this.#bytesInCartridge === this.#cartridgeBytes) return;
    this.#ended = true;
    const nextName = cartridgeFileName(this.#backupId, this.#cartridgeNumber + 1);
    if (fs.existsSync(path.join(this.#dirPath, nextName))) {
      throw this.#corrupt(`cartridge ${this.#cartridgeNumber} is short (${this.#bytesInCartridge} of ${this.#cartridgeBytes} bytes) yet ${nextName} follows: cartridge ${this.#cartridgeNumber} is truncated`);
    }
  }

  /** Opens cartridge `number`, checks its label and returns the stream bytes that came with it (null: no more cartridges). */
  async #openCartridge(number: number): Promise<Buffer | null> {
    const name = cartridgeFileName(this.#backupId, number);
    const filePath = path.join(this.#dirPath, name);
    if (!fs.existsSync(filePath)) {
      if (number === 1) throw new ThinError('NOT_FOUND', `dir:${this.#dirPath} has no cartridge ${name}`, { field: 'medium' });
      throw this.#corrupt(`cartridge ${name} is missing: cartridge ${number - 1} is full, so the stream continues on cartridge ${number}`, number);
    }
    this.#cartridgeNumber = number;
    this.#cartridge = await SequentialFileReader.open(filePath, this.description);
    let head: Buffer = Buffer.alloc(0);
    while (head.length < LABEL_BYTES) {
      const chunk = await this.#cartridge.read();
      if (chunk === null) throw this.#corrupt(`cartridge ${name} is ${head.length} bytes long: too short for its ${LABEL_BYTES}-byte label`);
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
    }
    this.#checkLabel(head.subarray(0, LABEL_BYTES), name);
    this.#bytesInCartridge = head.length;
    this.#checkNotOversized();
    return head.subarray(LABEL_BYTES);
  }

  #checkLabel(bytes: Buffer, name: string): void {
    const label = parseLabel(bytes);
    if (typeof label === 'string') throw this.#corrupt(`${name}: ${label}`);
    if (label.backupId !== this.#backupId) throw this.#corrupt(`${name} belongs to backup ${label.backupId}, not ${this.#backupId} (a foreign cartridge)`);
    if (label.cartridgeNumber !== this.#cartridgeNumber) throw this.#corrupt(`${name} holds cartridge ${label.cartridgeNumber} of backup ${label.backupId}, not cartridge ${this.#cartridgeNumber} (cartridges swapped or renamed)`);
    if (this.#cartridgeNumber === 1) {
      if (label.cartridgeBytes < BACKUP_LIMITS.cartridgeBytesMin) throw this.#corrupt(`${name}: cartridge size ${label.cartridgeBytes} is too small`);
      this.#cartridgeBytes = label.cartridgeBytes;
    } else if (label.cartridgeBytes !== this.#cartridgeBytes) {
      throw this.#corrupt(`${name} says cartridges are ${label.cartridgeBytes} bytes; cartridge 1 says ${this.#cartridgeBytes}`);
    }
    if (label.streamOffset !== this.#bytesRead) throw this.#corrupt(`${name} starts at stream byte ${label.streamOffset}, but ${this.#bytesRead} bytes came before it`);
  }

  #corrupt(reason: string, cartridgeNumber = this.#cartridgeNumber): BackupCorruptError {
    return new BackupCorruptError({ offsetBytes: this.#bytesRead, section: `cartridge ${cartridgeNumber}` }, reason, `dir:${this.#dirPath} (backup ${this.#backupId})`);
  }
}
