import { BpfError } from '../../src/bpf';

/** The BpfError `fn` throws; fails (throws) when it throws something else or nothing. */
export function thrown(fn: () => unknown): BpfError {
  try {
    fn();
  } catch (err) {
    if (err instanceof BpfError) return err;
    throw err;
  }
  throw new Error('expected a BpfError');
}
