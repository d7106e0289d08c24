/**
 * One balancer per Service, kept while the service's endpoints stay the same
 * resource version (so EWMA and outlier state survive config updates of other
 * objects), rebuilt with the new endpoint set when they change.
 */
import * as net from 'node:net';

import { createBalancer, type Balancer, type Endpoint } from '../lb';
import type { ServiceView } from '../state';

interface Entry {
  version: string;
  targetPort: number;
  family: 4 | 6;
  balancer: Balancer;
}

export class BalancerCache {
  readonly #byKey = new Map<string, Entry>();
  readonly #localNode: string;

  constructor(localNode: string) {
    this.#localNode = localNode;
  }

  /** The balancer for `svc` at `targetPort`, reaching endpoints over `family`. */
  get(svc: ServiceView, targetPort: number, family: 4 | 6): Balancer {
    const key = `${svc.key}|${targetPort}|${family}`;
    let e = this.#byKey.get(key);
    if (!e || e.balancer === undefined) {
      e = { version: '', targetPort, family, balancer: createBalancer(svc.lbPolicy, { localNode: this.#localNode }) };
      this.#byKey.set(key, e);
    }
    if (e.version !== svc.version) {
      e.version = svc.version;
      e.balancer.update(endpointsOf(svc, targetPort, family));
    }
    return e.balancer;
  }

  /** Forgets services no longer in the config. */
  retain(live: Iterable<string>): void {
    const keep = new Set(live);
    for (const k of this.#byKey.keys()) if (!keep.has(k.slice(0, k.indexOf('|')))) this.#byKey.delete(k);
  }
}

export function endpointsOf(svc: ServiceView, port: number, family: 4 | 6): Endpoint[] {
  const out: Endpoint[] = [];
  for (const e of svc.endpoints) {
    const address = e.addresses.find((a) => net.isIP(a) === family) ?? e.addresses[0];
    if (!address) continue;
    out.push({ id: `${e.namespace}/${e.workload}`, address, port, node: e.node, ready: e.ready });
  }
  return out;
}
