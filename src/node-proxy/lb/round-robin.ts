/**
 * Round robin over the usable endpoints of the current tier (grpc-js
 * `round_robin`). The cursor starts at a random place so that proxies
 * created together do not all send their first connection to the same
 * endpoint.
 */
import { randomIndex } from './random';
import type { EndpointState, PickContext, Picker } from './types';

export class RoundRobinPicker implements Picker {
  // One cursor per tier: the local list and the full list cycle independently.
  #local: number;
  #all: number;

  constructor(random: () => number) {
    this.#local = randomIndex(random, 0x7fffffff);
    this.#all = this.#local;
  }

  choose(
    list: readonly EndpointState[],
    _eligible: number,
    local: boolean,
    _ctx: PickContext,
    exclude: ReadonlySet<string> | undefined,
  ): EndpointState | undefined {
    const n = list.length;
    const start = local ? this.#local : this.#all;
    for (let step = 0; step < n; step++) {
      const i = (start + step) % n;
      const s = list[i]!;
      if (exclude !== undefined && exclude.has(s.id)) continue;
      if (local) this.#local = i + 1;
      else this.#all = i + 1;
      return s;
    }
    return undefined;
  }
}
