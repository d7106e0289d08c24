/**
 * Every connection a listener refuses or cuts is counted; its log line is
 * rate limited per listener and reason, because a peer decides how often
 * these happen (a flood must not become a log flood). The line written after
 * a quiet spell says how many were held back.
 */
import type { Logger } from '../log';

/**
 * Lines per key per interval: `take()` says whether to write this one, and
 * how many were dropped since the last one written.
 */
export class LineBudget {
  readonly #perInterval: number;
  readonly #intervalMs: number;
  readonly #keys = new Map<string, { start: number; used: number; dropped: number }>();

  constructor(perInterval: number, intervalMs: number) {
    this.#perInterval = perInterval;
    this.#intervalMs = intervalMs;
  }

  take(key: string, now: number): { write: boolean; dropped: number } {
    let k = this.#keys.get(key);
    if (!k || now - k.start >= this.#intervalMs) {
      const dropped = k?.dropped ?? 0;
      // Keys are (listener, reason): a handful; still, forget the stale ones.
      if (this.#keys.size > 256) this.#keys.clear();
      k = { start: now, used: 0, dropped };
      this.#keys.set(key, k);
    }
    if (k.used >= this.#perInterval) {
      k.dropped++;
      return { write: false, dropped: 0 };
    }
    k.used++;
    const dropped = k.dropped;
    k.dropped = 0;
    return { write: true, dropped };
  }
}

export interface RefusalCounter<L extends string, R extends string> {
  inc(labels: { listener: L; reason: R }): void;
}

export interface RefusalLogOptions<L extends string, R extends string> {
  counter?: RefusalCounter<L, R>;
  /** Without one, refusals are only counted. */
  log?: Logger;
  linesPerInterval: number;
  intervalMs: number;
}

export class RefusalLog<L extends string, R extends string> {
  readonly #counter: RefusalCounter<L, R> | undefined;
  readonly #log: Logger | undefined;
  readonly #lines: LineBudget;
  /** Counts by `listener reason`, for status and tests. */
  readonly counts = new Map<string, number>();

  constructor(opts: RefusalLogOptions<L, R>) {
    this.#counter = opts.counter;
    this.#log = opts.log;
    this.#lines = new LineBudget(opts.linesPerInterval, opts.intervalMs);
  }

  /** Counts one refusal; `line` writes its log line when the budget allows, told how many lines were held back before it. */
  note(listener: L, reason: R, line: (log: Logger, heldBack: number) => void): void {
    const key = `${listener} ${reason}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    this.#counter?.inc({ listener, reason });
    if (!this.#log) return;
    const { write, dropped } = this.#lines.take(key, Date.now());
    if (write) line(this.#log, dropped);
  }
}
