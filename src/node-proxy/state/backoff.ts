/**
 * Reconnect delays with jitter: each delay is drawn from [base/2, base], base
 * doubling from `initialMs` up to `maxMs`. The jitter spreads a cluster's
 * nodes apart after the controller comes back, so they do not reconnect in
 * one wave; the lower half-bound keeps a node from retrying at once. The
 * cap is low (2 s) so every node follows within about 2 s of the
 * controller's return; a node that keeps failing tries at most about once a
 * second, which the controller's listener bounds absorb.
 */
export interface BackoffOptions {
  initialMs?: number;
  maxMs?: number;
  /** In [0, 1); tests pass a fixed sequence. */
  random?: () => number;
}

export const BACKOFF_DEFAULTS = Object.freeze({ initialMs: 200, maxMs: 2_000 });

export class Backoff {
  readonly #initial: number;
  readonly #max: number;
  readonly #random: () => number;
  #base: number;

  constructor(opts: BackoffOptions = {}) {
    this.#initial = Math.max(1, opts.initialMs ?? BACKOFF_DEFAULTS.initialMs);
    this.#max = Math.max(this.#initial, opts.maxMs ?? BACKOFF_DEFAULTS.maxMs);
    this.#random = opts.random ?? Math.random;
    this.#base = this.#initial;
  }

  /** The delay before the next attempt; the one after it is drawn from twice the base, up to the cap. */
  next(): number {
    const base = this.#base;
    this.#base = Math.min(base * 2, this.#max);
    return Math.round(base / 2 + this.#random() * (base / 2));
  }

  /** After an attempt that worked: the next delay is short again. */
  reset(): void {
    this.#base = this.#initial;
  }
}
