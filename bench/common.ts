/** What the benchmarks share: /proc readings (CPU, memory, listening ports), percentiles and medians with their spread, deadlines, metrics text, cleanup on exit and signals. */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';

let hz: number | undefined;
/** Clock ticks per second of /proc/<pid>/stat times. */
function clockTicks(): number {
  if (hz === undefined) {
    try {
      hz = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      hz = 100;
    }
  }
  return hz;
}

/** CPU seconds (utime + stime) a process has used so far. */
export function cpuSeconds(pid: number): number {
  // The command name may hold spaces and parentheses: fields start after the last ')'.
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / clockTicks();
}

/**
 * Resident memory now and at its peak (VmRSS, VmHWM), in MiB, and what of it
 * is the process's own (RssAnon: heaps, malloc) and what is mapped from files
 * (RssFile: the runtime's code and data, clean pages shared with every
 * process running the same binary).
 */
export function rss(pid: number): { now: number; peak: number; anon: number; file: number } {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)?.[1] ?? NaN);
  return { now: kib('VmRSS') / 1024, peak: kib('VmHWM') / 1024, anon: kib('RssAnon') / 1024, file: kib('RssFile') / 1024 };
}

/** The p-th percentile of ascending `sorted` (nearest rank). */
export function pct(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** A wait that ran out: what was awaited, for how long, and what was seen instead. */
export class DeadlineError extends Error {
  constructor(
    readonly what: string,
    readonly ms: number,
    readonly detail = '',
  ) {
    super(`${what}: not done within ${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s${detail ? `\n${detail}` : ''}`);
  }
}

/** `p`, or a DeadlineError after `ms`. */
export async function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new DeadlineError(what, ms)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `probe` until it gives a value; a DeadlineError (with `describe()` of the last state) after `ms`. */
export async function until<T>(what: string, ms: number, probe: () => Promise<T | undefined> | T | undefined, describe: () => string = () => '', stepMs = 20): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new DeadlineError(what, ms, describe());
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** TCP ports in LISTEN in the network namespace `pid` lives in. */
export function listeningPorts(pid: number): Set<number> {
  const ports = new Set<number>();
  for (const f of ['tcp', 'tcp6']) {
    let text = '';
    try {
      text = fs.readFileSync(`/proc/${pid}/net/${f}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === '0A') ports.add(parseInt(cols[1]!.split(':')[1]!, 16));
    }
  }
  return ports;
}

/**
 * One sample of Prometheus text, `name{a="x"}` with labels in any order;
 * undefined when the process does not export it (a figure then reads "n/a").
 */
export function metricSample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  // A labelled counter appears at its first increment; until then its family's TYPE line says it is 0.
  return text.includes(`# TYPE ${name} `) ? 0 : undefined;
}

export async function fetchText(url: string, ms = 5000): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(ms) });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  return res.text();
}

const cleanups: (() => void)[] = [];
let exiting = false;

/**
 * Registers synchronous cleanup (kill a child, remove a temp dir) that runs
 * once: on `runCleanups()`, at exit, and on SIGINT/SIGTERM/SIGHUP (then the
 * process exits 128+signal).
 */
export function onExit(fn: () => void): void {
  cleanups.push(fn);
}

export function runCleanups(): void {
  for (const fn of cleanups.splice(0).reverse()) {
    try {
      fn();
    } catch {
      // best effort: the rest still run
    }
  }
}

process.once('exit', runCleanups);
for (const [sig, n] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]] as const) {
  process.on(sig, () => {
    if (exiting) return;
    exiting = true;
    console.error(`bench: ${sig}, cleaning up`);
    runCleanups();
    process.exit(128 + n);
  });
}

export const mib = (x: number): string => `${x.toFixed(0)} MiB`;
export const ms = (x: number): string => `${x.toFixed(1)} ms`;

/** A figure over several runs: the median and the spread. */
export interface Spread {
  median: number;
  min: number;
  max: number;
  runs: number;
}

/** Median, min and max of `xs` (NaN ones, figures a run could not give, left out); undefined when none is left. */
export function spread(xs: readonly number[]): Spread | undefined {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return undefined;
  const mid = s.length >> 1;
  return { median: s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2, min: s[0]!, max: s.at(-1)!, runs: s.length };
}
