// Starts the real thinarray daemon (`node dist/src/cli/main.js serve`) on a temporary home and
// random loopback ports, and drives it with the real CLI. Every interop and crash test uses it.
//
// Readiness: the daemon writes <home>/daemon.json = { pid, nbd: {host, port}, api: {url}, startedAt }
// once both listeners are up; startDaemon waits until that file exists with the child's pid.
//
// Debugging: THINARRAY_TEST_DAEMON_LOG=1 copies the daemon's stdout/stderr to this process's
// stderr; THINARRAY_TEST_KEEP_HOME=1 keeps temporary homes after cleanup().

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, type RunResult } from './tools.js';

/** Repository root (this file runs as dist/test/helpers/daemon.js). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
/** The compiled CLI entry point (THINARRAY_TEST_CLI_MAIN overrides it, to test the harness itself). */
export const CLI_MAIN = process.env.THINARRAY_TEST_CLI_MAIN ?? join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

/** Bounds; THINARRAY_TEST_START_TIMEOUT_MS overrides the start bound (slow machines). */
const START_TIMEOUT_MS_DEFAULT = 30_000;
const STOP_TIMEOUT_MS_DEFAULT = 20_000;
const KILL_TIMEOUT_MS = 10_000;
const CLI_TIMEOUT_MS_DEFAULT = 60_000;
const READY_POLL_MS = 50;
/** Daemon output kept in memory, per stream, for error messages. */
const LOG_CHARS_MAX = 256 * 1024;

export interface DaemonInfo {
  pid: number;
  nbd: { host: string; port: number };
  api: { url: string };
  startedAt: string;
}

export interface StartDaemonOptions {
  /** Existing home to serve; not removed by cleanup(). Default: a new temp dir, removed by cleanup(). */
  home?: string;
  /** Appended to `serve --home H --nbd-listen 127.0.0.1:0 --api-listen 127.0.0.1:0`. */
  extraArgs?: string[];
  /** Extra environment for the daemon. */
  env?: NodeJS.ProcessEnv;
  startTimeoutMs?: number;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Daemons started by this process and not yet exited: SIGKILLed if the process exits first. */
const liveChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** The environment without THINARRAY_* variables, so a developer's shell cannot redirect tests. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('THINARRAY_')) env[key] = value;
  }
  return { ...env, ...extra };
}

function appendCapped(buffer: string, chunk: string): string {
  const joined = buffer + chunk;
  return joined.length <= LOG_CHARS_MAX ? joined : joined.slice(joined.length - LOG_CHARS_MAX);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The promise's value, or undefined after ms; the timer is cleared so it never keeps the process alive. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<undefined>((resolve) => (timer = setTimeout(resolve, ms, undefined)))]);
  } finally {
    clearTimeout(timer);
  }
}

export class Daemon {
  // Set at creation, never changed.
  readonly home: string;
  private readonly ownsHome: boolean;
  private readonly extraArgs: string[];
  private readonly env: NodeJS.ProcessEnv;
  private readonly startTimeoutMs: number;

  // Changes with every (re)start.
  private child: ChildProcess | undefined;
  private exitPromise: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | undefined;
  private info: DaemonInfo | undefined;
  private tokenValue: string | undefined;
  private stdoutText = '';
  private stderrText = '';
  private starts = 0;

  private constructor(home: string, ownsHome: boolean, options: StartDaemonOptions) {
    this.home = home;
    this.ownsHome = ownsHome;
    this.extraArgs = options.extraArgs ?? [];
    this.env = options.env ?? {};
    const envTimeout = Number(process.env.THINARRAY_TEST_START_TIMEOUT_MS);
    this.startTimeoutMs = options.startTimeoutMs ?? (envTimeout > 0 ? envTimeout : START_TIMEOUT_MS_DEFAULT);
  }

  static async start(options: StartDaemonOptions = {}): Promise<Daemon> {
    if (!existsSync(CLI_MAIN)) {
      throw new Error(`${CLI_MAIN} not found: run \`npm run build\` first (scripts/test.sh does)`);
    }
    const ownsHome = options.home === undefined;
    const home = options.home ?? (await mkdtemp(join(tmpdir(), 'thinarray-test-')));
    await mkdir(home, { recursive: true });
    const daemon = new Daemon(home, ownsHome, options);
    try {
      await daemon.spawnAndWait();
    } catch (error) {
      await daemon.cleanup().catch(() => undefined);
      throw error;
    }
    return daemon;
  }

