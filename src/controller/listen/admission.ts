/**
 * Which connections a listener takes: a pure table of what is open, per peer
 * and in total, and of handshakes in flight. The server file asks, then acts.
 */
import * as net from 'node:net';

export type Refusal =
  | 'total_limit'
  | 'peer_limit'
  | 'handshake_limit'
  | 'handshake_timeout'
  | 'handshake_failed'
  | 'not_h2'
  | 'ping_flood'
  | 'settings_flood'
  | 'reset_flood'
  | 'request_timeout'
  | 'idle_timeout'
  | 'bad_request';

/**
 * The unit one peer is counted in: an IPv4 address (IPv4-mapped IPv6 too),
 * or an IPv6 /64, since one host is commonly given a whole /64 and could
 * otherwise pick a fresh address per connection.
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
  return `${full.slice(0, 4).map((h) => h.replace(/^0+(?=.)/, '').toLowerCase()).join(':')}::/64`;
}

export interface AdmissionLimits {
  maxConnections: number;
  maxConnectionsPerPeer: number;
  /** Handshakes in flight, in total and per peer; undefined where the listener has none (plain HTTP). */
  maxHandshakes?: number;
  maxHandshakesPerPeer?: number;
}

export class AdmissionTable {
  readonly #limits: AdmissionLimits;
  readonly #byPeer = new Map<string, number>();
  readonly #handshakesByPeer = new Map<string, number>();
  #open = 0;
  #handshaking = 0;

  constructor(limits: AdmissionLimits) {
    this.#limits = limits;
  }

  get open(): number {
    return this.#open;
  }

  get handshaking(): number {
    return this.#handshaking;
  }

  /** Takes a slot for a new connection from `peer` (and a handshake slot), or says why not. */
  admit(peer: string): Refusal | undefined {
    if (this.#open >= this.#limits.maxConnections) return 'total_limit';
    const n = this.#byPeer.get(peer) ?? 0;
    if (n >= this.#limits.maxConnectionsPerPeer) return 'peer_limit';
    const handshaking = this.#limits.maxHandshakes !== undefined;
    const h = this.#handshakesByPeer.get(peer) ?? 0;
    if (handshaking && (this.#handshaking >= this.#limits.maxHandshakes! || h >= (this.#limits.maxHandshakesPerPeer ?? Infinity))) return 'handshake_limit';
    this.#byPeer.set(peer, n + 1);
    this.#open++;
    if (handshaking) {
      this.#handshakesByPeer.set(peer, h + 1);
      this.#handshaking++;
    }
    return undefined;
  }

  /** The connection's handshake ended (done or failed): its handshake slot is free. Call once. */
  handshakeDone(peer: string): void {
    const h = (this.#handshakesByPeer.get(peer) ?? 1) - 1;
    if (h > 0) this.#handshakesByPeer.set(peer, h);
    else this.#handshakesByPeer.delete(peer);
    this.#handshaking--;
  }

  /** The connection closed: its slot is free. Call once per admitted connection. */
  release(peer: string): void {
    const n = (this.#byPeer.get(peer) ?? 1) - 1;
    if (n > 0) this.#byPeer.set(peer, n);
    else this.#byPeer.delete(peer);
    this.#open--;
  }
}

/** A token bucket: `take()` is false once more than `burst` events came faster than `perSecond`. */
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

  take(now = Date.now()): boolean {
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#at) / 1000) * this.#perSecond);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}
