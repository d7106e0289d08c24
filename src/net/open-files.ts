/**
 * The process's file descriptor limit, which every listener bound must fit
 * under: a peer that can make the process hit EMFILE stops accept() for
 * everyone and stops the process opening its own files.
 */
import * as fs from 'node:fs';

/** The RLIMIT_NOFILE soft limit in /proc/<pid>/limits text (unlimited: Number.MAX_SAFE_INTEGER); undefined where it does not say. */
export function openFileLimit(limitsText: string): number | undefined {
  const line = limitsText.split('\n').find((l) => l.startsWith('Max open files'));
  const soft = line?.trim().split(/\s+/)[3];
  if (soft === undefined) return undefined;
  if (soft === 'unlimited') return Number.MAX_SAFE_INTEGER;
  const n = Number(soft);
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

/** This process's soft RLIMIT_NOFILE (Node raises it to the hard limit at start); undefined where /proc cannot be read. */
export function readOpenFileLimit(): number | undefined {
  try {
    return openFileLimit(fs.readFileSync('/proc/self/limits', 'utf8'));
  } catch {
    return undefined;
  }
}
