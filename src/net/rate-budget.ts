/**
 * How fast a peer may send what costs the server work and gives it nothing
 * (HTTP/2 PING, SETTINGS, streams reset before an answer): a token bucket, so
 * a burst is allowed and a sustained rate above `perSecond` is not.
 */
export class RateBudget {
  readonly #perSecond: number;
  readonly #burst: number;
  #tokens: number;
  #at: number;

  constructor(perSecond: number, burst: number, now = Date.now()) {
    this.#perSecond = perSecond;
    this.#burst = burst;
    this.#tokens = burst;
    this.#at = now;
  }

  /** False once more than `burst` events came faster than `perSecond`. */
  take(now = Date.now()): boolean {
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#at) / 1000) * this.#perSecond);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}
