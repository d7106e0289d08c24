/**
 * Counting what peers hold, with no I/O: a table of open slots in total and
 * per peer key, and a fixed-window rate counter. The guard (./guard) asks
 * these before it touches a socket.
 */

export type Admission = { admitted: true } | { admitted: false; reason: 'total' | 'per-peer' };

export class AdmissionTable {
  readonly #maxTotal: number;
  readonly #maxPerPeer: number;
  readonly #byPeer = new Map<string, number>();
  #total = 0;

  constructor(maxTotal: number, maxPerPeer: number) {
    this.#maxTotal = maxTotal;
    this.#maxPerPeer = maxPerPeer;
  }

  get size(): number {
    return this.#total;
  }

  held(peer: string): number {
    return this.#byPeer.get(peer) ?? 0;
  }

  /** Takes a slot for `peer` when one is free; every admitted slot is given back once with release(). */
  admit(peer: string): Admission {
    if (this.#total >= this.#maxTotal) return { admitted: false, reason: 'total' };
    const n = this.#byPeer.get(peer) ?? 0;
    if (n >= this.#maxPerPeer) return { admitted: false, reason: 'per-peer' };
    this.#byPeer.set(peer, n + 1);
    this.#total++;
    return { admitted: true };
  }

  release(peer: string): void {
    const n = this.#byPeer.get(peer);
    if (!n) return;
    if (n === 1) this.#byPeer.delete(peer);
    else this.#byPeer.set(peer, n - 1);
    this.#total--;
  }
}

/** Events per one-second window: `hit()` says whether this one is still within `max`. */
export class RateWindow {
  readonly #max: number;
  readonly #windowMs: number;
  #start = 0;
  #count = 0;

  constructor(max: number, windowMs = 1_000) {
    this.#max = max;
    this.#windowMs = windowMs;
  }

  hit(now: number): boolean {
    if (now - this.#start >= this.#windowMs) {
      this.#start = now;
      this.#count = 0;
    }
    return ++this.#count <= this.#max;
  }
}

/**
 * Lines per key per interval, for a log that an attacker can make the proxy
 * write: `take()` says whether to write this one, and how many were dropped
 * since the last one written (so the line can say so).
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
