/**
 * `thinarray check`: cross-checks every allocation map against the pool's allocation bitmaps.
 * Finds extents mapped twice, entries pointing outside the pool, mapped extents whose bit is
 * clear, and leaks (bit set, mapped by nobody). --repair returns leaks to the pool and sets the
 * bits of mapped extents; a double mapping needs a person and is only reported.
 */
import type { Pool } from '../pool/pool.js';
import type { Volume } from '../volume/volume.js';
import type { CheckProblem, CheckReport } from './types.js';

export function checkArray(pool: Pool, volumes: readonly Volume[], repair: boolean): CheckReport {
  const problems: CheckProblem[] = [];
  const owners = new Map<number, string>();
  let repaired = 0;
  let mappedExtents = 0;
  for (const volume of volumes) {
    const extentCount = Math.ceil(volume.sizeBytes / volume.extentBytes);
    for (const { extentIndex, physicalExtent } of volume.map.mapped(0, Number.MAX_SAFE_INTEGER)) {
      mappedExtents++;
      const where = `${volume.name} extent ${extentIndex}`;
      if (extentIndex >= extentCount) problems.push({ kind: 'out-of-range', detail: `${where} lies beyond the volume's capacity` });
      if (!pool.isValidExtent(physicalExtent)) {
        problems.push({ kind: 'out-of-range', detail: `${where} points to physical extent ${physicalExtent}, which is on no disk` });
        continue;
      }
      const previous = owners.get(physicalExtent);
      if (previous !== undefined) {
        problems.push({ kind: 'double-mapped', detail: `physical extent ${physicalExtent} is mapped by ${previous} and by ${where}` });
        continue;
      }
      owners.set(physicalExtent, where);
      if (!pool.isAllocated(physicalExtent)) {
        problems.push({ kind: 'mapped-but-free', detail: `${where} points to physical extent ${physicalExtent}, which the pool counts as free` });
        if (repair) {
          pool.repairMarkAllocated(physicalExtent);
          repaired++;
        }
      }
    }
  }
  const freeing = pool.freeingExtents();
  for (const extent of pool.allocatedExtents()) {
    if (owners.has(extent) || freeing.has(extent)) continue;
    problems.push({ kind: 'leaked', detail: `physical extent ${extent} is allocated but mapped by no volume` });
    if (repair) {
      pool.repairLeak(extent);
      repaired++;
    }
  }
  const unrepaired = problems.length - repaired;
  return { ok: unrepaired === 0, volumesChecked: volumes.length, mappedExtents, problems, repaired };
}
