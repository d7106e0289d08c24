/**
 * Gate for tests that need root and a BPF-capable kernel. Where those are
 * missing the test is skipped with the reason; under CI (which runs as root)
 * a missing capability fails the test instead, so a skip can never pass CI.
 */
import type { Test } from 'tap';

import { probeFeatures } from '../../src/bpf';

let reason: string | false | undefined;

export function bpfUnavailable(): string | false {
  if (reason !== undefined) return reason;
  if (process.getuid?.() !== 0) reason = 'not running as root';
  else {
    const f = probeFeatures();
    reason = f.usable ? false : f.problems.join('; ');
  }
  return reason;
}

export function bpfTest(t: Test, name: string, fn: (t: Test) => Promise<void> | void): Promise<void> {
  const why = bpfUnavailable();
  if (why && process.env.CI) {
    return t.test(name, async (tt) => {
      tt.fail(`needs root and BPF, and CI must run it: ${why}`);
    }) as unknown as Promise<void>;
  }
  return t.test(name, { skip: why ? `needs root and BPF (CAP_BPF, CAP_SYS_ADMIN): ${why}` : false }, fn) as unknown as Promise<void>;
}
