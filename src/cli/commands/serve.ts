/** `thinarray serve`: the daemon in the foreground (src/daemon does the work). */
import type { Command } from 'commander';
import { isThinError } from '../../lib/errors.js';
import { buildDaemonConfig, DEFAULT_API_LISTEN, DEFAULT_NBD_LISTEN, type DaemonConfig, type ServeOptions } from '../../daemon/config.js';
import { runDaemon } from '../../daemon/daemon.js';
import { type CliIo } from '../context.js';
import { usageError } from '../errors.js';

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

export function registerServeCommand(program: Command, io: CliIo): void {
  program
    .command('serve')
    .description('run the daemon: the array, its NBD server and its HTTP API')
    .option('--nbd-listen <host:port>', `NBD address (port 0 = any free port)`, DEFAULT_NBD_LISTEN)
    .option('--api-listen <host:port>', `HTTP API address`, DEFAULT_API_LISTEN)
    .option('--media-root <dir>', 'directory backups may use (repeatable; default <home>/media)', collect)
    .option('--pool-size <size>', 'size of the sparse pool file made on first start, e.g. 64G')
    .option('--extent-size <size>', 'extent size of a new pool: a power of two from 4K to 4M')
    .option('--tls-cert <file>', 'PEM certificate for NBD STARTTLS')
    .option('--tls-key <file>', 'PEM private key for NBD STARTTLS')
    .option('--tls-required', 'refuse NBD clients that do not use TLS')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent')
    .action(async (_options: object, command: Command) => {
      const config = toDaemonConfig(command.optsWithGlobals<ServeOptions>());
      await runDaemon(config, io.stdout);
    });
}

function toDaemonConfig(options: ServeOptions): DaemonConfig {
  try {
    return buildDaemonConfig(options);
  } catch (error) {
    if (isThinError(error)) throw usageError(error.message);
    throw error;
  }
}
