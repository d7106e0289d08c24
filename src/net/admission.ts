/**
 * Counting what peers hold, with no I/O: a table of open slots in total and
 * per peer key. Listeners ask it before they touch a socket.
 */
import * as net from 'node:net';

export type Admission = { admitted: true } | { admitted: false; reason: 'total' | 'per-peer' };

/**
 * The unit one peer is counted in: one address, IPv4-mapped IPv6 as its IPv4
 * form, IPv6 in one spelling. Not a whole IPv6 /64: the nodes of a cluster
 * commonly share one subnet, so a /64 share would cap every node's tunnels to
 * a peer, and the controller's node streams, at one per-peer bound. A host
 * that takes many addresses is held by the listener's total bounds instead.
 */
export function peerKey(address: string | undefined): string {
  if (!address) return 'unknown';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (!net.isIPv6(address)) return address;
  const [head, tail = ''] = address.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const full = address.includes('::') ? [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right] : left;
  return full.map((h) => h.replace(/^0+(?=.)/, '').toLowerCase()).join(':');
}

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
