#!/usr/bin/env node
/** The `thinarray` binary: runs one command line and exits with its code. */
import './threadpool.js'; // first: sizes the thread pool before any module can use it
import { runCli } from './program.js';

const exitCode = await runCli(process.argv.slice(2), {
  stdout: (text) => process.stdout.write(text + '\n'),
  stderr: (text) => process.stderr.write(text + '\n'),
  environment: process.env,
});
// Exit explicitly: after `serve` has shut down, nothing left behind (timers, sockets) may keep it alive.
// But first let stdout and stderr drain: a pipe the parent made non-blocking is written
// asynchronously, and exiting at once cut `--json volume show --map` of a big volume at ~200 KiB.
await Promise.all([drained(process.stdout), drained(process.stderr)]);
process.exit(exitCode);

/** Resolves once everything written to the stream so far has been handed to the OS. */
function drained(stream: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => {
    if (stream.destroyed || !stream.writable) resolve();
    else stream.write('', () => resolve());
  });
}
