/**
 * Crash consistency with the real daemon: qemu-io writes with FUA, or writes/discards followed by
 * FLUSH, while the daemon is killed with SIGKILL at a random moment; after each restart every
 * acknowledged-durable write must read back exactly, and `thinarray check` must be clean.
 *
 * qemu-io runs its commands one after another, so at most one command is in flight at the kill.
 * A command is known durable when it is a FUA write that printed its result, or a plain write or
 * discard whose following FLUSH was followed by another command that printed its result. Bytes
 * touched by commands not known durable may hold old or new data; every other byte must equal
 * the model exactly. Seeded: THINARRAY_CRASH_SEED replays a failing run, THINARRAY_CRASH_CYCLES
 * sets the number of kills.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { seededRandom } from '../helpers/random.js';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { requireTools, runOk } from '../helpers/tools.js';

const VOLUME_BYTES = 32 * 1024 * 1024;
const EXTENT_BYTES = 64 * 1024;
const COMMANDS_PER_CYCLE = 400;
const CYCLES = Number(process.env['THINARRAY_CRASH_CYCLES'] ?? 12);
const SEED = Number(process.env['THINARRAY_CRASH_SEED'] ?? Date.now() % 1_000_000);


type Command =
  | { kind: 'write'; fua: boolean; offset: number; length: number; pattern: number }
  | { kind: 'discard'; offset: number; length: number }
  | { kind: 'flush' };

function planCycle(random: () => number): Command[] {
  const commands: Command[] = [];
  const int = (max: number): number => Math.floor(random() * max);
  while (commands.length < COMMANDS_PER_CYCLE) {
    const roll = random();
    if (roll < 0.6) {
      // FUA write: unaligned offsets and lengths, some across extent boundaries, some at the end.
      const length = 512 * (1 + int(roll < 0.1 ? 512 : 24));
      const offset = roll < 0.05 ? VOLUME_BYTES - length : Math.min(512 * int(VOLUME_BYTES / 512), VOLUME_BYTES - length);
      commands.push({ kind: 'write', fua: true, offset, length, pattern: 1 + int(254) });
    } else if (roll < 0.85) {
      const length = 4096 * (1 + int(32));
      const offset = 4096 * int((VOLUME_BYTES - length) / 4096);
      commands.push({ kind: 'write', fua: false, offset, length, pattern: 1 + int(254) }, { kind: 'flush' });
    } else {
      const length = EXTENT_BYTES * (1 + int(4));
      const offset = EXTENT_BYTES * int((VOLUME_BYTES - length) / EXTENT_BYTES);
      commands.push({ kind: 'discard', offset, length }, { kind: 'flush' });
    }
  }
  return commands;
}

function qemuIoArgs(commands: readonly Command[]): string[] {
  return commands.flatMap((command) => {
    switch (command.kind) {
      case 'write':
        return ['-c', `write ${command.fua ? '-f ' : ''}-P ${command.pattern} ${command.offset} ${command.length}`];
      case 'discard':
        return ['-c', `discard ${command.offset} ${command.length}`];
      case 'flush':
        return ['-c', 'flush'];
    }
  });
}

/** Index of the last command that printed a result (writes and discards print; flush does not). */
function lastPrintedCommand(commands: readonly Command[], stdout: string): number {
  const printed = stdout.split('\n').filter((line) => /^(wrote|discard) (\d+)\/\2 bytes at offset \d+$/.test(line.trim())).length;
  let seen = 0;
  for (let i = 0; i < commands.length; i++) {
    if (commands[i]!.kind === 'flush') continue;
    seen++;
    if (seen === printed) return i;
  }
  return -1;
}

/** Every command so far with its fate, to explain a failure. */
const history: string[] = [];

