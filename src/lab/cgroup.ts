/** Removing cgroups that may still hold processes. */
import * as fs from 'node:fs';
import * as path from 'node:path';

export function killPids(pids: Iterable<string>): void {
  for (const pid of pids) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone already
    }
  }
}

/**
 * Removes a cgroup directory and the ones below it, moving any process left
 * in them to `root` (the cgroup2 mount) and killing it first.
 */
export function removeCgroupTree(dir: string, root: string): void {
  if (!fs.existsSync(dir)) return;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) removeCgroupTree(path.join(dir, e.name), root);
  try {
    const pids = fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
    for (const pid of pids) {
      try {
        fs.writeFileSync(path.join(root, 'cgroup.procs'), pid);
      } catch {
        // exited meanwhile
      }
    }
    killPids(pids);
  } catch {
    // not a cgroup any more
  }
  // A task that has just exited can hold the cgroup for a moment.
  for (let i = 0; ; i++) {
    try {
      fs.rmdirSync(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY' || i >= 300) throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
    }
  }
}
