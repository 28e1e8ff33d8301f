/**
 * What every command action gets: the global options resolved once, the API client, and the
 * two ways of printing (human text or the API's JSON). New command groups (copy, backup, job…)
 * use only this.
 */
import type { Command } from 'commander';
import { isThinError } from '../lib/errors.js';
import { parseSizeBytes } from '../lib/sizes.js';
import { ApiClient, resolveApiTarget, type GlobalOptions } from './client.js';
import { usageError } from './errors.js';

export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  environment: NodeJS.ProcessEnv;
}

export class CliContext {
  private client: ApiClient | undefined;

  constructor(
    readonly options: GlobalOptions,
    readonly io: CliIo,
  ) {}

  /** The options of the program and every command up to `command`, merged (globals may come after the subcommand). */
  static of(command: Command, io: CliIo): CliContext {
    return new CliContext(command.optsWithGlobals<GlobalOptions>(), io);
  }

  get json(): boolean {
    return this.options.json === true;
  }

  api(): ApiClient {
    this.client ??= new ApiClient(resolveApiTarget(this.options, this.io.environment));
    return this.client;
  }

  /** Prints `value` as JSON with --json, else the human text made by `human`. */
  output<T>(value: T, human: (value: T) => string): void {
    this.io.stdout(this.json ? JSON.stringify(value, null, 2) : human(value));
  }
}

/** A size from the command line; an unreadable one is a usage error (exit 2). */
export function parseSizeOption(text: string, optionName: string): number {
  try {
    return parseSizeBytes(text, optionName);
  } catch (error) {
    if (isThinError(error)) throw usageError(error.message);
    throw error;
  }
}

