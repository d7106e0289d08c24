/**
 * The flows of an upgrade's draining predecessors (docs/architecture.md,
 * 'Upgrades that drop nothing'): once it has handed over, the old process
 * no longer owns the admin socket, so it answers GET on a side socket of
 * its own, `<admin socket>.draining-<pid>`, until it exits. The process
 * that owns the admin socket finds those files and merges what they answer
 * into /flows, each such flow marked with the pid that carries it. Every
 * fetch is bounded in time and size: one that does not answer is skipped
 * with a warning, never waited for.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

import { processRuns } from '../../pid';
import type { Flow } from '../flows';

/** How long a draining process gets to answer before it is skipped. */
export const DRAINING_TIMEOUT_MS = 1_000;
/** The most a draining process's /flows answer may hold (its table is bounded too: this is far above it). */
export const DRAINING_MAX_BYTES = 64 * 1024 * 1024;
/** The longest line a draining process's follow stream may send (one flow event). */
const FOLLOW_LINE_MAX = 1024 * 1024;

export function drainingSocketOf(adminSocket: string, pid: number): string {
  return `${adminSocket}.draining-${pid}`;
}

export interface DrainingSocket {
  pid: number;
  file: string;
}

/** The side sockets next to `adminSocket` (a process that retired serves nothing else, so its own is never asked twice). */
export function drainingSockets(adminSocket: string): DrainingSocket[] {
  const dir = path.dirname(adminSocket);
  const prefix = `${path.basename(adminSocket)}.draining-`;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const out: DrainingSocket[] = [];
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const pid = Number(n.slice(prefix.length));
    if (Number.isSafeInteger(pid) && pid > 0) out.push({ pid, file: path.join(dir, n) });
  }
  return out.sort((a, b) => a.pid - b.pid);
}

/**
 * The file of a process that is gone (killed while it drained: nothing
 * removed it) is removed, so it is not tried, and warned of, again.
 */
export function forgetIfGone(s: DrainingSocket): boolean {
  if (processRuns(s.pid)) return false;
  fs.rmSync(s.file, { force: true });
  return true;
}

/** GET `urlPath` (JSON) from a draining process's side socket, within `timeoutMs` and `maxBytes`. */
export function fetchDraining(s: DrainingSocket, urlPath: string, timeoutMs = DRAINING_TIMEOUT_MS, maxBytes = DRAINING_MAX_BYTES): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath: s.file, path: urlPath, agent: false, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (d: Buffer) => {
        size += d.length;
        if (size > maxBytes) return void req.destroy(new Error(`answered more than ${maxBytes} bytes`));
        chunks.push(d);
      });
      res.on('end', () => {
        clearTimeout(deadline);
        if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`));
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString()));
        } catch (err) {
          reject(err as Error);
        }
      });
      res.on('error', reject);
    });
    // The socket timeout is for silence; this bounds the whole answer.
    const deadline = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(deadline);
      reject(err.code ? new Error(err.code) : err);
    });
  });
}

/**
 * Follows a draining process's flows (`/flows?follow=1…`): each event line,
 * its flow marked with the pid, goes to onLine until stop() or the process
 * exits. onFail when it does not answer within DRAINING_TIMEOUT_MS or breaks.
 */
export function followDraining(s: DrainingSocket, urlPath: string, onLine: (line: string) => void, onFail: (err: Error) => void): () => void {
  let stopped = false;
  const req = http.get({ socketPath: s.file, path: urlPath, agent: false }, (res) => {
    clearTimeout(deadline);
    if (res.statusCode !== 200) return void (req.destroy(), onFail(new Error(`HTTP ${res.statusCode}`)));
    let rest = '';
    res.setEncoding('utf8');
    res.on('data', (d: string) => {
      rest += d;
      let i: number;
      while ((i = rest.indexOf('\n')) >= 0) {
        const line = rest.slice(0, i);
        rest = rest.slice(i + 1);
        try {
          const e = JSON.parse(line) as { flow?: Flow };
          if (e.flow) e.flow.drainingPid = s.pid;
          onLine(JSON.stringify(e));
        } catch {
          // not a flow event: not passed on
        }
      }
      if (rest.length > FOLLOW_LINE_MAX) req.destroy();
    });
  });
  const deadline = setTimeout(() => req.destroy(new Error(`no answer within ${DRAINING_TIMEOUT_MS} ms`)), DRAINING_TIMEOUT_MS);
  req.on('error', (err: NodeJS.ErrnoException) => {
    clearTimeout(deadline);
    if (!stopped) onFail(err.code ? new Error(err.code) : err);
  });
  return () => {
    stopped = true;
    clearTimeout(deadline);
    req.destroy();
  };
}

/**
 * This process's flows and its draining predecessors', each of theirs
 * marked with its pid, oldest first by start, the newest `limit` of them.
 */
export function mergeFlows(own: readonly Flow[], theirs: readonly { pid: number; flows: readonly Flow[] }[], limit: number): Flow[] {
  if (theirs.length === 0) return own.slice(-limit);
  const all = [...own, ...theirs.flatMap((d) => d.flows.map((f) => ({ ...f, drainingPid: d.pid })))];
  // Stable: flows of one start keep their order (a table lists its closed ones before its live ones).
  all.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  return all.slice(-limit);
}
