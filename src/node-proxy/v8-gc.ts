/**
 * V8's gc(), for the two places the proxy asks V8 for a collection
 * (./scavenge: a minor one per 4 MB forwarded; ./memory-reclaim: the
 * last-resort one after a wave of closes). The one `--expose-gc` gives when
 * the process was started with it, else one taken once from a context of its
 * own, with `--expose-gc` set for that moment only (so no other context, the
 * proxy's own included, gets a `gc`); null where V8 gives neither.
 */
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

export type V8Gc = (options: { type: 'minor' } | { type: 'major'; execution: 'sync'; flavor: 'last-resort' }) => void;

let found: V8Gc | null | undefined;

export function v8Gc(): V8Gc | null {
  if (found !== undefined) return found;
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === 'function') return (found = exposed as V8Gc);
  try {
    v8.setFlagsFromString('--expose-gc');
    const fn: unknown = vm.runInNewContext('gc');
    found = typeof fn === 'function' ? (fn as V8Gc) : null;
  } catch {
    found = null;
  } finally {
    v8.setFlagsFromString('--no-expose-gc');
  }
  return found;
}
