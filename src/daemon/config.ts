/**
 * `thinarray serve` options → a checked DaemonConfig. Everything that can be wrong with the
 * command line is found here, before the daemon touches its home.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ThinError } from '../lib/errors.js';
import { isPowerOfTwo, parseSizeBytes } from '../lib/sizes.js';
import { LIMITS } from '../lib/limits.js';
import { homePaths, resolveHome } from './home.js';

export interface ListenAddress {
  host: string;
  port: number;
}

export interface TlsFiles {
  certPath: string;
  keyPath: string;
  /** Refuse clients that do not upgrade with STARTTLS. */
  required: boolean;
}

export interface DaemonConfig {
  home: string;
  nbdListen: ListenAddress;
  apiListen: ListenAddress;
  /** The only directories backups may read or write media under (SPEC §2.C). */
  mediaRoots: string[];
  /** Size of the pool file made on first start; undefined = the array's default. */
  poolFileBytes: number | undefined;
  /** Extent size of a new pool; undefined = the array's default. Ignored for an existing pool. */
  extentBytes: number | undefined;
  tls: TlsFiles | undefined;
  logLevel: string;
}

export interface ServeOptions {
  home?: string;
  nbdListen?: string;
  apiListen?: string;
  mediaRoot?: string[];
  poolSize?: string;
  extentSize?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsRequired?: boolean;
  logLevel?: string;
}

export const DEFAULT_NBD_LISTEN = '127.0.0.1:10809';
export const DEFAULT_API_LISTEN = '127.0.0.1:7480';
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function buildDaemonConfig(options: ServeOptions): DaemonConfig {
  const home = resolveHome(options.home);
  const mediaRoots = options.mediaRoot?.length ? options.mediaRoot.map((root) => resolve(root)) : [homePaths(home).defaultMediaRoot];
  return {
    home,
    nbdListen: parseListenAddress(options.nbdListen ?? DEFAULT_NBD_LISTEN, '--nbd-listen'),
    apiListen: parseListenAddress(options.apiListen ?? DEFAULT_API_LISTEN, '--api-listen'),
    mediaRoots,
    poolFileBytes: options.poolSize === undefined ? undefined : parseSizeBytes(options.poolSize, '--pool-size'),
    extentBytes: options.extentSize === undefined ? undefined : parseExtentBytes(options.extentSize),
    tls: buildTlsFiles(options),
    logLevel: parseLogLevel(options.logLevel ?? process.env['THINARRAY_LOG_LEVEL'] ?? 'info'),
  };
}

/** "HOST:PORT", "[v6addr]:PORT" or ":PORT" (loopback). Port 0 = any free port. */
export function parseListenAddress(text: string, field: string): ListenAddress {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) {
    throw new ThinError('INVALID_ARGUMENT', `${field}: expected HOST:PORT (e.g. 127.0.0.1:7480, [::1]:7480), got "${text}"`, { field });
  }
  const host = match[1] ?? match[2] ?? '';
  return { host: host === '' ? '127.0.0.1' : host, port };
}

function parseExtentBytes(text: string): number {
  const extentBytes = parseSizeBytes(text, '--extent-size');
  if (!isPowerOfTwo(extentBytes) || extentBytes < LIMITS.extentBytesMin || extentBytes > LIMITS.extentBytesMax) {
    throw new ThinError('INVALID_ARGUMENT', `--extent-size: must be a power of two from 4K to 4M, got ${text}`, { field: '--extent-size' });
  }
  return extentBytes;
}

function buildTlsFiles(options: ServeOptions): TlsFiles | undefined {
  if (options.tlsCert === undefined && options.tlsKey === undefined) {
    if (options.tlsRequired) throw new ThinError('INVALID_ARGUMENT', '--tls-required needs --tls-cert and --tls-key', { field: '--tls-required' });
    return undefined;
  }
  if (options.tlsCert === undefined || options.tlsKey === undefined) {
    throw new ThinError('INVALID_ARGUMENT', '--tls-cert and --tls-key go together', { field: options.tlsCert ? '--tls-key' : '--tls-cert' });
  }
  return { certPath: resolve(options.tlsCert), keyPath: resolve(options.tlsKey), required: options.tlsRequired ?? false };
}

function parseLogLevel(level: string): string {
  if (!LOG_LEVELS.includes(level)) {
    throw new ThinError('INVALID_ARGUMENT', `--log-level: expected one of ${LOG_LEVELS.join(', ')}, got "${level}"`, { field: '--log-level' });
  }
  return level;
}

export function readTlsFiles(tls: TlsFiles): { cert: Buffer; key: Buffer; required: boolean } {
  const read = (path: string, what: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (error) {
      throw new ThinError('INVALID_ARGUMENT', `cannot read the TLS ${what} ${path}: ${(error as Error).message}`, { cause: error });
    }
  };
  return { cert: read(tls.certPath, 'certificate'), key: read(tls.keyPath, 'key'), required: tls.required };
}
