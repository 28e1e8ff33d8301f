/**
 * Not a test: writes and reads back 1 GiB of extents through a file: medium and prints MiB/s.
 * Run: node dist/test/backup/throughput.js --run [DIR] [GiB]. Without --run it exits at once,
 * because `node --test dist/test/…` runs every .js file under a test/ folder (belongs in bench/).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BackupStreamWriter } from '../src/backup/format/writer.js';
import { BackupStreamReader } from '../src/backup/format/reader.js';
import { openFileReader, openFileWriter } from '../src/backup/media/file-medium.js';
import { allocationRunsFromExtents } from '../src/backup/format/header.js';

if (process.argv[2] !== '--run') process.exit(0);
const dir = fs.mkdtempSync(path.join(process.argv[3] ?? os.tmpdir(), 'thinarray-throughput-'));
const gib = Number(process.argv[4] ?? 1);
const extentBytes = 64 * 1024;
const extentCount = Math.round((gib * 1024 ** 3) / extentBytes);
const extents = Array.from({ length: extentCount }, (_, i) => i * 2); // half the volume mapped, every other extent
const filePath = path.join(dir, 'b.tbk');
const data = Buffer.alloc(extentBytes);
for (let i = 0; i < extentBytes; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);

const t0 = performance.now();
const writer = new BackupStreamWriter(await openFileWriter(filePath), {
  backupId: 'bench', kind: 'full', sourceName: 'v', sourceUuid: 'u', sourceCapacityBytes: extentCount * 2 * extentBytes, extentBytes,
  allocationRuns: allocationRunsFromExtents(extents), correspondence: Float64Array.from(extents), createdAtMs: Date.now(), labels: [], description: '',
});
await writer.writeHeader();
for (const extent of extents) {
  data.writeUInt32LE(extent, 0);
  await writer.writeExtent(extent, data);
}
const tFinish = performance.now();
const summary = await writer.finish();
const t1 = performance.now();
// Drop the file from the page cache is not possible without root tools; report both numbers as they are.
const reader = new BackupStreamReader(await openFileReader(filePath));
await reader.readHeader();
let records = 0;
for await (const record of reader) records += record.data.length > 0 ? 1 : 0;
await reader.verifyTrailer();
await reader.close();
const t2 = performance.now();
const mib = summary.streamBytes / 1024 ** 2;
console.log(`stream ${mib.toFixed(0)} MiB, ${records} records of 64 KiB`);
console.log(`write (incl. fsync): ${(mib / ((t1 - t0) / 1000)).toFixed(0)} MiB/s in ${((t1 - t0) / 1000).toFixed(2)} s`);
console.log(`  of which finish() (last writes, fsync, close): ${((t1 - tFinish) / 1000).toFixed(2)} s`);
console.log(`read + verify:       ${(mib / ((t2 - t1) / 1000)).toFixed(0)} MiB/s in ${((t2 - t1) / 1000).toFixed(2)} s`);
fs.rmSync(dir, { recursive: true, force: true });
