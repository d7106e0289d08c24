/**
 * While any lab is up, the host holds `unreachable` routes for the lab ranges
 * (198.18.0.0/15 and 2001:2::/48), less specific than each lab bridge's
 * connected route. Pod subnets and VIPs have no route in the host namespace:
 * without these, a packet for them from the host would take the default route
 * out of the machine. With them it fails at once with EHOSTUNREACH and
 * nothing leaves. `lab down` of the last lab removes them.
 *
 * Labs go up and down side by side (tests run in parallel), so adding and
 * removing take a lock (a directory made with mkdir, which is atomic) and the
 * "last lab" check looks at every lab bridge on the host, not one state dir.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

import { LabError } from './errors';

const run = promisify(execFile);

/** Every lab address (nodes, pods, VIPs) lies inside these (see naming.ts). */
export const LAB_RANGES = ['198.18.0.0/15', '2001:2::/48'] as const;

const LOCK_STALE_MS = 30_000;
const LOCK_WAIT_MS = 10_000;

async function ip(args: string[]): Promise<string> {
  try {
    return (await run('ip', args)).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new LabError('NM_ERR_LAB_STEP', `\`ip ${args.join(' ')}\` failed: ${(e.stderr ?? e.message).trim()}`);
  }
}

function family(range: string): string {
  return range.includes(':') ? '-6' : '-4';
}

/** The lab ranges that have an `unreachable` route in the host namespace now. */
export async function heldLabRoutes(): Promise<string[]> {
  const held: string[] = [];
  for (const range of LAB_RANGES) {
    const out = await ip([family(range), 'route', 'show', 'type', 'unreachable', range]).catch(() => '');
    if (out.trim()) held.push(range);
  }
  return held;
}

/** Names of the labs whose bridge (nm-<lab>-br) exists on the host. */
export async function labBridges(): Promise<string[]> {
  const out = await ip(['-o', 'link', 'show']).catch(() => '');
  return out
    .split('\n')
    .map((l) => /^\d+: nm-([a-z][a-z0-9]{0,7})-br[:@]/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined);
}

/** Whether the host should keep the routes once lab `leaving` is gone. */
export function keepLabRoutes(leaving: string, bridges: readonly string[], claimed: readonly string[]): boolean {
  return bridges.some((b) => b !== leaving) || claimed.some((c) => c !== leaving);
}

async function withLock<T>(stateDir: string, fn: () => Promise<T>): Promise<T> {
  fs.mkdirSync(stateDir, { recursive: true });
  const lock = path.join(stateDir, 'routes.lock');
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      try {
        // A holder killed half way leaves the lock behind.
        if (Date.now() - fs.statSync(lock).mtimeMs > LOCK_STALE_MS) fs.rmdirSync(lock);
      } catch {
        // gone meanwhile
      }
      if (Date.now() > deadline)
        throw new LabError('NM_ERR_LAB_BUSY', `another lab holds ${lock} for over ${LOCK_WAIT_MS / 1000} s: wait, or remove the directory if no lab command is running`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmdirSync(lock);
  }
}

/** Adds the routes (idempotent). Called by `lab up` before it makes anything routable. */
export async function holdLabRoutes(stateDir: string): Promise<void> {
  await withLock(stateDir, async () => {
    for (const range of LAB_RANGES) await ip([family(range), 'route', 'replace', 'unreachable', range]);
  });
}

/**
 * Removes the routes if no lab but `leaving` remains (a bridge on the host, or
 * a state file claiming a name in `stateDir`). Returns whether it removed them.
 */
export async function releaseLabRoutes(leaving: string, stateDir: string): Promise<boolean> {
  return withLock(stateDir, async () => {
    const claimed = fs.existsSync(stateDir)
      ? fs
          .readdirSync(stateDir)
          .filter((f) => f.endsWith('.json'))
          .map((f) => f.slice(0, -5))
      : [];
    if (keepLabRoutes(leaving, await labBridges(), claimed)) return false;
    const held = await heldLabRoutes();
    for (const range of held) await ip([family(range), 'route', 'del', 'unreachable', range]);
    return held.length > 0;
  });
}
