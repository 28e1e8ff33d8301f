// Thin, bounded wrappers around the real tools the interop tests drive
// (qemu-io, qemu-img, nbdinfo, nbdcopy, fio): every call has a timeout and never hangs.

import { execFile, type ExecFileOptions } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants as fsConstants, createReadStream } from 'node:fs';
import { access, open } from 'node:fs/promises';
import { delimiter, join } from 'node:path';

/** Default bound for one tool invocation. */
export const TOOL_TIMEOUT_MS_DEFAULT = 60_000;
/** Output kept per stream; a tool printing more than this is a bug in the test. */
const TOOL_OUTPUT_BYTES_MAX = 64 * 1024 * 1024;

export interface RunResult {
  /** Exit code; -1 when the process was killed by a signal (including on timeout). */
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface RunOptions {
  timeoutMs?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Written to the child's stdin, which is then closed. Without it stdin is closed at once. */
  input?: string | Buffer;
}

/**
 * Runs a command to completion and resolves with its status and output. Never rejects for a
 * non-zero exit; rejects only when the command cannot be started at all (ENOENT and the like).
 * The child is SIGKILLed at timeoutMs, so the promise always settles.
 */
export function run(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = options.timeoutMs ?? TOOL_TIMEOUT_MS_DEFAULT;
  const execOptions: ExecFileOptions = {
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
    maxBuffer: TOOL_OUTPUT_BYTES_MAX,
    encoding: 'utf8',
    windowsHide: true,
  };
  if (options.cwd !== undefined) execOptions.cwd = options.cwd;
  if (options.env !== undefined) execOptions.env = options.env;
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, [...args], execOptions, (error, stdout, stderr) => {
      const out = String(stdout ?? '');
      const err = String(stderr ?? '');
      if (error === null) {
        resolve({ code: 0, signal: null, stdout: out, stderr: err, timedOut: false });
        return;
      }
      const e = error as NodeJS.ErrnoException & { code?: unknown; signal?: NodeJS.Signals | null; killed?: boolean };
      if (typeof e.code === 'string' && e.code !== 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') {
        // Spawn failure (ENOENT, EACCES, ...): the command never ran.
        reject(new Error(`cannot run ${cmd}: ${e.message}${missingToolHint(cmd, e.code)}`));
        return;
      }
      const signal = e.signal ?? null;
      const timedOut = e.killed === true && signal === 'SIGKILL';
      const code = typeof e.code === 'number' ? e.code : -1;
      resolve({
        code,
        signal,
        stdout: out,
        stderr: timedOut ? `${err}\n[run] ${cmd} killed after ${timeoutMs} ms timeout` : err,
        timedOut,
      });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
    else child.stdin?.end();
  });
}

/** Like run, but throws (with the command, status and output) unless the exit code is 0. */
export async function runOk(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const result = await run(cmd, args, options);
  if (result.code !== 0) throw new Error(describeFailure(cmd, args, result));
  return result;
}

export function describeFailure(cmd: string, args: readonly string[], result: RunResult): string {
  const status = result.timedOut ? 'timed out' : result.signal !== null ? `killed by ${result.signal}` : `exited ${result.code}`;
  return [
    `${cmd} ${args.map(shellQuote).join(' ')} ${status}`,
    result.stdout.trim() === '' ? '' : `--- stdout ---\n${tail(result.stdout)}`,
    result.stderr.trim() === '' ? '' : `--- stderr ---\n${tail(result.stderr)}`,
  ]
    .filter((s) => s !== '')
    .join('\n');
}

function tail(text: string, charsMax = 8000): string {
  return text.length <= charsMax ? text.trimEnd() : `…${text.slice(-charsMax).trimEnd()}`;
}

