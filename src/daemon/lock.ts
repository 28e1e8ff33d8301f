/**
 * One daemon per home. Two daemons on the same meta.db and pool files would hand out the same
 * extents twice, so the second one must refuse to start.
 *
 * The lock is `<home>/daemon.pid`, created with O_EXCL ('wx'): creation is atomic, so of two
 * daemons starting at once exactly one wins. A daemon killed with -9 leaves the file behind; we
 * recognise it as stale when no process with that pid is alive (kill(pid, 0) → ESRCH) and take it
 * over. Node has no flock(), and an fcntl lock would need a native addon; the residual risk is a
 * stale pid reused by an unrelated live process, which makes us refuse (safe side) until the file
 * is removed by hand — the error message says so.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { ThinError } from '../lib/errors.js';

export class HomeLock {
  private constructor(private readonly lockPath: string) {}

  static acquire(lockPath: string): HomeLock {
    // Two attempts: the second after removing a stale file left by a dead daemon.
    for (let attempt = 0; attempt < 2; attempt++) {
      if (tryCreate(lockPath)) return new HomeLock(lockPath);
      const holderPid = readHolderPid(lockPath);
      if (holderPid === undefined) {
        // Created but not yet written: another daemon is starting right now.
        throw new ThinError('BUSY', `another thinarray daemon is starting on this home (lock ${lockPath}; remove it if none is)`);
      }
      if (isProcessAlive(holderPid)) {
        throw new ThinError(
          'BUSY',
          `another thinarray daemon (pid ${holderPid}) is using this home; stop it first (if pid ${holderPid} is not thinarray, remove ${lockPath})`,
        );
      }
      rmSync(lockPath, { force: true });
    }
    throw new ThinError('BUSY', `cannot take the lock ${lockPath}: another daemon is starting on this home`);
  }

  /** Removes the lock only if it is still ours. */
  release(): void {
    if (readHolderPid(this.lockPath) === process.pid) rmSync(this.lockPath, { force: true });
  }
}

function tryCreate(lockPath: string): boolean {
  try {
    writeFileSync(lockPath, `${process.pid}\n`, { flag: 'wx', mode: 0o644 });
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  }
}

function readHolderPid(lockPath: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(lockPath, 'utf8').trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function isProcessAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else — still alive.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
