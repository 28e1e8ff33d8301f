/**
 * The NBD meta context thinarray:dirty, read by a real client (nbdinfo --map): after a backup,
 * exactly the extents written since its point in time are reported changed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openStorageArray } from '../../src/array/array.js';
import { silentLogger } from '../../src/lib/log.js';
import { KiB, MiB } from '../../src/lib/sizes.js';
import { NbdServer } from '../../src/nbd/server.js';
import { MetaContextRegistry, baseAllocation, thinarrayDirty } from '../../src/nbd/meta-contexts.js';
import { nbdinfoMap, requireTools } from '../helpers/tools.js';

const EXTENT = 64 * KiB;

test('thinarray:dirty reports the extents changed since the last backup', { timeout: 60_000 }, async () => {
  await requireTools(['nbdinfo']);
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'thinarray-dirty-'));
  const media = path.join(home, 'media');
  fs.mkdirSync(media);
  const array = await openStorageArray({ home, logger: silentLogger(), poolFileBytes: 128 * MiB, mediaRoots: [media] });
  array.startJobs();
  const server = new NbdServer({
    lookupExport: (name) => {
      const device = array.openExport(name);
      return device ? { device } : undefined;
    },
    listExports: () => array.exportNames(),
    metaContexts: new MetaContextRegistry([baseAllocation, thinarrayDirty]),
    logger: silentLogger(),
  });
  try {
    await array.volumeCreate({ name: 'vm', sizeBytes: 8 * MiB });
    await array.volume('vm').write(0, Buffer.alloc(4 * EXTENT, 1), { fua: false });
    const backup = await array.backups.create({ volume: 'vm', to: `file:${path.join(media, 'full.tbk')}` });
    assert.equal((await array.jobs.wait(backup.jobId!, 30_000)).state, 'succeeded');
    await array.volume('vm').write(2 * EXTENT + 5, Buffer.alloc(10, 2), { fua: false });
    await array.volume('vm').write(6 * EXTENT, Buffer.alloc(2 * EXTENT, 3), { fua: false });
    const { port } = await server.listen('127.0.0.1', 0);
    const map = await nbdinfoMap(`nbd://127.0.0.1:${port}/vm`, { context: 'thinarray:dirty' });
    const changed = map.filter((run) => (run.type & 1) === 1).map((run) => [run.offset, run.length]);
    assert.deepEqual(changed, [[2 * EXTENT, EXTENT], [6 * EXTENT, 2 * EXTENT]]);
  } finally {
    await server.close();
    await array.close();
    fs.rmSync(home, { recursive: true, force: true });
  }
});