function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`;
}

// ---- tool presence --------------------------------------------------------------------------

const INSTALL_HINT = 'run scripts/install-test-deps.sh (as root, or with sudo) to install the test tools';

/** Binary -> Debian package, for the error message. */
const TOOL_PACKAGES: Record<string, string> = {
  'qemu-io': 'qemu-utils',
  'qemu-img': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdsh: 'libnbd-bin',
  nbdkit: 'nbdkit',
  nbdfuse: 'nbdfuse',
  fio: 'fio',
  fusermount3: 'fuse3',
  'mkfs.ext4': 'e2fsprogs',
  e2fsck: 'e2fsprogs',
  debugfs: 'e2fsprogs',
};

function missingToolHint(cmd: string, errno: string): string {
  if (errno !== 'ENOENT') return '';
  const pkg = TOOL_PACKAGES[cmd];
  return pkg === undefined ? '' : ` (Debian package ${pkg} missing: ${INSTALL_HINT})`;
}

const SEARCH_DIRS_EXTRA = ['/usr/sbin', '/sbin', '/usr/local/sbin'];

/** Full path of an executable in PATH (or an sbin directory), or undefined. */
export async function findExecutable(name: string): Promise<string | undefined> {
  if (name.includes('/')) return (await isExecutable(name)) ? name : undefined;
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter((d) => d !== ''), ...SEARCH_DIRS_EXTRA];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    if (await isExecutable(candidate)) return candidate;
  }
  return undefined;
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Throws (failing the test, never skipping it) when any tool is missing, naming the tools, their
 * Debian packages and scripts/install-test-deps.sh. 'fio:nbd' also requires fio's nbd ioengine.
 */
export async function requireTools(tools: readonly string[]): Promise<void> {
  const missing: string[] = [];
  for (const tool of tools) {
    if (tool === 'fio:nbd') {
      if ((await findExecutable('fio')) === undefined || !(await fioHasNbdEngine())) {
        missing.push('fio with the nbd ioengine (package fio, built with libnbd)');
      }
      continue;
    }
    if ((await findExecutable(tool)) === undefined) {
      const pkg = TOOL_PACKAGES[tool];
      missing.push(pkg === undefined ? tool : `${tool} (package ${pkg})`);
    }
  }
  if (missing.length > 0) {
    throw new Error(`required test tools missing: ${missing.join(', ')}; ${INSTALL_HINT}`);
  }
}

export async function fioHasNbdEngine(): Promise<boolean> {
  const result = await run('fio', ['--enghelp'], { timeoutMs: 10_000 }).catch(() => undefined);
  return result !== undefined && result.stdout.split('\n').some((line) => line.trim() === 'nbd');
}

// ---- qemu-io / qemu-img ---------------------------------------------------------------------

export interface QemuIoOptions {
  timeoutMs?: number;
  /** Open read-only (-r). */
  readOnly?: boolean;
  /** Image format; 'raw' for NBD exports and reference files. */
  format?: string;
}

/** Lines qemu-io prints on success: results, timings and `read -v` hex dumps. */
const QEMU_IO_OK_LINE = /^((wrote|read|discard|zeroed) \d+\/\d+ bytes at offset \d+|\d+(\.\d+)? (bytes|[KMGTPE]iB), \d+ ops;.*|[0-9a-f]{8}:\s.*)$/;
const QEMU_IO_ERROR_LINE = /(failed|error|not found|invalid|can't|cannot|unknown|unexpected|usage:|no such|refused|denied|^qemu-io:)/i;

/**
 * Runs `qemu-io -f raw -c CMD … TARGET`. Throws when qemu-io exits non-zero or prints any error
 * line: qemu-io exits 0 on "Pattern verification failed", so the output is checked line by line.
 * Returns qemu-io's stdout.
 */
export async function qemuIo(target: string, commands: readonly string[], options: QemuIoOptions = {}): Promise<string> {
  const args = ['-f', options.format ?? 'raw'];
  if (options.readOnly === true) args.push('-r');
  for (const command of commands) args.push('-c', command);
  args.push(target);
  const result = await run('qemu-io', args, { timeoutMs: options.timeoutMs ?? TOOL_TIMEOUT_MS_DEFAULT });
  const badLines = `${result.stdout}\n${result.stderr}`
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !QEMU_IO_OK_LINE.test(line) && QEMU_IO_ERROR_LINE.test(line));
  if (result.code !== 0 || badLines.length > 0) {
    const reason = badLines.length > 0 ? `qemu-io reported: ${badLines.slice(0, 10).join(' | ')}\n` : '';
    throw new Error(reason + describeFailure('qemu-io', args, result));
  }
  return result.stdout;
}

export interface CompareResult {
  identical: boolean;
  /** qemu-img's message, e.g. "Content mismatch at offset 4096!" or "Images are identical." */
  output: string;
}

/**
 * `qemu-img compare -f raw -F raw A B` (each a file path or an nbd:// URI). With strict, a size or
 * allocation difference also counts (-s). Throws on qemu-img errors (exit code >= 2).
 */
export async function qemuImgCompare(
  a: string,
  b: string,
  options: { strict?: boolean; timeoutMs?: number } = {},
): Promise<CompareResult> {
  const args = ['compare', '-f', 'raw', '-F', 'raw'];
  if (options.strict === true) args.push('-s');
  args.push(a, b);
  const result = await run('qemu-img', args, { timeoutMs: options.timeoutMs ?? TOOL_TIMEOUT_MS_DEFAULT });
  const output = `${result.stdout}${result.stderr}`.trim();
  if (result.code === 0) return { identical: true, output };
  if (result.code === 1) return { identical: false, output };
  throw new Error(describeFailure('qemu-img', args, result));
}

/** Throws with qemu-img's message (the first differing offset) unless A and B have equal content. */
export async function assertSameContent(a: string, b: string, options: { strict?: boolean; timeoutMs?: number } = {}): Promise<void> {
  const result = await qemuImgCompare(a, b, options);
  if (!result.identical) throw new Error(`contents differ: ${a} vs ${b}: ${result.output}`);
}

// ---- nbdinfo --------------------------------------------------------------------------------

export interface MapExtent {
  offset: number;
  length: number;
  /** Bit field of the meta context: for base:allocation 1 = hole, 2 = zero. */
  type: number;
  description: string;
}

/** `nbdinfo --map[=CONTEXT] --json URI`, parsed. Throws on errors. */
export async function nbdinfoMap(uri: string, options: { context?: string; timeoutMs?: number } = {}): Promise<MapExtent[]> {
  const args = [options.context === undefined ? '--map' : `--map=${options.context}`, '--json', uri];
  const result = await runOk('nbdinfo', args, { timeoutMs: options.timeoutMs ?? TOOL_TIMEOUT_MS_DEFAULT });
  let parsed: unknown;
  try {
    parsed = JSON.parse(result.stdout);
  } catch (error) {
    throw new Error(`nbdinfo --map --json printed no JSON (${String(error)}):\n${tail(result.stdout)}`);
  }
  if (!Array.isArray(parsed)) throw new Error(`nbdinfo --map --json: expected an array, got ${tail(result.stdout, 500)}`);
  return parsed.map((entry: unknown, index: number) => {
    const e = entry as Partial<MapExtent>;
    if (typeof e.offset !== 'number' || typeof e.length !== 'number' || typeof e.type !== 'number') {
      throw new Error(`nbdinfo --map --json: bad extent #${index}: ${JSON.stringify(entry)}`);
    }
    return { offset: e.offset, length: e.length, type: e.type, description: String(e.description ?? '') };
  });
}

