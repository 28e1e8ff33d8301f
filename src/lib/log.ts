/** Structured logs (pino). Every layer takes a Logger; tests pass a silent one. */
import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

export function createLogger(options: { level?: string; destination?: string } = {}): Logger {
  const level = options.level ?? process.env['THINARRAY_LOG_LEVEL'] ?? 'info';
  if (options.destination) {
    return pino({ level, base: { service: 'thinarray' } }, pino.destination({ dest: options.destination, sync: false, mkdir: true }));
  }
  return pino({ level, base: { service: 'thinarray' } });
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
