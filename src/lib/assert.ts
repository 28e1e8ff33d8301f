/**
 * Invariant checks. A failed assertion is a bug in thinarray, never bad input: bad input gets a
 * ThinError with a code. Assertions stay on in production — a storage system that continues
 * past a broken invariant corrupts data.
 */

export class AssertionError extends Error {
  override name = 'AssertionError';
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(`invariant violated: ${message}`);
}

export function assertSafeInteger(value: number, name: string): void {
  assert(Number.isSafeInteger(value) && value >= 0, `${name} must be a non-negative safe integer, got ${value}`);
}

export function unreachable(value: never, message = 'unreachable'): never {
  throw new AssertionError(`${message}: ${String(value)}`);
}