  /** pid of the running daemon process. */
  get pid(): number {
    return this.requireInfo().pid;
  }
  get nbdHost(): string {
    return this.requireInfo().nbd.host;
  }
  get nbdPort(): number {
    return this.requireInfo().nbd.port;
  }
  get apiUrl(): string {
    return this.requireInfo().api.url;
  }
  /** The API bearer token from <home>/token. */
  get token(): string {
    if (this.tokenValue === undefined) throw new Error(`no token file in ${this.home} (daemon not started?)`);
    return this.tokenValue;
  }
  /** Whether the daemon process is alive (as far as this process has seen). */
  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** `nbd://127.0.0.1:PORT/NAME` for an export (a volume name). */
  nbdUri(volume: string): string {
    const host = this.nbdHost.includes(':') ? `[${this.nbdHost}]` : this.nbdHost;
    return `nbd://${host}:${this.nbdPort}/${encodeURIComponent(volume)}`;
  }

  /** The daemon's output so far (last LOG_CHARS_MAX characters of each stream). */
  logs(): { stdout: string; stderr: string } {
    return { stdout: this.stdoutText, stderr: this.stderrText };
  }

  /** Runs `node dist/src/cli/main.js --home HOME ARGS…`; never throws for a non-zero exit. */
  async cli(args: readonly string[], options: { timeoutMs?: number; input?: string | Buffer } = {}): Promise<CliResult> {
    const runOptions: Parameters<typeof run>[2] = {
      timeoutMs: options.timeoutMs ?? CLI_TIMEOUT_MS_DEFAULT,
      env: cleanEnv(),
      cwd: this.home,
    };
    if (options.input !== undefined) runOptions.input = options.input;
    const result: RunResult = await run(process.execPath, [CLI_MAIN, '--home', this.home, ...args], runOptions);
    return { code: result.code, stdout: result.stdout, stderr: result.stderr };
  }

  /** Runs the CLI with --json and parses stdout; throws (with stderr) on a non-zero exit or bad JSON. */
  async cliJson<T = any>(args: readonly string[], options: { timeoutMs?: number; input?: string | Buffer } = {}): Promise<T> {
    const result = await this.cli(['--json', ...args], options);
    const command = `thinarray --json ${args.join(' ')}`;
    if (result.code !== 0) {
      throw new Error(`${command} exited ${result.code}: ${result.stderr.trim() || '(no stderr)'}${result.stdout.trim() === '' ? '' : `\nstdout: ${result.stdout.trim()}`}`);
    }
    try {
      return JSON.parse(result.stdout) as T;
    } catch (error) {
      throw new Error(`${command} printed no valid JSON (${String(error)}): ${result.stdout.slice(0, 2000)}\nstderr: ${result.stderr.trim()}`);
    }
  }