/** Applies the commands known durable to the model; returns the byte ranges left uncertain. */
function applyDurable(model: Buffer, commands: readonly Command[], lastPrinted: number, cycle: number): Array<[number, number]> {
  let durableThrough = -1;
  for (let i = 0; i <= lastPrinted; i++) {
    const command = commands[i]!;
    if (command.kind === 'write' && command.fua) durableThrough = i;
    // A FLUSH is complete once a later command printed: everything before it is durable.
    if (command.kind === 'flush' && i < lastPrinted) durableThrough = i;
  }
  // The command in flight at the kill: the first write or discard after the last printed one
  // (a FLUSH between them may have completed silently).
  let inFlight = lastPrinted + 1;
  while (inFlight < commands.length && commands[inFlight]!.kind === 'flush') inFlight++;
  const uncertain: Array<[number, number]> = [];
  commands.forEach((command, i) => {
    if (command.kind === 'flush') return;
    if (i <= inFlight) {
      const fate = i <= durableThrough ? 'durable' : 'uncertain';
      history.push(`cycle ${cycle} #${i} ${fate}: ${JSON.stringify(command)}`);
    }
    if (i <= durableThrough) {
      if (command.kind === 'write') model.fill(command.pattern, command.offset, command.offset + command.length);
      else model.fill(0, command.offset, command.offset + command.length);
    } else if (i <= inFlight) {
      uncertain.push([command.offset, command.offset + command.length]);
    }
  });
  return uncertain;
}

async function runUntilKilled(daemon: Daemon, args: string[], killAfterMs: number): Promise<string> {
  const child = spawn('qemu-io', ['-f', 'raw', '--discard=unmap', ...args, daemon.nbdUri('crash')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr.resume();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise((resolve) => setTimeout(resolve, killAfterMs));
  await daemon.kill9();
  const bounded = setTimeout(() => child.kill('SIGKILL'), 20_000);
  await exited;
  clearTimeout(bounded);
  return stdout;
}

let daemon: Daemon | undefined;
after(async () => {
  await daemon?.cleanup();
});

test(`acknowledged writes survive kill -9 and check stays clean (seed ${SEED}, ${CYCLES} cycles)`, { timeout: 15 * 60_000 }, async () => {
  await requireTools(['qemu-io', 'nbdcopy']);
  const random = seededRandom(SEED);
  daemon = await startDaemon({ extraArgs: ['--pool-size', '256M'] });
  await daemon.cliJson(['volume', 'create', 'crash', '--size', String(VOLUME_BYTES)]);
  const model = Buffer.alloc(VOLUME_BYTES);
  const image = path.join(daemon.home, 'read-back.raw');
  let totalDurable = 0;

  for (let cycle = 0; cycle < CYCLES; cycle++) {
    const commands = planCycle(random);
    const killAfterMs = 100 + Math.floor(random() * 900);
    const stdout = await runUntilKilled(daemon, qemuIoArgs(commands), killAfterMs);
    const lastPrinted = lastPrintedCommand(commands, stdout);
    const uncertain = applyDurable(model, commands, lastPrinted, cycle);
    totalDurable += lastPrinted + 1;

    await daemon.restart();
    fs.rmSync(image, { force: true });
    await runOk('nbdcopy', [daemon.nbdUri('crash'), image], { timeoutMs: 60_000 });
    const actual = fs.readFileSync(image);
    assert.equal(actual.length, VOLUME_BYTES);
    // Uncertain bytes may hold either version: adopt what the volume has, then demand equality.
    for (const [start, end] of uncertain) actual.copy(model, start, start, end);
    const firstDifference = actual.findIndex((byte, i) => byte !== model[i]);
    const touching = (byte: number): string[] =>
      history.filter((line) => {
        const command = JSON.parse(line.slice(line.indexOf('{'))) as { offset?: number; length?: number };
        return command.offset !== undefined && command.offset <= byte && byte < command.offset + command.length!;
      });
    assert.equal(firstDifference, -1, `cycle ${cycle} (seed ${SEED}): byte ${firstDifference} is ${actual[firstDifference]}, expected ${model[firstDifference]} (killed after ${killAfterMs} ms, ${lastPrinted + 1} commands acknowledged)\n${touching(firstDifference).join('\n')}`);

    const report: { ok: boolean; problems: unknown[] } = await daemon.cliJson(['check']);
    assert.equal(report.ok, true, `cycle ${cycle} (seed ${SEED}): check found ${JSON.stringify(report.problems)}`);
    assert.deepEqual(report.problems, []);
  }
  assert.ok(totalDurable > CYCLES, `the kills must land after some writes were acknowledged (got ${totalDurable})`);
});
