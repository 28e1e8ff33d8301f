/**
 * The daemon's log: pino JSON appended to <home>/thinarray.log. We wait for the file to be
 * open before logging: pino's exit hook flushes
 * synchronously and throws ("sonic boom is not ready yet") if the daemon exits — e.g. after a
 * failed start — before an asynchronous destination has opened its file.
 */
import { once } from 'node:events';
import { pino } from 'pino';
import type { Logger } from '../lib/log.js';

export async function openDaemonLogger(logPath: string, level: string): Promise<Logger> {
  // Asynchronous writes: logging must never stall the NBD data path on a slow disk.
  const destination = pino.destination({ dest: logPath, sync: false, mkdir: true });
  await once(destination, 'ready');
  return pino({ level, base: { service: 'thinarray' } }, destination);
}

/** Resolves once everything logged so far is written. */
export function flushLogger(logger: Logger): Promise<void> {
  return new Promise((resolve) => logger.flush(() => resolve()));
}
