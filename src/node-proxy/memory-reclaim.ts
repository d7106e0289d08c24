/**
 * Gives memory back to the kernel once a wave of connections has closed and
 * the proxy is quiet (see docs/architecture.md, 'Performance targets').
 *
 * Left alone, an idle proxy never shrinks: V8 collects only when something
 * allocates, so the garbage of thousands of closed connections and the heap
 * pages it grew into stay resident, and glibc keeps what TLS, HTTP/2 and
 * libuv freed in its arenas. Measured with 2,000 idle connections through
 * each of two lab proxies: RSS went from 119 MB to 157 MB held and to 189 MB
 * after they closed, and stayed there (75 s and more).
 *
 * A reclaim is V8's last-resort collection (full, compacting, and it
 * releases the pages V8 keeps pooled for reuse, which a plain gc() leaves
 * resident), then malloc_trim through the addon. It blocks the event loop
 * for the collection (in the lab benchmark on 2 busy cores: 80-260 ms at
 * start, 275-330 ms at 250 MB after 10,000 connections closed), so it runs only when
 * nothing closed for `quietMs`, after at least `minCloses` closes, and at
 * most once per `minIntervalMs`, then once more `followUpMs` later; and once
 * after start, for the garbage of start-up.
 */
import { mallocTrim } from '../bpf';
import { v8Gc } from './v8-gc';

/**
 * How a node proxy process is best started: `node ${PROXY_NODE_FLAGS} bin/nodemesh.js proxy …`
 * with PROXY_ENV (the lab does; a DaemonSet's container command should too).
 * A 4 MB semi-space: V8's young generation otherwise grows to 16 MB per
 * semi-space in a burst of new connections and stays committed. Not 1 MB:
 * one bulk stream across two lab nodes carried 1.4-2.4 Gbit/s with it,
 * 2.0-3.4 with 4 MB and 1.4-3.7 with V8's default (iperf3, 4 runs each, twice).
 * Two malloc arenas: glibc otherwise makes one per thread that mallocs (up
 * to 8 per core), each keeping its own free memory. --expose-gc: the
 * reclaim's collection without setting V8 flags at run time (its fallback).
 */
export const PROXY_NODE_FLAGS: readonly string[] = Object.freeze(['--max-semi-space-size=4', '--expose-gc']);
export const PROXY_ENV: Readonly<Record<string, string>> = Object.freeze({ MALLOC_ARENA_MAX: '2' });

export const RECLAIM_DEFAULTS = Object.freeze({
  /** Connections closed since the last reclaim before another is worth its pause. */
  minCloses: 1_000,
  /** How long no connection may have closed: the wave is over. */
  quietMs: 2_000,
  minIntervalMs: 10_000,
  /** How often the counters are looked at. */
  checkMs: 1_000,
  /** After start: the garbage of loading the config and the first certificates. */
  afterStartMs: 2_000,
  /**
   * Once more after a reclaim for closes: the tunnel sessions those
   * connections used close a few seconds after their last stream
   * (POOL_DEFAULTS.surplusIdleMs in ./tunnel/client.ts), and leave theirs.
   */
  followUpMs: 10_000,
});

export interface ReclaimResult {
  at: string;
  why: 'start' | 'closes' | 'follow-up';
  rssBeforeBytes: number;
  rssAfterBytes: number;
  ms: number;
}

/** One reclaim now: the collection, then malloc_trim (when the addon loads). */
export function reclaimMemory(why: ReclaimResult['why']): ReclaimResult {
  const start = performance.now();
  const before = process.memoryUsage.rss();
  v8Gc()?.({ type: 'major', execution: 'sync', flavor: 'last-resort' });
  try {
    mallocTrim();
  } catch {
    // no addon (a test without BPF): the V8 part still helps
  }
  return { at: new Date().toISOString(), why, rssBeforeBytes: before, rssAfterBytes: process.memoryUsage.rss(), ms: performance.now() - start };
}

export interface ReclaimerOptions {
  /** Connections closed so far (a counter that only grows). */
  closed(): number;
  onReclaim?(r: ReclaimResult): void;
  minCloses?: number;
  quietMs?: number;
  minIntervalMs?: number;
  checkMs?: number;
  afterStartMs?: number;
  followUpMs?: number;
}

export class MemoryReclaimer {
  readonly #o: Required<Omit<ReclaimerOptions, 'onReclaim'>> & Pick<ReclaimerOptions, 'onReclaim'>;
  readonly #timer: NodeJS.Timeout;
  #startTimer: NodeJS.Timeout | undefined;
  #closedAtLast: number;
  #lastSeen: number;
  #changedAt = Date.now();
  #lastAt = 0;
  #followUpAt: number | undefined;
  #count = 0;
  #last: ReclaimResult | undefined;

  constructor(opts: ReclaimerOptions) {
    this.#o = { ...RECLAIM_DEFAULTS, ...opts };
    this.#closedAtLast = this.#lastSeen = opts.closed();
    this.#timer = setInterval(() => this.#check(), this.#o.checkMs).unref();
    this.#startTimer = setTimeout(() => {
      this.#startTimer = undefined;
      this.#run('start');
    }, this.#o.afterStartMs).unref();
  }

  status(): { reclaims: number; last: ReclaimResult | null } {
    return { reclaims: this.#count, last: this.#last ?? null };
  }

  close(): void {
    clearInterval(this.#timer);
    clearTimeout(this.#startTimer);
  }

  #check(): void {
    const closed = this.#o.closed();
    const now = Date.now();
    if (closed !== this.#lastSeen) {
      this.#lastSeen = closed;
      this.#changedAt = now;
      return;
    }
    if (this.#followUpAt !== undefined && now >= this.#followUpAt) {
      this.#followUpAt = undefined;
      this.#run('follow-up');
      return;
    }
    if (closed - this.#closedAtLast < this.#o.minCloses || now - this.#changedAt < this.#o.quietMs || now - this.#lastAt < this.#o.minIntervalMs) return;
    this.#run('closes');
  }

  #run(why: ReclaimResult['why']): void {
    this.#closedAtLast = this.#o.closed();
    this.#lastAt = Date.now();
    this.#count++;
    if (why === 'closes') this.#followUpAt = this.#lastAt + this.#o.followUpMs;
    this.#last = reclaimMemory(why);
    this.#o.onReclaim?.(this.#last);
  }
}
