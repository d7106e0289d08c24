/**
 * The proxy's own addresses, gathered for dialVerdict() (policy/dial-target):
 * every address of the proxy's network namespace, the proxy's configured
 * addresses, and the addresses the mesh config names for this node (other
 * nodes stay reachable: a pod could reach them without the proxy too). Consulted before
 * each connection the proxy makes on a pod's behalf (outbound direct,
 * passthrough, same-node delivery, the tunnel's inbound delivery).
 */
import * as os from 'node:os';

import { dialVerdict, OwnAddresses, type DialVerdict } from '../policy';
import type { MeshView } from '../state';

export const DIAL_GUARD_DEFAULTS = Object.freeze({
  /**
   * How long the namespace's interface addresses are reused before being read
   * again: an address added to the node is refused at most this much later.
   */
  interfaceRefreshMs: 1_000,
});

export interface DialGuardOptions {
  /** Addresses that are always the proxy's (its configured IPs). */
  fixed?: readonly (string | undefined)[];
  /** The current config: the addresses it names for this node are refused too. */
  view?: () => MeshView | undefined;
  interfaceRefreshMs?: number;
  /** Addresses of this network namespace (default: os.networkInterfaces()). */
  interfaces?: () => string[];
  /** Clock for the refresh (default Date.now). */
  now?: () => number;
}

function interfaceAddresses(): string[] {
  return Object.values(os.networkInterfaces()).flatMap((list) => (list ?? []).map((i) => i.address));
}

function thisNodeAddresses(view: MeshView): readonly string[] {
  return view.nodeAddresses(view.node);
}

export class DialGuard {
  readonly #o: DialGuardOptions;
  readonly #refreshMs: number;
  #own: OwnAddresses | undefined;
  #readAt = 0;
  #view: MeshView | undefined;

  constructor(o: DialGuardOptions = {}) {
    this.#o = o;
    this.#refreshMs = o.interfaceRefreshMs ?? DIAL_GUARD_DEFAULTS.interfaceRefreshMs;
  }

  /** Whether the proxy may dial `address` for a pod; refused ones carry the reason. */
  check(address: string): DialVerdict {
    return dialVerdict(address, this.#current());
  }

  #current(): OwnAddresses {
    const now = (this.#o.now ?? Date.now)();
    const view = this.#o.view?.();
    if (this.#own && now - this.#readAt < this.#refreshMs && view === this.#view) return this.#own;
    const own = new OwnAddresses();
    for (const a of this.#o.fixed ?? []) if (a) own.add(a);
    for (const a of (this.#o.interfaces ?? interfaceAddresses)()) own.add(a);
    if (view) for (const a of thisNodeAddresses(view)) own.add(a);
    this.#own = own;
    this.#readAt = now;
    this.#view = view;
    return own;
  }
}
