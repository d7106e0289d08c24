/**
 * The usable endpoint of the current tier with the fewest open connections;
 * ties go to a uniformly random one of them (reservoir sampling in the same
 * pass), so equal endpoints share the load instead of the first in the list
 * taking it.
 */
import type { EndpointState, PickContext, Picker } from './types';

export class LeastRequestPicker implements Picker {
  readonly #random: () => number;

  constructor(random: () => number) {
    this.#random = random;
  }

  choose(
    list: readonly EndpointState[],
    _eligible: number,
    _local: boolean,
    _ctx: PickContext,
    exclude: ReadonlySet<string> | undefined,
  ): EndpointState | undefined {
    let best: EndpointState | undefined;
    let fewest = Infinity;
    let ties = 0;
    for (let i = 0; i < list.length; i++) {
      const s = list[i]!;
      if (exclude !== undefined && exclude.has(s.id)) continue;
      if (s.active < fewest) {
        best = s;
        fewest = s.active;
        ties = 1;
      } else if (s.active === fewest && this.#random() * ++ties < 1) {
        best = s;
      }
    }
    return best;
  }
}
