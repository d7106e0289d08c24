/**
 * The default balancer: power of two choices over peak-EWMA connect latency,
 * as Linkerd does it (tower's `PeakEwma` + `p2c::Balance`). Two distinct
 * usable endpoints are drawn at random and the cheaper one gets the
 * connection, cost = (active + 1) × latency estimate: load and latency both
 * count, and no endpoint is ever chosen by everyone at once (which is what
 * "always the cheapest" does between two cost updates).
 */
import { currentLatency } from './ewma';
import { randomIndex } from './random';
import type { EndpointState, PickContext, Picker } from './types';

/** The k-th (from 0) member of `list` not in `exclude`. */
function nthEligible(
  list: readonly EndpointState[],
  k: number,
  exclude: ReadonlySet<string> | undefined,
): EndpointState | undefined {
  if (exclude === undefined || exclude.size === 0) return list[k];
  for (let i = 0; i < list.length; i++) {
    const s = list[i]!;
    if (!exclude.has(s.id) && k-- === 0) return s;
  }
  return undefined;
}

export class P2cEwmaPicker implements Picker {
  readonly #random: () => number;
  readonly #now: () => number;
  readonly #decayMs: number;

  constructor(random: () => number, now: () => number, decayMs: number) {
    this.#random = random;
    this.#now = now;
    this.#decayMs = decayMs;
  }

  choose(
    list: readonly EndpointState[],
    eligible: number,
    _local: boolean,
    _ctx: PickContext,
    exclude: ReadonlySet<string> | undefined,
  ): EndpointState | undefined {
    if (eligible === 1) return nthEligible(list, 0, exclude);
    const i = randomIndex(this.#random, eligible);
    let j = randomIndex(this.#random, eligible - 1);
    if (j >= i) j++;
    const a = nthEligible(list, i, exclude);
    const b = nthEligible(list, j, exclude);
    if (a === undefined || b === undefined) return a ?? b;
    const now = this.#now();
    const costA = (a.active + 1) * currentLatency(a, now, this.#decayMs);
    const costB = (b.active + 1) * currentLatency(b, now, this.#decayMs);
    return costB < costA ? b : a;
  }
}