  /** SIGTERM, then wait for the exit; SIGKILL and throw if it takes longer than timeoutMs. */
  async stop(timeoutMs = STOP_TIMEOUT_MS_DEFAULT): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const child = this.child;
    if (child === undefined || this.exitPromise === undefined) throw new Error('daemon not started');
    if (!this.running) return this.exitPromise;
    child.kill('SIGTERM');
    const exited = await within(this.exitPromise, timeoutMs);
    if (exited !== undefined) return exited;
    child.kill('SIGKILL');
    await within(this.exitPromise, KILL_TIMEOUT_MS);
    throw new Error(`daemon (pid ${child.pid}) did not exit within ${timeoutMs} ms of SIGTERM; killed.\n${this.stderrTail()}`);
  }

  /** SIGKILL (a crash), then wait for the exit. */
  async kill9(): Promise<void> {
    const child = this.child;
    if (child === undefined || this.exitPromise === undefined) throw new Error('daemon not started');
    if (!this.running) return;
    child.kill('SIGKILL');
    const exited = await within(this.exitPromise, KILL_TIMEOUT_MS);
    if (exited === undefined) throw new Error(`daemon (pid ${child.pid}) still alive ${KILL_TIMEOUT_MS} ms after SIGKILL`);
  }

  /** Stops the daemon if it runs (SIGTERM), then starts it again on the same home (new ports). */
  async restart(): Promise<void> {
    if (this.running) await this.stop();
    await this.spawnAndWait();
  }

  /** Kills the daemon if it still runs and removes the temporary home (if startDaemon made it). */
  async cleanup(): Promise<void> {
    if (this.running) {
      try {
        await this.stop(5_000);
      } catch {
        await this.kill9().catch(() => undefined);
      }
    }
    if (this.ownsHome && process.env.THINARRAY_TEST_KEEP_HOME !== '1') {
      await rm(this.home, { recursive: true, force: true, maxRetries: 3 });
    }
  }

  // ---- internals ------------------------------------------------------------------------------

  private requireInfo(): DaemonInfo {
    if (this.info === undefined) throw new Error('daemon not started');
    return this.info;
  }

  private stderrTail(): string {
    const text = this.stderrText.trim();
    return text === '' ? '(daemon stderr empty)' : `--- daemon stderr (tail) ---\n${text.slice(-8000)}`;
  }

  private async spawnAndWait(): Promise<void> {
    this.info = undefined;
    this.starts += 1;
    const marker = `\n[harness] start #${this.starts}\n`;
    this.stdoutText = appendCapped(this.stdoutText, marker);
    this.stderrText = appendCapped(this.stderrText, marker);

    // THINARRAY_TEST_DAEMON_NODE_ARGS passes node flags to the daemon only (e.g. --cpu-prof for a bench profile).
    const nodeArgs = (process.env.THINARRAY_TEST_DAEMON_NODE_ARGS ?? '').split(' ').filter((arg) => arg !== '');
    const args = [...nodeArgs, CLI_MAIN, 'serve', '--home', this.home, '--nbd-listen', '127.0.0.1:0', '--api-listen', '127.0.0.1:0', ...this.extraArgs];
    const child = spawn(process.execPath, args, {
      cwd: this.home,
      env: cleanEnv(this.env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    liveChildren.add(child);
    const echo = process.env.THINARRAY_TEST_DAEMON_LOG === '1';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      this.stdoutText = appendCapped(this.stdoutText, chunk);
      if (echo) process.stderr.write(chunk);
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderrText = appendCapped(this.stderrText, chunk);
      if (echo) process.stderr.write(chunk);
    });
    this.exitPromise = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        liveChildren.delete(child);
        resolve({ code, signal });
      });
    });
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));

    const deadline = Date.now() + this.startTimeoutMs;
    const infoPath = join(this.home, 'daemon.json');
    let lastProblem = 'daemon.json not written yet';
    for (;;) {
      const early = await Promise.race([
        this.exitPromise.then((e) => `daemon exited before it was ready (code ${e.code}, signal ${e.signal})`),
        spawnError.then((e) => `cannot spawn daemon: ${e.message}`),
        sleep(READY_POLL_MS).then(() => undefined),
      ]);
      if (early !== undefined) {
        throw new Error(`${early}\ncommand: node ${args.join(' ')}\n${this.stderrTail()}`);
      }
      try {
        const info = JSON.parse(await readFile(infoPath, 'utf8')) as DaemonInfo;
        if (info.pid === child.pid && typeof info.nbd?.port === 'number' && typeof info.api?.url === 'string') {
          this.info = info;
          break;
        }
        lastProblem = info.pid === child.pid ? `daemon.json incomplete: ${JSON.stringify(info)}` : `daemon.json has pid ${info.pid}, not ${child.pid} (stale)`;
      } catch (error) {
        // Not there yet, or caught mid-write.
        lastProblem = `daemon.json: ${(error as Error).message}`;
      }
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`daemon not ready within ${this.startTimeoutMs} ms (${lastProblem})\ncommand: node ${args.join(' ')}\n${this.stderrTail()}`);
      }
    }
    try {
      this.tokenValue = (await readFile(join(this.home, 'token'), 'utf8')).trim();
    } catch {
      this.tokenValue = undefined;
    }
  }
}

/** Starts the real daemon; see Daemon. Always pair with `await daemon.cleanup()` in `after`. */
export function startDaemon(options: StartDaemonOptions = {}): Promise<Daemon> {
  return Daemon.start(options);
}
