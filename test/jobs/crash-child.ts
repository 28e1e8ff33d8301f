/**
 * Child process for the kill -9 test in job-manager.test.ts: opens the store at argv[2], starts
 * one counting job (persisting every 20 ms) and prints its id; the parent kills it mid-run.
 * Run without arguments (as `node --test dist/test/jobs/` does) it does nothing.
 */
import { MetaStore } from '../../src/meta/store.js';
import { JobManager } from '../../src/jobs/job-manager.js';
import { silentLogger } from '../../src/lib/log.js';
import { countingKind } from './kinds.js';

const storePath = process.argv[2];
if (storePath !== undefined) {
  const manager = new JobManager(new MetaStore(storePath), silentLogger(), { persistIntervalMs: 20 });
  manager.register(countingKind());
  const info = manager.start('count', { steps: 100_000, stepBytes: 4096, sleepMs: 2 }, 'count until killed');
  process.stdout.write(`${info.id}\n`);
  // Keeps the process alive: the manager's timer is unref'd, as in the daemon.
  setInterval(() => undefined, 1000);
}