export interface Range {
  offset: number;
  length: number;
}

/** The data (not hole) ranges of a base:allocation map, adjacent ranges merged. */
export function dataRanges(map: readonly MapExtent[]): Range[] {
  return mergeRanges(map.filter((e) => (e.type & 1) === 0));
}

/** Sorts and merges overlapping or adjacent ranges. */
export function mergeRanges(ranges: readonly Range[]): Range[] {
  const sorted = ranges.filter((r) => r.length > 0).map((r) => ({ offset: r.offset, length: r.length }));
  sorted.sort((x, y) => x.offset - y.offset);
  const merged: Range[] = [];
  for (const r of sorted) {
    const last = merged[merged.length - 1];
    if (last !== undefined && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else {
      merged.push(r);
    }
  }
  return merged;
}

/** Expands ranges outward to multiples of blockBytes (what a block-granular allocator maps). */
export function alignRanges(ranges: readonly Range[], blockBytes: number): Range[] {
  return mergeRanges(
    ranges.map((r) => {
      const start = Math.floor(r.offset / blockBytes) * blockBytes;
      const end = Math.ceil((r.offset + r.length) / blockBytes) * blockBytes;
      return { offset: start, length: end - start };
    }),
  );
}

// ---- files ----------------------------------------------------------------------------------

/** Streams a file through SHA-256; returns the hex digest. */
export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(path)
      .on('error', reject)
      .on('data', (chunk) => hash.update(chunk))
      .on('end', () => resolve(hash.digest('hex')));
  });
}

/**
 * Creates (or truncates) a sparse, all-zero raw file of sizeBytes: the reference a test applies
 * the same writes to (with qemuIo) and then compares against a volume.
 */
export async function makeReferenceFile(path: string, sizeBytes: number): Promise<void> {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) throw new Error(`bad reference size ${sizeBytes}`);
  const handle = await open(path, 'w');
  try {
    await handle.truncate(sizeBytes);
  } finally {
    await handle.close();
  }
}
