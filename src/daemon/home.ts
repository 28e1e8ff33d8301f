/**
 * The daemon's home directory: where its files live and how they are read and written.
 * The CLI reads `token` and `daemon.json` from here too, so the file names and the daemon.json
 * shape are shared by both sides through this module.
 *
 *   <home>/meta.db, <home>/pool/   the array (owned by src/array)
 *   <home>/token                   bearer token, mode 0600, made on first start
 *   <home>/daemon.json             where the running daemon listens (removed at clean shutdown)
 *   <home>/daemon.pid              the lock: pid of the daemon using this home
 *   <home>/thinarray.log           pino JSON log
 *   <home>/media/                  default media root
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync, chmodSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ThinError } from '../lib/errors.js';

export const DEFAULT_HOME = './thinarray-data';

export interface HomePaths {
  home: string;
  token: string;
  daemonInfo: string;
  pidLock: string;
  log: string;
  defaultMediaRoot: string;
}

export interface DaemonInfo {
  pid: number;
  nbd: { host: string; port: number };
  api: { url: string };
  startedAt: string;
}

/** `--home`, else THINARRAY_HOME, else ./thinarray-data; always absolute. */
export function resolveHome(homeOption: string | undefined, environment: NodeJS.ProcessEnv = process.env): string {
  return resolve(homeOption ?? environment['THINARRAY_HOME'] ?? DEFAULT_HOME);
}

export function homePaths(home: string): HomePaths {
  return {
    home,
    token: join(home, 'token'),
    daemonInfo: join(home, 'daemon.json'),
    pidLock: join(home, 'daemon.pid'),
    log: join(home, 'thinarray.log'),
    defaultMediaRoot: join(home, 'media'),
  };
}

/** Creates the home (0700: it holds the token) when missing. */
export function ensureHomeDirectory(home: string): void {
  mkdirSync(home, { recursive: true, mode: 0o700 });
}

/**
 * Returns the token, making one on first start. 32 random bytes as hex; written with mode 0600
 * and exclusive create so a concurrent first start cannot leave two different tokens around.
 */
export function ensureToken(paths: HomePaths): string {
  try {
    writeFileSync(paths.token, randomBytes(32).toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  // The umask may have widened nothing, but a token restored from a backup might be 0644.
  if ((statSync(paths.token).mode & 0o077) !== 0) chmodSync(paths.token, 0o600);
  return readToken(paths.token);
}

export function readToken(tokenPath: string): string {
  const token = readFileSync(tokenPath, 'utf8').trim();
  if (token === '') throw new ThinError('INVALID_ARGUMENT', `the token file ${tokenPath} is empty`);
  return token;
}

/** Write to a temporary name, then rename: readers see the old file or the whole new one. */
export function writeDaemonInfo(paths: HomePaths, info: DaemonInfo): void {
  const temporaryPath = `${paths.daemonInfo}.${process.pid}.tmp`;
  writeFileSync(temporaryPath, JSON.stringify(info, null, 2) + '\n', { mode: 0o644 });
  renameSync(temporaryPath, paths.daemonInfo);
}

/** The running daemon's addresses, or undefined when there is no readable daemon.json. */
export function readDaemonInfo(daemonInfoPath: string): DaemonInfo | undefined {
  try {
    return JSON.parse(readFileSync(daemonInfoPath, 'utf8')) as DaemonInfo;
  } catch {
    return undefined;
  }
}

export function removeDaemonInfo(paths: HomePaths): void {
  rmSync(paths.daemonInfo, { force: true });
}
