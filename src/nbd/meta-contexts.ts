/** Registry of NBD metadata contexts (base:allocation built in) that other layers may extend. */
import type { BlockDevice } from '../volume/block-device.js';
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from './protocol.js';

/** One NBD block-status descriptor: `lengthBytes` bytes sharing `flags`. */
export interface StatusDescriptor {
  lengthBytes: number;
  flags: number;
}

export interface MetaContext {
  /** Full name, "namespace:leaf", e.g. "base:allocation". */
  readonly name: string;
  /** Whether the context can be selected on this export (e.g. only volumes that track changes). */
  isAvailable(device: BlockDevice): boolean;
  /**
   * Descriptors for [offset, offset+length), in order, starting at `offsetBytes`. The range lies
   * inside the device. At most `descriptorsMax` entries; fewer bytes than asked is allowed.
   */
  describe(device: BlockDevice, offsetBytes: number, lengthBytes: number, descriptorsMax: number): StatusDescriptor[];
}

/** `base:allocation` from BlockDevice.blockStatus: hole → NBD_STATE_HOLE, zero → NBD_STATE_ZERO. */
export const baseAllocation: MetaContext = {
  name: 'base:allocation',
  isAvailable: () => true,
  describe(device, offsetBytes, lengthBytes, descriptorsMax) {
    const runs = device.blockStatus(offsetBytes, lengthBytes, descriptorsMax);
    const count = Math.min(runs.length, descriptorsMax);
    const descriptors: StatusDescriptor[] = new Array(count);
    for (let i = 0; i < count; i++) {
      const run = runs[i]!;
      descriptors[i] = {
        lengthBytes: run.lengthBytes,
        flags: (run.hole ? NBD_STATE_HOLE : 0) | (run.zero ? NBD_STATE_ZERO : 0),
      };
    }
    return descriptors;
  },
};

/** Flag of thinarray:dirty: the bytes lie in an extent changed since the volume's last backup. */
export const THINARRAY_STATE_DIRTY = 1;

/**
 * thinarray:dirty — the volume's change-tracking set (what the next incremental backup would
 * stream), for clients that want to copy only what changed. Offered on volumes that track changes.
 */
export const thinarrayDirty: MetaContext = {
  name: 'thinarray:dirty',
  isAvailable: (device) => typeof device.changeStatus === 'function',
  describe(device, offsetBytes, lengthBytes, descriptorsMax) {
    const runs = device.changeStatus!(offsetBytes, lengthBytes, descriptorsMax);
    return runs.map((run) => ({ lengthBytes: run.lengthBytes, flags: run.changed ? THINARRAY_STATE_DIRTY : 0 }));
  },
};

function namespaceOf(name: string): string {
  const colon = name.indexOf(':');
  return colon < 0 ? '' : name.slice(0, colon);
}

/**
 * The contexts a server offers. Query syntax (documented in README.md): an exact context name
 * selects that context; "namespace:" (empty leaf) is a wildcard for every context of the
 * namespace, honoured by LIST only (the spec says SET must ignore it). Unknown names select nothing.
 */
export class MetaContextRegistry {
  private readonly contexts = new Map<string, MetaContext>();

  constructor(initial: readonly MetaContext[] = [baseAllocation]) {
    for (const context of initial) this.register(context);
  }

  register(context: MetaContext): void {
    const colon = context.name.indexOf(':');
    if (colon <= 0 || colon === context.name.length - 1) {
      throw new Error(`meta context name must be "namespace:leaf", got "${context.name}"`);
    }
    if (this.contexts.has(context.name)) throw new Error(`meta context ${context.name} is already registered`);
    this.contexts.set(context.name, context);
  }

  /** Every context available on the device (LIST with no queries). */
  all(device: BlockDevice): MetaContext[] {
    return [...this.contexts.values()].filter((context) => context.isAvailable(device));
  }

  /** Contexts matched by the queries, each once, in registration order. */
  match(device: BlockDevice, queries: readonly string[], forList: boolean): MetaContext[] {
    const wanted = new Set<string>();
    const wildcardNamespaces = new Set<string>();
    for (const query of queries) {
      if (query.endsWith(':') && query.indexOf(':') === query.length - 1) {
        if (forList) wildcardNamespaces.add(query.slice(0, -1));
      } else {
        wanted.add(query);
      }
    }
    return this.all(device).filter(
      (context) => wanted.has(context.name) || wildcardNamespaces.has(namespaceOf(context.name)),
    );
  }
}

/** A query is well formed when it has a non-empty namespace without whitespace before its colon. */
export function isWellFormedQuery(query: string): boolean {
  const colon = query.indexOf(':');
  return colon > 0 && !/\s/.test(query.slice(0, colon));
}
