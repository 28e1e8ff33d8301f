/**
 * The daemon: takes the home's lock, opens the array, starts the NBD server and the HTTP API,
 * advertises them in daemon.json, and shuts all of it down in order on SIGTERM/SIGINT.
 */
import { mkdirSync } from 'node:fs';
import type { Logger } from '../lib/log.js';
import { flushLogger, openDaemonLogger } from './logging.js';
import { openStorageArray } from '../array/array.js';
import type { StorageArrayApi } from '../array/types.js';
import { MetaContextRegistry, baseAllocation, thinarrayDirty } from '../nbd/meta-contexts.js';
import { NbdServer } from '../nbd/server.js';
import { ApiServer } from '../api/server.js';
import { readTlsFiles, type DaemonConfig } from './config.js';
import { ensureHomeDirectory, ensureToken, homePaths, removeDaemonInfo, writeDaemonInfo, type DaemonInfo, type HomePaths } from './home.js';
import { HomeLock } from './lock.js';
import { DaemonMetrics } from './metrics.js';
import { thinarrayVersion } from './version.js';

/** Undo steps of a partial start, run in reverse when a later step fails. */
type Cleanup = () => Promise<void> | void;

export class Daemon {
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly paths: HomePaths,
    readonly info: DaemonInfo,
    private readonly logger: Logger,
    private readonly cleanups: Cleanup[],
  ) {}

  /** Starts everything or nothing: a failure undoes the steps already taken, then rethrows. */
  static async start(config: DaemonConfig): Promise<Daemon> {
    const paths = homePaths(config.home);
    ensureHomeDirectory(paths.home);
    const lock = HomeLock.acquire(paths.pidLock);
    const cleanups: Cleanup[] = [() => lock.release()];
    let logger: Logger;
    try {
      logger = await openDaemonLogger(paths.log, config.logLevel);
    } catch (error) {
      lock.release();
      throw error;
    }
    try {
      const info = await startServices(config, paths, logger, cleanups);
      logger.info({ ...info, home: paths.home, mediaRoots: config.mediaRoots, version: thinarrayVersion() }, 'daemon started');
      // The log is on disk before anyone is told where to connect (tests and operators read it next).
      await flushLogger(logger);
      writeDaemonInfo(paths, info);
      cleanups.push(() => removeDaemonInfo(paths));
      return new Daemon(paths, info, logger, cleanups);
    } catch (error) {
      logger.error({ err: error }, 'daemon failed to start');
      await runCleanups(cleanups, logger);
      await flushLogger(logger);
      throw error;
    }
  }

  /** Stop accepting, answer what is in flight, commit the array, remove daemon.json. Idempotent. */
  stop(reason: string): Promise<void> {
    this.stopping ??= (async () => {
      this.logger.info({ reason }, 'daemon stopping');
      await runCleanups(this.cleanups, this.logger);
      this.logger.info('daemon stopped');
      await flushLogger(this.logger);
    })();
    return this.stopping;
  }
}

async function startServices(config: DaemonConfig, paths: HomePaths, logger: Logger, cleanups: Cleanup[]): Promise<DaemonInfo> {
  const token = ensureToken(paths);
  for (const mediaRoot of config.mediaRoots) mkdirSync(mediaRoot, { recursive: true });
  const array = await openArray(config, logger);
  cleanups.push(() => array.close());
  // Job kinds registered themselves while the array opened; jobs left by a previous run resume now.
  array.startJobs();

  let nbdServer: NbdServer | undefined;
  const metrics = new DaemonMetrics(array, () => nbdServer?.connectionCount ?? 0);
  nbdServer = createNbdServer(config, array, logger, metrics);
  const server = nbdServer;
  // A restore into a volume hosts have open read-write is refused unless forced.
  array.exportWritersHook = (name) => server.writersOf(name);
  const nbdAddress = await nbdServer.listen(config.nbdListen.host, config.nbdListen.port);
  const nbdServerToClose = nbdServer;

  const apiServer = new ApiServer({ array, token, logger: logger.child({ component: 'api' }), metrics, version: thinarrayVersion() });
  // Both front ends close together: the API drains its requests while NBD answers what is in flight.
  cleanups.push(() => Promise.all([apiServer.close(), nbdServerToClose.close()]).then(() => undefined));
  const apiAddress = await apiServer.listen(config.apiListen.host, config.apiListen.port);

  return { pid: process.pid, nbd: { host: nbdAddress.host, port: nbdAddress.port }, api: { url: apiAddress.url }, startedAt: new Date().toISOString() };
}

function openArray(config: DaemonConfig, logger: Logger): Promise<StorageArrayApi> {
  return openStorageArray({
    home: config.home,
    logger: logger.child({ component: 'array' }),
    mediaRoots: config.mediaRoots,
    ...(config.poolFileBytes === undefined ? {} : { poolFileBytes: config.poolFileBytes }),
    ...(config.extentBytes === undefined ? {} : { extentBytes: config.extentBytes }),
  });
}

function createNbdServer(config: DaemonConfig, array: StorageArrayApi, logger: Logger, metrics: DaemonMetrics): NbdServer {
  return new NbdServer({
    lookupExport: (name: string) => {
      const device = array.openExport(name);
      return device === undefined ? undefined : { device };
    },
    listExports: () => array.exportNames(),
    // base:allocation, and thinarray:dirty: the extents changed since each volume's last backup.
    metaContexts: new MetaContextRegistry([baseAllocation, thinarrayDirty]),
    logger: logger.child({ component: 'nbd' }),
    metrics,
    ...(config.tls === undefined ? {} : { tls: readTlsFiles(config.tls) }),
  });
}

async function runCleanups(cleanups: Cleanup[], logger: Logger): Promise<void> {
  while (cleanups.length > 0) {
    const cleanup = cleanups.pop()!;
    try {
      await cleanup();
    } catch (error) {
      // Keep going: the array must still be closed (committed) even if a listener failed to close.
      logger.error({ err: error }, 'error during shutdown');
    }
  }
}

/** The text `serve` prints once both listeners are up. */
export function describeConnection(info: DaemonInfo, paths: HomePaths): string {
  const nbdHost = info.nbd.host.includes(':') ? `[${info.nbd.host}]` : info.nbd.host;
  const nbdUri = `nbd://${nbdHost}:${info.nbd.port}`;
  return [
    `thinarray ${thinarrayVersion()} serving ${paths.home} (pid ${info.pid})`,
    `  NBD  ${nbdUri}/VOLUME      e.g. qemu-img info ${nbdUri}/VOLUME`,
    `  API  ${info.api.url}/api/v1   token in ${paths.token}`,
    `  log  ${paths.log}`,
  ].join('\n');
}

/**
 * Runs the daemon until SIGTERM or SIGINT, then shuts down and resolves (exit code 0).
 * A second signal during shutdown exits at once (code 1) for an operator who cannot wait.
 */
export async function runDaemon(config: DaemonConfig, print: (text: string) => void): Promise<void> {
  const daemon = await Daemon.start(config);
  print(describeConnection(daemon.info, daemon.paths));
  await new Promise<void>((resolve) => {
    let shuttingDown = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (shuttingDown) process.exit(1);
      shuttingDown = true;
      print(`thinarray: ${signal} received, shutting down`);
      void daemon.stop(signal).then(resolve);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
