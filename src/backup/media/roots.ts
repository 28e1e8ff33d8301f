/**
 * The media-root guard: the daemon touches media only under the roots it was started with
 * (`serve --media-root DIR`). A path is judged by where it really leads — `..` resolved and
 * every existing symbolic link followed (realpath of the deepest existing ancestor) — and the
 * real path is returned so the caller opens what was checked, not the name it was given.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../../lib/errors.js';

/**
 * The real path of `targetPath` if it lies under one of `roots` (or is one); INVALID_ARGUMENT
 * naming the path and the roots otherwise. The path itself need not exist yet.
 */
export async function resolveUnderRoots(targetPath: string, roots: readonly string[]): Promise<string> {
  if (roots.length === 0) throw new ThinError('INVALID_ARGUMENT', 'no media root is configured: start the daemon with --media-root DIR', { field: 'medium' });
  const absolute = path.resolve(targetPath);
  // Together: each is a thread-pool round trip or more, and a backup starts with this.
  const [real, ...realRoots] = await Promise.all([absolute, ...roots.map((root) => path.resolve(root))].map(realPathAllowingMissing));
  if (realRoots.some((root) => isInside(real, root))) return real;
  const through = real === absolute ? '' : ` (it resolves to ${real}: a symbolic link leads out)`;
  throw new ThinError('INVALID_ARGUMENT', `medium path ${targetPath} is outside the media roots (${roots.join(', ')})${through}; the daemon only uses media under its --media-root directories`, { field: 'medium' });
}

export function isInside(candidate: string, root: string): boolean {
  const relative = path.relative(root, candidate);
  return relative === '' || (relative !== '..' && !relative.startsWith('..' + path.sep) && !path.isAbsolute(relative));
}

/**
 * realpath of the deepest existing ancestor, with the missing components appended. A missing
 * component that is a dangling symbolic link is refused: creating the file would follow it.
 */
async function realPathAllowingMissing(absolute: string): Promise<string> {
  const missing: string[] = [];
  let current = absolute;
  for (;;) {
    try {
      const real = await fs.promises.realpath(current);
      return path.join(real, ...missing.reverse());
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw new ThinError('INVALID_ARGUMENT', `medium path ${absolute}: ${(error as Error).message}`, { field: 'medium', cause: error });
    }
    if (await isSymbolicLink(current)) throw new ThinError('INVALID_ARGUMENT', `medium path ${absolute}: ${current} is a symbolic link to nothing (refused: it could lead anywhere)`, { field: 'medium' });
    const parent = path.dirname(current);
    if (parent === current) return absolute;
    missing.push(path.basename(current));
    current = parent;
  }
}

async function isSymbolicLink(filePath: string): Promise<boolean> {
  try {
    return (await fs.promises.lstat(filePath)).isSymbolicLink();
  } catch {
    return false;
  }
}
