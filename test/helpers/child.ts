/** Runs a fixture script in a child process, optionally inside a cgroup from its first instruction. */
import { spawn } from 'node:child_process';
import * as path from 'node:path';

import { PACKAGE_ROOT } from '../../src/paths';

export function fixture(name: string): string {
  return path.join(PACKAGE_ROOT, 'test', 'fixtures', name);
}

export interface ChildResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** cgroup v2 directory the child joins before it runs the script. */
  cgroup?: string;
  /** Command prefix, e.g. setpriv flags that drop capabilities. */
  wrap?: string[];
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

export function runNode(script: string, args: string[], opts: RunOptions = {}): Promise<ChildResult> {
  const node = [process.execPath, '--enable-source-maps', script, ...args];
  // The shell joins the cgroup, then execs node: every socket the script
  // opens is made inside the cgroup.
  const argv = opts.cgroup
    ? ['sh', '-c', 'echo $$ > "$NM_CGROUP/cgroup.procs" && exec "$@"', 'sh', ...(opts.wrap ?? []), ...node]
    : [...(opts.wrap ?? []), ...node];
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), {
      env: { ...process.env, ...opts.env, NM_CGROUP: opts.cgroup ?? '' },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: opts.timeoutMs ?? 30_000,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
