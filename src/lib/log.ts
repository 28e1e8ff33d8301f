/**
 * Structured logs (pino). Every layer takes a Logger; the daemon opens the real one
 * (src/daemon/logging.ts, JSON to <home>/thinarray.log) and tests pass a silent one.
 */
import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
