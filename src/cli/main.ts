#!/usr/bin/env node
/** The `thinarray` binary: runs one command line and exits with its code. */
import { runCli } from './program.js';

const exitCode = await runCli(process.argv.slice(2), {
  stdout: (text) => process.stdout.write(text + '\n'),
  stderr: (text) => process.stderr.write(text + '\n'),
  environment: process.env,
});
// Exit explicitly: after `serve` has shut down, nothing left behind (timers, sockets) may keep it alive.
// stdout and stderr are synchronous for files and pipes on Linux, so nothing printed is lost.
process.exit(exitCode);
