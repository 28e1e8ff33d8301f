/** The package version, read once from package.json (dist/src/daemon/ → three levels up). */
import { readFileSync } from 'node:fs';

let cachedVersion: string | undefined;

export function thinarrayVersion(): string {
  if (cachedVersion === undefined) {
    try {
      const packageJson = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string };
      cachedVersion = packageJson.version ?? 'unknown';
    } catch {
      cachedVersion = 'unknown';
    }
  }
  return cachedVersion;
}
