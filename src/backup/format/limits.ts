/** The backup format's and media's limits, kept with every other limit in src/lib/limits.ts. */
import { LIMITS } from '../../lib/limits.js';

export const BACKUP_LIMITS = LIMITS.backup;
