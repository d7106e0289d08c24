/**
 * Which addresses the proxy may connect to on a pod's behalf, whatever the
 * config says. The proxy dials from its own network namespace, so an address
 * that means "this host" there reaches the proxy's own listeners (the admin
 * API on loopback) or the node's, not the pod's: unspecified (0.0.0.0/8, ::),
 * loopback (127/8, ::1), link-local (169.254/16, fe80::/10: cloud metadata
 * services, the node's own links), and every address the node holds. IPv4-
 * mapped forms (::ffff:127.0.0.1) are the IPv4 address (see ./address).
 *
 * Pure: the caller gathers the node's addresses; this only decides.
 */
import { cidrContains, parseCidr, parseIp, type Cidr, type Ip } from '../../api/address';

export type DialRefusal = 'dial-unspecified' | 'dial-loopback' | 'dial-link-local' | 'dial-own-address' | 'dial-not-an-address';

export type DialVerdict = { allowed: true } | { allowed: false; reason: DialRefusal };

const ALLOWED: DialVerdict = Object.freeze({ allowed: true });

/** Blocks refused for everyone, in the order they are checked. */
const REFUSED_BLOCKS: readonly { reason: DialRefusal; cidr: Cidr }[] = (
  [
    ['dial-unspecified', '0.0.0.0/8'],
    ['dial-unspecified', '::/128'],
    ['dial-loopback', '127.0.0.0/8'],
    ['dial-loopback', '::1/128'],
    ['dial-link-local', '169.254.0.0/16'],
    ['dial-link-local', 'fe80::/10'],
  ] as const
).map(([reason, text]) => ({ reason, cidr: parseCidr(text)! }));

function key(ip: Ip): string {
  return `${ip.v6 ? 6 : 4}/${ip.n}`;
}

/** A set of the node's own addresses, in the form dialVerdict() compares. */
export class OwnAddresses {
  readonly #keys = new Set<string>();

  constructor(addresses: Iterable<string> = []) {
    for (const a of addresses) this.add(a);
  }

  /** Adds one address (zone ids and ::ffff: forms accepted); non-addresses are ignored. */
  add(address: string): void {
    const ip = parseIp(address);
    if (ip) this.#keys.add(key(ip));
  }

  has(ip: Ip): boolean {
    return this.#keys.has(key(ip));
  }

  get size(): number {
    return this.#keys.size;
  }
}

/** Whether the proxy may dial `address` for a pod, and if not, why. */
export function dialVerdict(address: string, own: OwnAddresses): DialVerdict {
  const ip = parseIp(address);
  if (!ip) return { allowed: false, reason: 'dial-not-an-address' };
  for (const b of REFUSED_BLOCKS) if (cidrContains(b.cidr, ip)) return { allowed: false, reason: b.reason };
  if (own.has(ip)) return { allowed: false, reason: 'dial-own-address' };
  return ALLOWED;
}
