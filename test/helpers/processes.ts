/** Finding and watching the processes a lab test started (node proxies run detached, in their node's netns). */
import * as fs from 'node:fs';

/** The first process whose command line (argv, split on NUL) satisfies `match`, or undefined. */
export function findProcess(match: (argv: string[]) => boolean): number | undefined {
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    let argv: string[];
    try {
      argv = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // gone meanwhile
    }
    if (match(argv)) return Number(d);
  }
  return undefined;
}

/** The value after `flag` in argv, if any. */
export function flagOf(argv: readonly string[], flag: string): string | undefined {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv[i + 1] : undefined;
}

/** Whether `pid` runs (a zombie, exited and not yet reaped, does not). */
export function alive(pid: number): boolean {
  try {
    return !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
  } catch {
    return false;
  }
}
