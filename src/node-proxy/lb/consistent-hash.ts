/**
 * Ring hash (Envoy's `RING_HASH`, Karger et al.): every ready endpoint owns
 * `VNODES_PER_ENDPOINT` points on a 32-bit ring; a key goes to the owner of
 * the first point at or after its hash. Adding or removing one endpoint
 * moves only the keys of the points it owns, about 1/n of them.
 *
 * The rings are built on update() only. An ejected or excluded endpoint is
 * skipped by walking on to the next point, which sends its keys exactly
 * where removing it would, and brings them back when it returns.
 * One ring holds the local endpoints, one all of them, for the two tiers.
 */
import type { EndpointState, PickContext, Picker } from './types';

/** Envoy's default minimum ring is 1024 points; 100 per endpoint keeps the spread within a few percent. */
export const VNODES_PER_ENDPOINT = 100;

/** FNV-1a over UTF-16 code units, then murmur3's finaliser so that close strings land far apart. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

class Ring {
  points = new Uint32Array(0);
  owners: EndpointState[] = [];

  build(states: readonly EndpointState[]): void {
    const entries: { h: number; s: EndpointState }[] = [];
    for (const s of states) {
      for (let v = 0; v < VNODES_PER_ENDPOINT; v++) entries.push({ h: hash32(`${s.id}#${v}`), s });
    }
    // Ids break hash collisions so every proxy orders the ring alike.
    entries.sort((a, b) => a.h - b.h || (a.s.id < b.s.id ? -1 : a.s.id > b.s.id ? 1 : 0));
    this.points = Uint32Array.from(entries, (e) => e.h);
    this.owners = entries.map((e) => e.s);
  }

  /** Index of the first point ≥ h, wrapping to 0. */
  find(h: number): number {
    let lo = 0;
    let hi = this.points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.points[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    return lo === this.points.length ? 0 : lo;
  }
}

export class ConsistentHashPicker implements Picker {
  readonly #local = new Ring();
  readonly #all = new Ring();

  rebuild(states: readonly EndpointState[]): void {
    const ready = states.filter((s) => s.endpoint.ready);
    this.#all.build(ready);
    this.#local.build(ready.filter((s) => s.local));
  }

  choose(
    _list: readonly EndpointState[],
    _eligible: number,
    local: boolean,
    ctx: PickContext,
    exclude: ReadonlySet<string> | undefined,
  ): EndpointState | undefined {
    const ring = local ? this.#local : this.#all;
    const n = ring.owners.length;
    if (n === 0) return undefined;
    let i = ring.find(hash32(ctx.hashKey ?? ctx.sourceIp));
    // At most one turn of the ring: the caller saw an eligible endpoint, but stay bounded anyway.
    for (let step = 0; step < n; step++) {
      const s = ring.owners[i]!;
      if (s.usable && (exclude === undefined || !exclude.has(s.id))) return s;
      if (++i === n) i = 0;
    }
    return undefined;
  }
}
