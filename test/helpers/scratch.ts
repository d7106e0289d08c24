/**
 * Kernel objects a test makes (cgroups, pin directories, network namespaces),
 * removed at teardown, and also on exit and on SIGINT/SIGTERM, so a failed or
 * interrupted test leaves nothing behind on the host.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Test } from 'tap';

import { findCgroup2Mount } from '../../src/bpf';
import { removeCgroupTree } from '../../src/lab/cgroup';

const pending = new Set<() => void>();

function runAll(): void {
  for (const fn of [...pending].reverse()) {
    pending.delete(fn);
    try {
      fn();
    } catch {
      // best effort: keep cleaning the rest
    }
  }
}

process.once('exit', runAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    runAll();
    process.kill(process.pid, sig);
  });
}

/** Registers `fn` to run at teardown of `t` (or at exit/signal, whichever comes first). */
export function onCleanup(t: Test, fn: () => void): void {
  let done = false;
  const once = (): void => {
    if (done) return;
    done = true;
    pending.delete(once);
    fn();
  };
  pending.add(once);
  t.teardown(once);
}

/**
 * Registers async `fn` for teardown of `t`, and `syncFallback` for exit or a
 * signal before teardown ran (only synchronous work runs then).
 */
export function onCleanupAsync(t: Test, fn: () => Promise<unknown>, syncFallback: () => void): void {
  let done = false;
  const fallback = (): void => {
    if (!done) syncFallback();
  };
  pending.add(fallback);
  t.teardown(async () => {
    pending.delete(fallback);
    done = true;
    await fn();
  });
}

/** A short unique name, prefixed so leftovers are recognisable as ours. */
export function scratchName(kind: string): string {
  return `nodemesh-test-${kind}-${process.pid}-${randomBytes(3).toString('hex')}`;
}

/** A fresh cgroup v2 directory under the cgroup2 mount. */
export function tempCgroup(t: Test): string {
  const root = findCgroup2Mount();
  if (!root) throw new Error('cgroup v2 is not mounted');
  const dir = path.join(root, scratchName('cg'));
  fs.mkdirSync(dir);
  onCleanup(t, () => removeCgroupTree(dir, root));
  return dir;
}

/** A fresh pin directory on bpffs. */
export function tempPinDir(t: Test): string {
  const dir = path.join('/sys/fs/bpf', scratchName('pins'));
  onCleanup(t, () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A fresh named network namespace (ip netns add); returns its name and path. */
export function tempNetns(t: Test): { name: string; path: string } {
  const name = scratchName('ns').slice(0, 40);
  execFileSync('ip', ['netns', 'add', name]);
  onCleanup(t, () => execFileSync('ip', ['netns', 'delete', name], { stdio: 'ignore' }));
  return { name, path: `/run/netns/${name}` };
}
