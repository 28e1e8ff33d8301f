/**
 * The command tree. Global options live on the program and are accepted before or after the
 * subcommand; each group of commands registers itself from its own file in commands/, so new
 * groups (copy, backup, restore, pair, job) are one more file and one more line below.
 */
import { Command, CommanderError } from 'commander';
import { isThinError } from '../lib/errors.js';
import { thinarrayVersion } from '../daemon/version.js';
import { registerBackupCommands } from './commands/backup.js';
import { registerCheckCommand } from './commands/check.js';
import { registerCopyCommands } from './commands/copy.js';
import { registerJobCommands } from './commands/job.js';
import { registerMediumCommands } from './commands/medium.js';
import { registerOpenApiCommand } from './commands/openapi.js';
import { registerPoolCommands } from './commands/pool.js';
import { registerRestoreCommand } from './commands/restore.js';
import { registerServeCommand } from './commands/serve.js';
import { registerVolumeCommands } from './commands/volume.js';
import type { CliIo } from './context.js';
import { CliError, EXIT_CODES, type ExitCode } from './errors.js';

export function buildProgram(io: CliIo): Command {
  const program = new Command('thinarray')
    .description('a software storage array: thin volumes over NBD, instant and compact copies, server-free backups')
    .version(thinarrayVersion(), '-V, --version')
    .option('--home <dir>', 'daemon home: token and daemon.json are read from here (default $THINARRAY_HOME or ./thinarray-data)')
    .option('--api <url>', 'API URL (default $THINARRAY_API, else from <home>/daemon.json, else http://127.0.0.1:7480)')
    .option('--token <token>', 'API bearer token (default $THINARRAY_TOKEN, else <home>/token)')
    .option('--json', 'print machine-readable JSON')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({
      writeOut: (text) => io.stdout(text.replace(/\n$/, '')),
      // Help shown for a bad command line goes to stderr; errors are printed once, as one line, by runCli.
      writeErr: (text) => io.stderr(text.replace(/\n$/, '')),
      outputError: () => undefined,
    });

  registerServeCommand(program, io);
  registerPoolCommands(program, io);
  registerVolumeCommands(program, io);
  registerCopyCommands(program, io);
  registerBackupCommands(program, io);
  registerRestoreCommand(program, io);
  registerMediumCommands(program, io);
  registerJobCommands(program, io);
  registerCheckCommand(program, io);
  registerOpenApiCommand(program, io);
  return program;
}

/** Runs one command line and returns the exit code; never throws. */
export async function runCli(argv: string[], io: CliIo): Promise<ExitCode> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT_CODES.ok;
  } catch (error) {
    return reportFailure(error, io);
  }
}

function reportFailure(error: unknown, io: CliIo): ExitCode {
  if (error instanceof CommanderError) {
    // Help and --version arrive here too, with exit code 0.
    if (error.exitCode === 0 || error.code === 'commander.helpDisplayed' || error.code === 'commander.version') return EXIT_CODES.ok;
    if (error.code === 'commander.help' || error.code === 'commander.executeSubCommandAsync') return EXIT_CODES.usage;
    io.stderr(`thinarray: ${oneLine(error.message.replace(/^error: /, ''))}`);
    return EXIT_CODES.usage;
  }
  if (error instanceof CliError) {
    io.stderr(`thinarray: ${oneLine(error.message)}`);
    return error.exitCode;
  }
  if (isThinError(error)) {
    io.stderr(`thinarray: ${oneLine(error.message)}`);
    return EXIT_CODES.failed;
  }
  io.stderr(`thinarray: unexpected error: ${oneLine(error instanceof Error ? (error.stack ?? error.message) : String(error))}`);
  return EXIT_CODES.failed;
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}
